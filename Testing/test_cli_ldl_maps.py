"""``cldl segment --ldl-maps`` and the confidence summary of the result event (issue 12)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import random_checkpoint

from cldl.checkpoint import save_checkpoint
from cldl.commands.main import main
from cldl.files.images import read_image
from cldl.tasks import BRATS


def _images(phantom_files: dict[str, Path]) -> list[str]:
    return [str(phantom_files[m]) for m in BRATS.modalities]


def test_segment_writes_the_stage_maps_and_the_confidence_summary(
    tiny_checkpoint: Path, phantom_files: dict[str, Path], tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    out, maps = tmp_path / "seg.nii.gz", tmp_path / "ldl"
    argv = ["segment", "--model", str(tiny_checkpoint), "-i", *_images(phantom_files), "-o", str(out)]
    argv += ["--ldl-maps", str(maps), "--device", "cpu", "--progress", "jsonl"]
    assert main(argv) == 0
    result = json.loads(capfd.readouterr().out.splitlines()[-1])
    assert result["event"] == "result" and result["ldl_interpolation"] == "nearest"
    names = sorted(Path(e["path"]).name for e in result["ldl_maps"])
    assert names == sorted(p.name for p in maps.iterdir()) and len(names) == 12
    assert "region_ambiguity_2mm.nii.gz" in names and "ET_proportion_8mm.nii.gz" in names
    titles = {e["title"] for e in result["ldl_maps"]}
    assert "Region ambiguity (mixed tissue), 4 mm regions" in titles
    _, geometry = read_image(phantom_files["flair"])
    for entry in result["ldl_maps"]:
        values, map_geometry = read_image(entry["path"], np.float32)
        assert map_geometry == geometry and 0 <= values.min() and values.max() <= 1

    labels, _ = read_image(out)
    confidence = result["confidence"]
    voxel_ml = float(np.prod(geometry.spacing)) / 1000
    for row in confidence["segments"]:
        assert row["volume_ml"] == pytest.approx(np.count_nonzero(labels == row["label"]) * voxel_ml, abs=1e-3)
        assert 0 <= row["uncertain_ml"] <= row["volume_ml"] and 0 <= row["near_tie_ml"] <= row["volume_ml"]
    assert result["volumes_ml"] == {row["name"]: row["volume_ml"] for row in confidence["segments"]}

    # the maps exist now: a second run refuses before writing anything
    before = {p.name: p.read_bytes() for p in maps.iterdir()}
    assert main([*argv[:-4], "--ldl-maps", str(maps), "-o", str(tmp_path / "other.nii.gz"), "--device", "cpu"]) == 1
    assert "exists; pass --overwrite" in capfd.readouterr().err
    assert {p.name: p.read_bytes() for p in maps.iterdir()} == before
    assert not (tmp_path / "other.nii.gz").exists()


def test_a_plain_unet_has_no_stage_maps(
    phantom_files: dict[str, Path], tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    path = save_checkpoint(random_checkpoint(ldl_stages=0), tmp_path / "unet.pt")
    argv = ["segment", "--model", str(path), "-i", *_images(phantom_files), "-o", str(tmp_path / "s.nii.gz")]
    assert main([*argv, "--ldl-maps", str(tmp_path / "ldl"), "--device", "cpu"]) == 1
    assert "no LDL stages" in capfd.readouterr().err
    assert not (tmp_path / "s.nii.gz").exists()
