"""CLDL: Curriculum Label Distribution Learning for 3D medical image segmentation (engine package)."""

__version__ = "0.1.0"
