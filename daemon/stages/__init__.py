"""The daemon's frame path, one module per stage."""
