"""The daemon's journal, read: the one read-only journal reader (journal_reader.py), the sums it
derives as the daemon does (summaries.py) and `wellwatch results`' tables (tables.py, cli.py).
Imports wellwatch.core only, never the daemon: the dashboard and the daemon's snapshot range
requests read the journal through here."""
