"""CLDL: Curriculum Label Distribution Learning for 3D medical image segmentation (engine package)."""

__version__ = "0.1.0"

# `torchrun -m cldl train` runs DistributedDataParallel (cldl.distributed); read by the Slicer training module.
SUPPORTS_DISTRIBUTED = True
