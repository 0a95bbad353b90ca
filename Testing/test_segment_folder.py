"""`cldl segment -i DATASET_DIR -o OUTPUT_DIR`: every case, as one by one, resumable, bad cases isolated; region maps
(`--ldl-maps DIR`) per case in DIR/<case>/."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import random_checkpoint

import cldl.inference.folder
from cldl.checkpoint import save_checkpoint
from cldl.commands.main import main
from cldl.data.phantoms import brats_phantom, write_case
from cldl.files.images import read_image
from cldl.tasks import BRATS

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
    assert _segment("-i", str(dataset), "-o", str(dataset.parent / "x"), "--ldl-maps", str(dataset)) == 1
    assert "must not be the dataset folder" in capsys.readouterr().err


def _result(out: str) -> dict:
    """The last result event of a ``--progress jsonl`` run."""
    return [json.loads(line) for line in out.splitlines() if '"result"' in line][-1]


def _maps(folder: Path) -> dict[str, np.ndarray]:
    return {p.name: read_image(p, np.float32)[0] for p in folder.glob("*.nii.gz")}


def test_region_maps_per_case_as_one_case_writes_them_and_resumable(dataset: Path, tmp_path: Path, capsys) -> None:
    out, maps = tmp_path / "out", tmp_path / "maps"
    run = ("-i", str(dataset), "-o", str(out), "--ldl-maps", str(maps), "--progress", "jsonl")
    assert _segment(*run) == 0
    ids = sorted(p.name for p in dataset.iterdir())
    result = _result(capsys.readouterr().out)
    assert result["segmented"] == ids and result["ldl_maps"] == str(maps) and result["ldl_interpolation"] == "nearest"
    assert sorted(p.name for p in maps.iterdir()) == ids
    listed = {}
    for case in ids:
        document = json.loads((maps / case / "ldl_maps.json").read_text())
        listed[case] = [entry["path"] for entry in document["maps"]]
        assert document["case"] == case and len(listed[case]) == 12
        assert sorted(p.name for p in (maps / case).iterdir()) == sorted([*listed[case], "ldl_maps.json"])
    titles = {entry["title"] for entry in document["maps"]}
    assert "Region ambiguity (mixed tissue), 4 mm regions" in titles

    files = [str(dataset / ids[1] / f"{ids[1]}_{m}.nii.gz") for m in BRATS.modalities]
    single = tmp_path / "single"
    assert _segment("-i", *files, "-o", str(tmp_path / "single.nii.gz"), "--ldl-maps", str(single)) == 0
    from_folder, alone = _maps(maps / ids[1]), _maps(single)
    assert sorted(from_folder) == sorted(alone) == sorted(listed[ids[1]])
    assert all(np.array_equal(from_folder[name], alone[name]) for name in alone)
    capsys.readouterr()

    assert _segment(*run) == 0
    assert _result(capsys.readouterr().out)["skipped"] == 3
    (maps / ids[2] / listed[ids[2]][0]).unlink()  # one map missing: the case is redone
    (maps / ids[0] / "ldl_maps.json").unlink()  # the list is renamed last: without it the maps may be incomplete
    assert _segment(*run) == 0
    result = _result(capsys.readouterr().out)
    assert result["segmented"] == [ids[0], ids[2]] and result["skipped"] == 1
    assert (maps / ids[2] / listed[ids[2]][0]).is_file() and (maps / ids[0] / "ldl_maps.json").is_file()


def test_segmented_cases_without_their_region_maps_are_redone(dataset: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    assert _segment("-i", str(dataset), "-o", str(out)) == 0
    capsys.readouterr()
    assert _segment("-i", str(dataset), "-o", str(out), "--ldl-maps", str(tmp_path / "maps")) == 0
    assert "segmented 3 of 3 case(s)" in capsys.readouterr().out
    assert len(list((tmp_path / "maps").glob("*/ldl_maps.json"))) == 3


def test_a_case_whose_region_maps_fail_leaves_no_output(
    dataset: Path, tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    bad = sorted(p.name for p in dataset.iterdir())[1]
    real = cldl.inference.folder.write_stage_maps

    def full_disk(maps, task, geometry, folder, staged):
        entries = real(maps, task, geometry, folder, staged)
        if folder.name == bad:
            raise OSError("No space left on device")
        return entries

    monkeypatch.setattr(cldl.inference.folder, "write_stage_maps", full_disk)
    out, maps = tmp_path / "out", tmp_path / "maps"
    assert _segment("-i", str(dataset), "-o", str(out), "--ldl-maps", str(maps)) == 1
    captured = capsys.readouterr()
    assert f"case {bad}: No space left on device" in captured.err and "segmented 2 of 3" in captured.out
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f"{p.name}.nii.gz" for p in dataset.iterdir() if p.name != bad
    )
    assert sorted(p.name for p in maps.iterdir()) == sorted(p.name for p in dataset.iterdir() if p.name != bad)
    assert not list(tmp_path.rglob("*.part"))


def test_a_plain_unet_has_no_region_maps_in_folder_mode(dataset: Path, tmp_path: Path, capsys) -> None:
    path = save_checkpoint(random_checkpoint(ldl_stages=0), tmp_path / "unet.pt")
    out = tmp_path / "out"
    argv = ["segment", "--model", str(path), "-i", str(dataset), "-o", str(out), "--device", "cpu"]
    assert main([*argv, "--ldl-maps", str(tmp_path / "maps"), "--progress", "none"]) == 1
    assert "no LDL stages" in capsys.readouterr().err
    assert not out.exists() and not (tmp_path / "maps").exists()
