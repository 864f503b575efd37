"""wellwatch: real-time label-free live/dead and cell-type counts beside the microscope."""

__version__ = "0.1.0"
