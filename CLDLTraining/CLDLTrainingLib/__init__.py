"""MRML glue of the CLDLTraining module: no widgets, no Qt (tested with the ``slicer-core`` wheel).

- :mod:`.logic`: :class:`TrainingLogic` starts ``cldl train`` (or ``torchrun``) and returns a
  :class:`TrainingHandle` with progress, metrics and ``stop()``
- :mod:`.charts`: :class:`TrainingCurves`, the live loss and validation-Dice plot charts
- :mod:`.widget`: the panel (Qt; needs the Slicer application, not imported here)

The subprocess runner is shared with the segmentation module (``CLDLSegmentationLib.process``).
"""

from .charts import TrainingCurves
from .logic import (
    TrainingHandle,
    TrainingLogic,
    buildConfig,
    isSet,
    resolveTask,
    runExists,
    trainCommand,
    trainingOverrides,
)

__all__ = [
    "TrainingCurves",
    "TrainingHandle",
    "TrainingLogic",
    "buildConfig",
    "isSet",
    "resolveTask",
    "runExists",
    "trainCommand",
    "trainingOverrides",
]
