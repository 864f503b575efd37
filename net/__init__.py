"""ZeroMQ helpers the daemon, the hub and the stream client share: CurveZMQ keys (security.py) and
binding a socket with a one-line start-up error (sockets.py). Imports only wellwatch.core."""
