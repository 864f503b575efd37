"""The web dashboard: it reads the stream (through wellwatch.client) and the daemon's journal
(through wellwatch.results' read-only reader), never the daemon's internals."""
