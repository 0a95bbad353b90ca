"""Self-tests of CLDL Training, run inside Slicer on the CPU (ctest, and the module's Reload & Test).

A tiny run on synthetic phantoms, resume, stop, then segment with it. Skipped (not failed) where torch and the
engine's packages are not installed: Slicer's testing mode installs nothing.
"""

import time
from pathlib import Path

import slicer
import slicer.ScriptedLoadableModule
from CLDLSegmentationLib.dependencies import missingDependencies
from CLDLTrainingLib.widget import CLDLTrainingLogic

TINY_PHANTOM_CONFIG = {  # the engine's tiny_phantoms preset, on 48^3 phantoms, two steps per epoch
    "extends": "tiny_phantoms",
    "phantoms": {"shape": [48, 48, 48]},
    "iters_per_epoch": 2,
    "seed": 7,
}


class CLDLTrainingSelfTest(slicer.ScriptedLoadableModule.ScriptedLoadableModuleTest):
    """Training runs on synthetic phantoms (CPU)."""

    def setUp(self):
        missing = missingDependencies()
        if missing:
            self.skipTest(f"install {', '.join(missing)} first (press Start once)")
        slicer.mrmlScene.Clear()

    def _runFolder(self, name: str) -> Path:
        return Path(slicer.util.tempDirectory("CLDLTrainingTest")) / name

    def test_train_resume_and_segment(self):
        self.delayDisplay("Training 2 epochs on synthetic phantoms (CPU)")
        out = self._runFolder("tiny")
        logic = CLDLTrainingLogic()
        handle = logic.train(None, "brats", out, config=TINY_PHANTOM_CONFIG, overrides={"epochs": 2}, wait=True)
        self.assertEqual(handle.status, "completed")
        self.assertEqual([m["epoch"] for m in handle.metrics], [1, 2])
        self.assertTrue(handle.bestCheckpoint.is_file())
        self.assertEqual(handle.curves.losses.rows, 2)
        self.assertGreaterEqual(handle.curves.validation.rows, 1)

        self.delayDisplay("Resuming to 3 epochs")
        resumed = logic.train(None, None, out, resume=True, overrides={"epochs": 3}, wait=True)
        self.assertEqual([m["epoch"] for m in resumed.metrics], [3])
        self.assertEqual(resumed.curves.losses.rows, 3)

        self.delayDisplay("Segmenting a phantom with the new checkpoint")
        from CLDLSegmentationLib.widget import CLDLSegmentationLogic

        from cldl.data.phantoms import brats_phantom, write_case

        case = brats_phantom(90_002, shape=(48, 48, 48))
        files = write_case(case, out.parent / "case")
        volumes = [slicer.util.loadVolume(str(files[m])) for m in case.modalities]
        result = CLDLSegmentationLogic().segment(volumes, model=str(handle.bestCheckpoint), device="cpu", wait=True)
        self.assertIsNotNone(result.uncertaintyNode)
        self.delayDisplay("Test passed")

    def test_stop(self):
        self.delayDisplay("Stopping a run")
        out = self._runFolder("stopped")
        handle = CLDLTrainingLogic().train(None, "brats", out, config=TINY_PHANTOM_CONFIG, overrides={"epochs": 500})
        deadline = time.monotonic() + 300
        while handle.poll() and not handle.metrics and time.monotonic() < deadline:
            slicer.app.processEvents()
            time.sleep(0.1)
        handle.stop()
        handle.wait(timeout=60)
        self.assertEqual(handle.status, "stopped")
        self.assertTrue((out / "last.pt").is_file())
        self.delayDisplay("Test passed")
