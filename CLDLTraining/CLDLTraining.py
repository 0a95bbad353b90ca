"""CLDLTraining: train (or fine-tune, resume) a CLDL model on a dataset folder, with live loss and Dice charts.

Thin Slicer module: the panel is :mod:`CLDLTrainingLib.widget`, the run is :class:`CLDLTrainingLib.TrainingLogic`
(``cldl train``, or ``torchrun`` for several GPUs, in a subprocess; it works from the Python console and from
``PythonSlicer`` too), and the self-tests are in ``Testing/Python``.
"""

from pathlib import Path

from CLDLSegmentationLib.extension import CONTRIBUTORS, HOMEPAGE
from CLDLSegmentationLib.widget import runSelfTests
from CLDLTrainingLib.widget import (  # noqa: F401  (Slicer finds the logic and widget by name here)
    CLDLTrainingLogic,
    CLDLTrainingParameterNode,
    CLDLTrainingWidget,
)
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.ScriptedLoadableModule import ScriptedLoadableModule, ScriptedLoadableModuleTest


class CLDLTraining(ScriptedLoadableModule):
    """Module description."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("CLDL Training")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = ["CLDLSegmentation"]  # ships the engine and the subprocess runner
        self.parent.contributors = [CONTRIBUTORS]
        self.parent.helpText = _(
            "Train a Curriculum Label Distribution Learning (CLDL) model on a folder of cases (BraTS, MM-WHS or "
            "nnU-Net layout) in a background process, watch the losses and the validation Dice per epoch, stop "
            "and resume. Training needs a GPU for real data; the result (best.pt) can be loaded in CLDL "
            f'Segmentation. See the <a href="{HOMEPAGE}#3d-slicer">documentation</a> (also for headless training).'
        )
        self.parent.acknowledgementText = _(
            "CLDL: X. Li et al., Curriculum label distribution learning for imbalanced medical image segmentation, "
            "Medical Image Analysis 89 (2023)."
        )


class CLDLTrainingTest(ScriptedLoadableModuleTest):
    """Reload & Test: the self-tests of ``Testing/Python/CLDLTrainingSelfTest.py`` (also a ctest)."""

    def runTest(self):
        runSelfTests(Path(__file__).resolve().parent / "Testing" / "Python", "CLDLTrainingSelfTest")
