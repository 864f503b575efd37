"""Beyond one microscope: the facility hub (`wellwatch hub`) and archive reprocessing (`wellwatch reprocess`)."""
