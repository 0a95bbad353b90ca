"""MRML glue of the CLDLSegmentation module: no widgets, no Qt (tested with the ``slicer-core`` wheel).

- :mod:`.process`: run ``cldl`` out of process, parse its JSON-lines events, cancel the whole process tree
- :mod:`.volumes`: volume nodes <-> files with exact geometry
- :mod:`.segmentations`: label map -> segmentation with the task's names, colours and terminology
- :mod:`.overlay`: uncertainty / probability overlay (colour map, 0..1, transparency, opacity, legend)
- :mod:`.models`: registry models and checkpoint files, torch and device information
- :mod:`.dependencies`: first-use installation of torch (PyTorch extension) and the rest (pip, after asking)
- :mod:`.run`: :class:`EngineRun`, status / progress / polling / end of one engine run (segmentation, training)
- :mod:`.panel`: the panel's decisions (input guessing, overlay updates) as plain functions
- :mod:`.cases`: several loaded cases in a row: grouping volumes into cases by name, the queue that runs them
- :mod:`.logic`: :class:`SegmentationLogic`, the whole run, blocking or not
- :mod:`.sampledata`: the Sample Data case
- :mod:`.widget`: the panel (Qt; needs the Slicer application, not imported here)
"""

from .cases import CaseQueue, LoadedCase, findLoadedCases
from .logic import (
    DeviceChoice,
    PrecisionChoice,
    SegmentationJob,
    SegmentationLogic,
    SegmentationOptions,
    SegmentationResult,
    UncertaintyMapChoice,
)
from .models import ModelInfo, defaultModel, describeModel, registryModels
from .overlay import OverlaySettings, showMap
from .process import CancelledError, JsonLinesProcess, ProcessError
from .segmentations import labelmapToSegmentation, markUncertainRegion

__all__ = [
    "CancelledError",
    "CaseQueue",
    "DeviceChoice",
    "PrecisionChoice",
    "JsonLinesProcess",
    "LoadedCase",
    "ModelInfo",
    "OverlaySettings",
    "ProcessError",
    "SegmentationJob",
    "SegmentationLogic",
    "SegmentationOptions",
    "SegmentationResult",
    "UncertaintyMapChoice",
    "defaultModel",
    "describeModel",
    "findLoadedCases",
    "labelmapToSegmentation",
    "markUncertainRegion",
    "registryModels",
    "showMap",
]
