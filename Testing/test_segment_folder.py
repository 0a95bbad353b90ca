"""`cldl segment -i DATASET_DIR -o OUTPUT_DIR`: every case, as one by one, resumable, bad cases isolated."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cldl.cli import main
from cldl.data.phantoms import brats_phantom, write_case
from cldl.io import read_image

MODEL = "brats-phantom-demo"


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    folder = tmp_path / "data"
    for seed in (20_100, 20_101, 20_102):
        write_case(brats_phantom(seed, shape=(48, 48, 48)), folder)
    return folder


def _segment(*args: str) -> int:
    return main(["segment", "--model", MODEL, "--device", "cpu", "--progress", "none", *args])


def test_folder_equals_case_by_case_and_resumes(dataset: Path, tmp_path: Path, capsys) -> None:
    out, unc = tmp_path / "out", tmp_path / "unc"
    assert _segment("-i", str(dataset), "-o", str(out), "--uncertainty", str(unc)) == 0
    assert "segmented 3 of 3 case(s)" in capsys.readouterr().out
    ids = sorted(p.name for p in dataset.iterdir())
    assert sorted(p.name for p in out.iterdir()) == [f"{i}.nii.gz" for i in ids]
    assert sorted(p.name for p in unc.iterdir()) == [f"{i}.nii.gz" for i in ids]
    case = dataset / ids[1]
    single = tmp_path / "single.nii.gz"
    files = [str(case / f"{ids[1]}_{m}.nii.gz") for m in ("flair", "t1", "t1ce", "t2")]
    assert _segment("-i", *files, "-o", str(single)) == 0
    folder_labels, folder_geometry = read_image(out / f"{ids[1]}.nii.gz")
    single_labels, single_geometry = read_image(single)
    assert np.array_equal(folder_labels, single_labels) and folder_geometry == single_geometry
    capsys.readouterr()
    stamp = (out / f"{ids[0]}.nii.gz").stat().st_mtime_ns
    assert _segment("-i", str(dataset), "-o", str(out), "--uncertainty", str(unc)) == 0
    assert "segmented 0 of 3 case(s) into" in capsys.readouterr().out
    assert (out / f"{ids[0]}.nii.gz").stat().st_mtime_ns == stamp  # finished cases are not redone
    (unc / f"{ids[2]}.nii.gz").unlink()  # an incomplete case (one output missing) is redone
    assert _segment("-i", str(dataset), "-o", str(out), "--uncertainty", str(unc), "--progress", "jsonl") == 0
    result = [json.loads(line) for line in capsys.readouterr().out.splitlines() if '"result"' in line][-1]
    assert result["segmented"] == [ids[2]] and result["skipped"] == 2


def test_a_damaged_case_is_reported_and_the_others_go_on(dataset: Path, tmp_path: Path, capsys) -> None:
    bad = sorted(dataset.iterdir())[0]
    flair = next(bad.glob("*_flair.nii.gz"))
    flair.write_bytes(flair.read_bytes()[: flair.stat().st_size // 2])  # an interrupted copy
    out = tmp_path / "out"
    assert _segment("-i", str(dataset), "-o", str(out)) == 1
    captured = capsys.readouterr()
    assert f"case {bad.name}:" in captured.err and "truncated" in captured.err
    assert "segmented 2 of 3 case(s)" in captured.out
    assert not (out / f"{bad.name}.nii.gz").exists()
    write_case(brats_phantom(20_100, shape=(48, 48, 48)), dataset)  # repaired
    assert _segment("-i", str(dataset), "-o", str(out)) == 0
    assert "segmented 1 of 3 case(s)" in capsys.readouterr().out


def test_folder_mode_refuses_unsafe_outputs(dataset: Path, capsys) -> None:
    assert _segment("-i", str(dataset), "-o", str(dataset)) == 1
    assert "must not be the dataset folder" in capsys.readouterr().err
    assert _segment("-i", str(dataset), "-o", str(dataset.parent / "x"), "--ldl-maps", str(dataset.parent / "m")) == 1
    assert "--ldl-maps" in capsys.readouterr().err
