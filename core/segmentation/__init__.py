"""Cell segmentation: classical, learned (maps -> instances), Cellpose flows, BioImage.IO packages."""
