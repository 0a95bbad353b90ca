"""Self-tests of CLDL Segmentation, run inside Slicer on the CPU (ctest, and the module's Reload & Test).

The phantom model on a fresh synthetic BraTS-like phantom (a pipeline check), a cancelled run, and two loaded
cases segmented in a row. Skipped (not failed) where torch and the engine's packages are not installed: Slicer's
testing mode installs nothing.
"""

import logging
import time
from pathlib import Path

import slicer
import slicer.ScriptedLoadableModule
from CLDLSegmentationLib import markUncertainRegion
from CLDLSegmentationLib.cases import findLoadedCases
from CLDLSegmentationLib.dependencies import missingDependencies
from CLDLSegmentationLib.widget import CLDLSegmentationLogic


class CLDLSegmentationSelfTest(slicer.ScriptedLoadableModule.ScriptedLoadableModuleTest):
    """Segmentation runs on synthetic phantoms with the bundled phantom model."""

    def setUp(self):
        missing = missingDependencies()
        if missing:
            self.skipTest(f"install {', '.join(missing)} first (press Apply once)")
        slicer.mrmlScene.Clear()

    def _phantom(self):
        """Four volumes of a phantom the phantom model never saw, loaded as a user would."""
        from cldl.data.phantoms import brats_phantom, write_case

        case = brats_phantom(90_001, shape=(96, 96, 96))  # the phantom model's training size
        folder = Path(slicer.util.tempDirectory("CLDLTest"))
        files = write_case(case, folder)
        return [slicer.util.loadVolume(str(files[m])) for m in case.modalities], case

    def test_segment_phantom_blocking(self):
        import numpy as np

        from cldl.registry import PHANTOM_MODEL

        self.delayDisplay("Segmenting a phantom with the phantom model (CPU)")
        volumes, case = self._phantom()
        result = CLDLSegmentationLogic().segment(
            volumes, model=PHANTOM_MODEL, device="cpu", keepProbabilities=True, wait=True
        )
        segmentation = result.segmentationNode.GetSegmentation()
        self.assertTrue({"ED", "ET"} <= set(result.segmentIds) <= {"NCR", "ED", "ET"})
        self.assertEqual(segmentation.GetNumberOfSegments(), len(result.segmentIds))
        uncertainty = slicer.util.arrayFromVolume(result.uncertaintyNode)
        self.assertEqual(uncertainty.shape, case.labels.shape)
        self.assertTrue(0.0 <= uncertainty.min() and uncertainty.max() <= 1.0)
        self.assertEqual(set(result.probabilityNodes), {"NCR", "ED", "ET"})
        labelmap = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
        slicer.modules.segmentations.logic().ExportAllSegmentsToLabelmapNode(result.segmentationNode, labelmap)
        predicted = slicer.util.arrayFromVolume(labelmap) > 0
        reference = case.labels > 0
        dice = 2 * np.count_nonzero(predicted & reference) / (np.count_nonzero(predicted) + np.count_nonzero(reference))
        self.delayDisplay(f"Whole-tumour Dice {dice:.3f}")
        self.assertGreater(dice, 0.7)
        display = result.uncertaintyNode.GetDisplayNode()
        self.assertEqual((display.GetWindowLevelMin(), display.GetWindowLevelMax()), (0.0, 1.0))
        self.assertTrue(display.GetApplyThreshold())
        before = segmentation.GetNumberOfSegments()
        markUncertainRegion(result.segmentationNode, result.uncertaintyNode, 0.3)
        self.assertEqual(segmentation.GetNumberOfSegments(), before + 1)
        self.delayDisplay("Test passed")

    def test_cancel_kills_the_run(self):
        self.delayDisplay("Cancelling a running segmentation")
        volumes, _case = self._phantom()
        nodesBefore = slicer.mrmlScene.GetNumberOfNodes()
        job = CLDLSegmentationLogic().segment(volumes, device="cpu", tta=True)
        deadline = time.monotonic() + 120
        while job.poll() and job.progress < 0.1 and time.monotonic() < deadline:
            slicer.app.processEvents()
            time.sleep(0.05)
        job.cancel()
        self.assertEqual(job.status, "cancelled")
        self.assertIsNotNone(job.process.returncode)
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), nodesBefore)
        logging.info("cancelled run left no nodes behind")
        self.delayDisplay("Test passed")

    def test_segment_loaded_cases(self):
        from cldl.data.phantoms import brats_phantom, write_case
        from cldl.registry import PHANTOM_MODEL

        self.delayDisplay("Segmenting two loaded cases in a row (CPU)")
        folder = Path(slicer.util.tempDirectory("CLDLCases"))
        for seed in (90_002, 90_003):
            case = brats_phantom(seed, shape=(64, 64, 64))
            files = write_case(case, folder)
            for modality in case.modalities:
                slicer.util.loadVolume(str(files[modality]))  # named <case>_<modality>, as a user would load it
        cases = findLoadedCases(slicer.mrmlScene, case.modalities, PHANTOM_MODEL)
        self.assertEqual([c.status() for c in cases], ["ready", "ready"])
        queue = CLDLSegmentationLogic().segmentCases(cases, model=PHANTOM_MODEL, device="cpu", wait=True)
        self.assertEqual(queue.summary(), "2 of 2 case(s) segmented")
        for found, result in zip(cases, queue.results()):
            self.assertEqual(result.segmentationNode.GetName(), f"{found.name} CLDL segmentation")
            segmentation = result.segmentationNode.GetSegmentation()
            self.assertGreater(segmentation.GetNumberOfSegments(), 0)
        again = findLoadedCases(slicer.mrmlScene, case.modalities, PHANTOM_MODEL)
        self.assertEqual([c.status() for c in again], ["already segmented", "already segmented"])
        self.delayDisplay("Test passed")
