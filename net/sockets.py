"""Socket set-up the daemon's publisher and the hub share, so both refuse the same way."""

from __future__ import annotations

import zmq

from wellwatch.core.errors import StartupError

# Snapshot requests are a few hundred bytes; a larger one is dropped by ZeroMQ before it is parsed.
MAX_REQUEST_BYTES = 4096


def bind(socket: zmq.Socket, endpoint: str, key: str) -> None:
    try:
        socket.bind(endpoint)
    except zmq.ZMQError as e:
        raise StartupError(f"{key} {endpoint}: cannot bind ({e.strerror}); "
                           "is another wellwatch running, or the port in use?") from None
