"""Small helpers shared by the core packages (no Qt, no napari)."""
