"""Shared fixtures: a tiny trained checkpoint and a phantom case on disk."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cldl.checkpoint import Checkpoint
from cldl.config_files import load_config
from cldl.data.phantoms import brats_phantom, write_case
from cldl.data.preprocess import PreprocessConfig
from cldl.events import Reporter
from cldl.method.network import ModelConfig, UNetLDL
from cldl.tasks import BRATS
from cldl.training.config import TrainConfig
from cldl.training.trainer import Trainer

torch.set_num_threads(2)


def tiny_config(**overrides) -> TrainConfig:
    """A BraTS phantom run small enough for unit tests (seconds on 2 CPU cores): the ``tiny_phantoms`` preset on
    48^3 phantoms, two epochs of two steps."""
    values = load_config("tiny_phantoms")
    values.update(epochs=2, iters_per_epoch=2, seed=7)
    values["phantoms"]["shape"] = [48, 48, 48]
    values.update(overrides)
    return TrainConfig.from_dict(values)


def random_checkpoint(seed: int = 1, window: tuple[int, int, int] = (32, 32, 32), **model: int) -> Checkpoint:
    """A tiny BraTS checkpoint with seeded random weights (``model``: ModelConfig keys, e.g. ``ldl_stages=0``);
    the predictor's contract does not depend on training."""
    torch.manual_seed(seed)
    network = UNetLDL(ModelConfig(base_width=4, **model))
    return Checkpoint(
        model_config=network.config,
        task=BRATS,
        preprocess=PreprocessConfig(image_kind="mr"),
        patch_size=window,
        state_dict={k: v.clone() for k, v in network.state_dict().items()},
        provenance={"seed": seed},
    )


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Run folder of a finished tiny training run (``best.pt``, ``last.pt``, ``metrics.jsonl``)."""
    out = tmp_path_factory.mktemp("tiny_run")
    Trainer(tiny_config(), out, Reporter("none")).run()
    return out


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_run: Path) -> Path:
    """A small BraTS checkpoint (untrained quality, real format)."""
    return tiny_run / "best.pt"


@pytest.fixture(scope="session")
def phantom_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A 48^3 BraTS phantom written in the BraTS layout: keys flair, t1, t1ce, t2, seg."""
    return write_case(brats_phantom(123, shape=(48, 48, 48)), tmp_path_factory.mktemp("phantom"), layout="brats")


@pytest.fixture
def scene():
    """A fresh MRML scene of the slicer-core wheel (see ``slicer_testing.new_scene``), also as ``slicer.mrmlScene``."""
    import slicer
    from slicer_testing import new_scene

    scene = new_scene()
    slicer.mrmlScene = scene
    yield scene
    del slicer.mrmlScene
    scene.Clear(1)
