"""Small raster and vector I/O helpers shared by all stages."""
