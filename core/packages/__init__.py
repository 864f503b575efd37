"""BioImage.IO model packages: read, checked on the real session, served."""
