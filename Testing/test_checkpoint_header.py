"""A checkpoint described without torch (issue 21 item 2): the header reader's allow-list, and ``cldl info`` in a
Python where torch is not installed (as in a fresh Slicer) still describes checkpoints."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from cldl.checkpoint import load_checkpoint
from cldl.checkpoint_header import HeaderError, TensorPlaceholder, describe_checkpoint, read_checkpoint_header

ROOT = Path(__file__).resolve().parents[1]


def test_header_matches_the_full_load(tiny_checkpoint: Path) -> None:
    header = read_checkpoint_header(tiny_checkpoint)
    full = load_checkpoint(tiny_checkpoint)
    assert header["task"] == full.task.to_dict() and header["patch_size"] == list(full.patch_size)
    shapes = {k: v.shape for k, v in header["state_dict"].items()}
    assert all(isinstance(v, TensorPlaceholder) for v in header["state_dict"].values())
    assert shapes == {k: tuple(v.shape) for k, v in full.state_dict.items()}
    described = describe_checkpoint(tiny_checkpoint)
    assert described == {"task": full.task.to_dict(), "patch_size": list(full.patch_size),
                         "epoch": full.provenance.get("epoch")}  # fmt: skip


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def _archive(path: Path, payload: bytes) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("x/data.pkl", payload)
    return path


def test_header_refuses_code_and_non_checkpoints(tmp_path: Path) -> None:
    evil = _archive(tmp_path / "evil.pt", pickle.dumps({"format": "cldl-checkpoint", "x": _RunsCode()}))
    with pytest.raises(HeaderError, match="refused global"):
        read_checkpoint_header(evil)
    other = _archive(tmp_path / "other.pt", pickle.dumps({"weights": [1, 2]}))
    with pytest.raises(HeaderError, match="no 'cldl-checkpoint' marker"):
        read_checkpoint_header(other)
    newer = _archive(tmp_path / "newer.pt", pickle.dumps({"format": "cldl-checkpoint", "format_version": 99}))
    with pytest.raises(HeaderError, match="newer than this cldl"):
        read_checkpoint_header(newer)
    (tmp_path / "text.pt").write_text("not a checkpoint")
    with pytest.raises(HeaderError, match="not a torch.save archive"):
        read_checkpoint_header(tmp_path / "text.pt")
    with pytest.raises(HeaderError, match="no such checkpoint"):
        read_checkpoint_header(tmp_path / "missing.pt")


NO_TORCH = """
import importlib.abc, importlib.metadata, sys
class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "torch":
            raise ModuleNotFoundError("No module named 'torch'")
sys.meta_path.insert(0, Blocker())
version = importlib.metadata.version
def without_torch(name):
    if name == "torch":
        raise importlib.metadata.PackageNotFoundError(name)
    return version(name)
importlib.metadata.version = without_torch
from cldl.commands.main import main
sys.exit(main(sys.argv[1:]))
"""


def test_cldl_info_describes_checkpoints_where_torch_is_not_installed(tiny_checkpoint: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.pt"
    bad.write_text("not a checkpoint")
    arguments = ["info", "--json", "--checkpoint", str(tiny_checkpoint), "--checkpoint", str(bad)]
    done = subprocess.run([sys.executable, "-c", NO_TORCH, *arguments], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    info = json.loads(done.stdout)
    assert info["torch"]["installed"] is False
    good, broken = info["checkpoints"]
    assert good["task"]["name"] == "brats" and good["patch_size"] == list(load_checkpoint(tiny_checkpoint).patch_size)
    assert "not a torch.save archive" in broken["error"]
