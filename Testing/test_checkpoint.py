"""Checkpoint files: round trip, safe loading (weights_only), format versions, damage and task checks."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from cldl import checkpoint as checkpoint_module
from cldl.checkpoint import (
    FORMAT,
    FORMAT_VERSION,
    Checkpoint,
    CheckpointError,
    check_task,
    load_checkpoint,
    save_checkpoint,
)
from cldl.data.preprocess import PreprocessConfig
from cldl.method.network import ModelConfig, UNetLDL
from cldl.tasks import BRATS, MMWHS_CT, MMWHS_MR, get_task


def _make_checkpoint(task=BRATS, **provenance) -> Checkpoint:
    """A tiny checkpoint with random weights for ``task``."""
    torch.manual_seed(0)
    model = UNetLDL(ModelConfig(in_channels=task.num_modalities, num_classes=task.num_classes, base_width=4))
    return Checkpoint(
        model_config=model.config,
        task=task,
        preprocess=PreprocessConfig(image_kind=task.image_kind),
        patch_size=(32, 32, 32),
        state_dict={k: v.detach().clone() for k, v in model.state_dict().items()},
        provenance={"seed": 0, "epoch": 3, "metrics": {"dice_mean": 0.5}, **provenance},
        training_state={"epoch": 3, "history": [{"epoch": 1}], "torch_rng": torch.get_rng_state()},
    )


def _leave_marker(path: str) -> str:
    """Runs only if a pickled object gets executed: leaves a file behind."""
    Path(path).write_text("executed")
    return "payload"


class Payload:
    """An arbitrary object whose unpickling runs code."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (_leave_marker, (self.marker,))


def test_round_trip(tmp_path: Path) -> None:
    original = _make_checkpoint()
    path = save_checkpoint(original, tmp_path / "sub" / "model.pt")
    assert path.is_file()
    assert [p.name for p in path.parent.iterdir()] == ["model.pt"]  # no temporary file left behind
    # the file is plain tensors and containers: torch's safe loader reads it
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == FORMAT and raw["format_version"] == FORMAT_VERSION
    loaded = load_checkpoint(path)
    assert loaded.path == path
    assert loaded.task == BRATS and loaded.model_config == original.model_config
    assert loaded.preprocess == original.preprocess and loaded.patch_size == (32, 32, 32)
    assert loaded.provenance == original.provenance
    assert loaded.training_state["history"] == [{"epoch": 1}]
    assert torch.equal(loaded.training_state["torch_rng"], original.training_state["torch_rng"])
    assert loaded.state_dict.keys() == original.state_dict.keys()
    assert all(torch.equal(loaded.state_dict[k], v) for k, v in original.state_dict.items())

    model = loaded.build_model("cpu")
    assert not model.training
    reference = UNetLDL(original.model_config)
    reference.load_state_dict(original.state_dict)
    x = torch.randn(1, 4, 32, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x).logits, reference.eval()(x).logits, rtol=0, atol=0)


def test_save_replaces_atomically(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A failed save leaves the previous file intact and no temporary file."""
    path = save_checkpoint(_make_checkpoint(note="first"), tmp_path / "model.pt")
    before = path.read_bytes()

    def broken_save(obj, target, *args, **kwargs):
        Path(target).write_bytes(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint_module.torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(_make_checkpoint(note="second"), path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]
    assert load_checkpoint(path).provenance["note"] == "first"
    save_checkpoint(_make_checkpoint(note="second"), path)
    assert load_checkpoint(path).provenance["note"] == "second"


def test_pickled_objects_are_refused_not_executed(tmp_path: Path) -> None:
    marker = tmp_path / "executed.txt"
    path = tmp_path / "evil.pt"
    data = _make_checkpoint().to_dict()
    data["provenance"] = {"note": Payload(marker)}
    torch.save(data, path)
    with pytest.raises(CheckpointError, match="refused: it holds Python objects other than weights"):
        load_checkpoint(path)
    assert not marker.exists()
    # the payload is real: an unsafe load (deliberate, of this test's own file) runs it
    torch.load(path, weights_only=False)
    assert marker.read_text() == "executed"


def test_minimal_pickled_object_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "executed.txt"
    path = tmp_path / "evil.pt"
    torch.save({"format": FORMAT, "x": Payload(marker)}, path)
    with pytest.raises(CheckpointError):
        load_checkpoint(path)
    assert not marker.exists()


def test_newer_format_version_asks_to_upgrade(tmp_path: Path) -> None:
    data = _make_checkpoint().to_dict()
    data["format_version"] = FORMAT_VERSION + 1
    torch.save(data, tmp_path / "future.pt")
    with pytest.raises(CheckpointError, match="upgrade cldl") as info:
        load_checkpoint(tmp_path / "future.pt")
    assert f"format {FORMAT_VERSION + 1}" in str(info.value)


@pytest.mark.parametrize(
    "content", [random.Random(0).randbytes(4096), b"", b"PK\x03\x04 not really a zip"], ids=["random", "empty", "zip"]
)
def test_garbage_files_are_refused(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "garbage.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="garbage.pt"):
        load_checkpoint(path)


def test_missing_file_and_foreign_files_are_refused(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "missing.pt")
    torch.save({"state_dict": _make_checkpoint().state_dict}, tmp_path / "plain.pt")
    with pytest.raises(CheckpointError, match="not a CLDL checkpoint"):
        load_checkpoint(tmp_path / "plain.pt")
    torch.save(_make_checkpoint().state_dict, tmp_path / "state_dict_only.pt")
    with pytest.raises(CheckpointError, match="not a CLDL checkpoint"):
        load_checkpoint(tmp_path / "state_dict_only.pt")


@pytest.mark.parametrize("damage", ["missing_key", "bad_patch", "bad_task"])
def test_damaged_checkpoints_are_refused(tmp_path: Path, damage: str) -> None:
    data = _make_checkpoint().to_dict()
    if damage == "missing_key":
        del data["model_config"]
    elif damage == "bad_patch":
        data["patch_size"] = None
    else:
        data["task"]["label_values"] = [1, 2, 3, 4]  # background must come first
    torch.save(data, tmp_path / "damaged.pt")
    with pytest.raises(CheckpointError, match="damaged CLDL checkpoint"):
        load_checkpoint(tmp_path / "damaged.pt")


def test_model_must_match_the_task(tmp_path: Path) -> None:
    data = _make_checkpoint().to_dict()
    data["task"] = MMWHS_CT.to_dict()  # 1 input and 8 classes, but the network has 4 inputs and 4 classes
    torch.save(data, tmp_path / "mismatch.pt")
    with pytest.raises(CheckpointError, match="modalities"):
        load_checkpoint(tmp_path / "mismatch.pt")


def test_check_task(tmp_path: Path) -> None:
    brats = load_checkpoint(save_checkpoint(_make_checkpoint(), tmp_path / "brats.pt"))
    check_task(brats, BRATS)
    check_task(brats, get_task("brats"))
    with pytest.raises(CheckpointError, match="'brats'.*'mmwhs_ct'"):
        check_task(brats, MMWHS_CT)
    ct = load_checkpoint(save_checkpoint(_make_checkpoint(MMWHS_CT), tmp_path / "ct.pt"))
    check_task(ct, get_task("mmwhs"))
    with pytest.raises(CheckpointError, match="not 'mmwhs_mr'"):
        check_task(ct, MMWHS_MR)  # same labels, another input modality
    with pytest.raises(CheckpointError, match="not 'brats'"):
        check_task(ct, BRATS)
