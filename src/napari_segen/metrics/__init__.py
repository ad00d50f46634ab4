"""Segmentation scores and image-quality metrics (no Qt, no napari)."""
