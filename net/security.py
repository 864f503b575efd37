"""Optional CurveZMQ for streams that leave the machine: encryption plus client allow-listing.

Keys are ZeroMQ certificate files, made with `wellwatch keys DIR NAME` (pyzmq's zmq.auth format):
NAME.key holds the public key, NAME.key_secret both. The daemon needs its own secret file and,
to restrict who may connect, a folder of allowed clients' public .key files.
"""

from __future__ import annotations

import logging
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from wellwatch.core.errors import StartupError

log = logging.getLogger(__name__)


def load_secret(path: str, key: str) -> tuple[bytes, bytes]:
    try:
        public, secret = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as e:
        raise StartupError(f"{key} {path}: cannot load a ZeroMQ certificate ({e})") from None
    if secret is None:
        raise StartupError(f"{key} {path}: holds no secret key (give the .key_secret file)")
    return public, secret


class CurveServer:
    """Makes server sockets CURVE servers; a ZAP authenticator checks clients when a folder is given."""

    def __init__(self, context: zmq.Context, secret_file: str, allowed_clients: str):
        self.public, self.secret = load_secret(secret_file, "publish.curve_secret_key")
        self.auth: ThreadAuthenticator | None = None
        if allowed_clients:
            folder = Path(allowed_clients)
            if not folder.is_dir():
                raise StartupError(f"publish.curve_allowed_clients {folder}: folder does not exist")
            self.auth = ThreadAuthenticator(context)
            self.auth.start()
            self.auth.configure_curve(domain="*", location=str(folder))
            log.info("CurveZMQ: clients limited to the %d public keys in %s", len(list(folder.glob("*.key"))), folder)
        else:
            log.warning("CurveZMQ: encrypted, but any client that knows the server's public key may connect "
                        "(set publish.curve_allowed_clients to restrict)")

    def apply(self, socket: zmq.Socket) -> None:
        socket.curve_secretkey = self.secret
        socket.curve_publickey = self.public
        socket.curve_server = True

    def close(self) -> None:
        if self.auth is not None:
            self.auth.stop()


def apply_client_keys(socket: zmq.Socket, server_public_file: str, client_secret_file: str) -> None:
    """For subscribers: the server's public key, and the client's own key pair."""
    server_public, _ = zmq.auth.load_certificate(server_public_file)
    public, secret = zmq.auth.load_certificate(client_secret_file)
    if secret is None:
        raise ValueError(f"{client_secret_file}: holds no secret key (give the .key_secret file)")
    socket.curve_serverkey = server_public
    socket.curve_publickey = public
    socket.curve_secretkey = secret
