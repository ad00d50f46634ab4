"""napari dock widgets: thin layers over the core, one module per widget."""
