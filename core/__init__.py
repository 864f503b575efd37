"""The science core: pure functions and value types the daemon, training, export, scale and the
dashboard share (contract, naming, plates and vendor layouts, frame files, preprocessing,
segmentation, crops, calls, aggregation, dose-response, the inference backend, model packages,
the configuration schema). It starts no threads and opens no sockets or databases."""
