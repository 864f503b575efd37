"""The web dashboard and results tables: they read the stream (through wellwatch.client) and the
daemon's journal (read-only SQLite), never the daemon's internals."""
