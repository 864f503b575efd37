"""Frame files: TIFF and ND2 reading with the checks that catch damaged files, and completeness by structure."""
