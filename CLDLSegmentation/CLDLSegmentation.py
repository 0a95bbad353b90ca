"""CLDLSegmentation: segment volumes with a CLDL model and show the per-voxel uncertainty over the input.

Thin Slicer module: the panel is :mod:`CLDLSegmentationLib.widget`, the work (export, ``cldl segment``
subprocess, import, display) is done without Qt by :class:`CLDLSegmentationLib.SegmentationLogic`, the Sample
Data case is :mod:`CLDLSegmentationLib.sampledata`, and the self-tests are in ``Testing/Python``.
"""

from pathlib import Path

import slicer
from CLDLSegmentationLib.extension import CONTRIBUTORS, HOMEPAGE
from CLDLSegmentationLib.sampledata import registerSample
from CLDLSegmentationLib.terminology import loadTerminology
from CLDLSegmentationLib.widget import (  # noqa: F401  (Slicer finds the logic and widget by name here)
    CLDLSegmentationLogic,
    CLDLSegmentationParameterNode,
    CLDLSegmentationWidget,
    runSelfTests,
)
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.ScriptedLoadableModule import ScriptedLoadableModule, ScriptedLoadableModuleTest


class CLDLSegmentation(ScriptedLoadableModule):
    """Module description."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("CLDL Segmentation")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = []
        self.parent.contributors = [CONTRIBUTORS]
        self.parent.helpText = _(
            "Segment 3D images with a Curriculum Label Distribution Learning (CLDL) model and show where the model "
            "is uncertain (normalised entropy or 1 - max probability of the predicted label distribution) as a "
            "colour overlay. The bundled model segments brain tumour MRI (FLAIR, T1, T1ce, T2, skull-stripped, "
            "BraTS-like); it was trained on synthetic tumours in real brain anatomy and is <b>not for clinical "
            "use</b>. "
            f'See the <a href="{HOMEPAGE}#3d-slicer">documentation</a>.'
        )
        self.parent.acknowledgementText = _(
            "CLDL: X. Li et al., Curriculum label distribution learning for imbalanced medical image segmentation, "
            "Medical Image Analysis 89 (2023). The runtime follows SlicerMONAIAuto3DSeg and SlicerNNUNet."
        )
        # After every module is loaded (as SlicerMONAIAuto3DSeg and SlicerTotalSegmentator do).
        slicer.app.connect("startupCompleted()", onStartupCompleted)


def onStartupCompleted() -> None:
    """Load the module's terminology context and register the sample case in the Sample Data module."""
    loadTerminology(slicer.modules.terminologies.logic())
    registerSample(str(Path(__file__).resolve().parent / "Resources" / "Icons" / "CLDLSegmentation.png"))


class CLDLSegmentationTest(ScriptedLoadableModuleTest):
    """Reload & Test: the self-tests of ``Testing/Python/CLDLSegmentationSelfTest.py`` (also a ctest)."""

    def runTest(self):
        runSelfTests(Path(__file__).resolve().parent / "Testing" / "Python", "CLDLSegmentationSelfTest")
