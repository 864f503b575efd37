"""Benchmarks behind `wellwatch bench`: the daemon end to end (e2e.py) with its preparation and CPU
sampling (prepare.py) and models (models.py), and segmentation quality and speed (segment.py);
cli.py registers the commands."""
