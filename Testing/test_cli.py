"""The ``cldl`` command line, called in-process: segment, evaluate, models, train, and one-line errors."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from cldl.checkpoint import load_checkpoint
from cldl.commands.main import main
from cldl.config_files import load_config
from cldl.files.geometry import Geometry
from cldl.files.images import read_image, write_image
from cldl.registry import DEFAULT_MODEL
from cldl.tasks import BRATS

SENTINEL = b"existing file, must survive"
TINY_TRAIN = {**load_config("tiny_phantoms"), "max_val_cases": 1}


@pytest.fixture
def case(phantom_files: dict[str, Path], tmp_path: Path) -> dict[str, Path]:
    """A private copy of the phantom case (the tests may try to damage it)."""
    folder = tmp_path / "case"
    folder.mkdir()
    return {name: Path(shutil.copy(path, folder / path.name)) for name, path in phantom_files.items()}


def _images(case: dict[str, Path]) -> list[str]:
    return [str(case[m]) for m in BRATS.modalities]


def _snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _one_error_line(capfd: pytest.CaptureFixture[str]) -> tuple[str, str]:
    """stdout and the single ``cldl: error:`` line on stderr."""
    out, err = capfd.readouterr()
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("cldl: error: "), err
    return out, lines[0]


# ----------------------------------------------------------------------------------------------------------------
# segment


def test_segment_writes_outputs_on_the_input_grid(
    tiny_checkpoint: Path, case: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, uncertainty, probabilities = tmp_path / "out.nii.gz", tmp_path / "u.nii.gz", tmp_path / "p.nii.gz"
    argv = ["segment", "--model", str(tiny_checkpoint), "-i", *_images(case), "-o", str(out)]
    argv += ["--uncertainty", str(uncertainty), "--probabilities", str(probabilities)]
    assert main([*argv, "--device", "cpu", "--progress", "jsonl"]) == 0

    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert events and all("event" in e for e in events)
    progress = [e for e in events if e["event"] == "progress"]
    assert progress and all(e["stage"] == "inference" for e in progress)
    assert progress[-1]["done"] == progress[-1]["total"] > 0
    result = events[-1]
    assert result["event"] == "result"
    assert result["labelmap"] == str(out) and result["uncertainty"] == str(uncertainty)
    assert result["probabilities"] == str(probabilities)
    assert result["task"] == "brats" and result["device"] == "cpu"
    assert set(result["volumes_ml"]) == {"NCR", "ED", "ET"}

    _, input_geometry = read_image(case["flair"])
    labels, geometry = read_image(out)
    assert geometry == input_geometry
    assert set(np.unique(labels).tolist()) <= {0, 1, 2, 4}

    values, u_geometry = read_image(uncertainty)
    assert u_geometry == input_geometry
    assert values.dtype == np.float32 and 0 <= values.min() and values.max() <= 1 and values.max() > 0
    stored = nib.load(uncertainty)
    assert stored.get_data_dtype() == np.uint8
    assert stored.dataobj.slope == pytest.approx(1 / 255) and stored.dataobj.inter == 0

    image = nib.load(probabilities)
    assert image.shape == (*input_geometry.size, 4)
    assert image.get_data_dtype() == np.uint8
    np.testing.assert_allclose(image.affine, nib.load(case["flair"]).affine, atol=1e-4)
    probs = image.get_fdata(dtype=np.float32)
    assert 0 <= probs.min() and probs.max() <= 1
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=3 / 255)
    # the label map is the most probable class (up to the 1/255 quantisation of the probabilities)
    classes = BRATS.labels_to_classes(labels).transpose(2, 1, 0)
    chosen = np.take_along_axis(probs, classes[..., None].astype(np.int64), axis=-1)[..., 0]
    assert (chosen >= probs.max(-1) - 2 / 255).all()


def _unwritable(tmp_path: Path) -> Path:
    """An output path that cannot be created, also for root (who ignores folder permissions)."""
    if os.geteuid() == 0:
        blocker = tmp_path / "some_file.txt"
        blocker.write_text("a file, not a folder")
        return blocker / "out.nii.gz"
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    return locked / "out.nii.gz"


def _bad_image(case: dict[str, Path], tmp_path: Path, name: str, kind: str) -> list[str]:
    """The case's images with one replaced by a damaged copy."""
    array, geometry = read_image(case[name], np.float32)
    target = tmp_path / f"{name}_{kind}.nii.gz"
    if kind == "nan":  # NRRD: ITK 5's NIfTI reader silently turns NaN into 0
        array[20:22, 20:22, 20:22] = np.nan
        target = tmp_path / f"{name}_{kind}.nrrd"
    elif kind == "zero":
        array[:] = 0
    elif kind == "shifted":
        geometry = Geometry(geometry.size, geometry.spacing, (900.0, 0.0, 0.0), geometry.direction)  # disjoint
    elif kind == "text":
        target = tmp_path / "notes.txt"
        target.write_text("not an image\n")
    elif kind == "same":  # one file given for two modalities
        target = case["flair"]
    elif kind == "copy":  # a copy of another modality's file
        target = Path(shutil.copy(case["flair"], tmp_path / f"{name}_copy.nii.gz"))
    if kind in ("nan", "zero", "shifted", "truncated"):
        write_image(array, geometry, target)
    if kind == "truncated":  # an interrupted copy
        target.write_bytes(target.read_bytes()[: target.stat().st_size * 2 // 3])
    return [str(target) if m == name else str(case[m]) for m in BRATS.modalities]


ERROR_CASES = {
    "three_images": "expects 4 images",
    "nan_voxels": "NaN",
    "all_zero": "all-zero",
    "different_grids": "does not overlap",  # overlapping grids are resampled with a warning (issue 3)
    "not_an_image": "not a readable image",
    "truncated_input": "truncated: ",
    "same_file_twice": "is given for both flair and t1",
    "identical_copy": "hold identical voxels",
    "other_task": "not 'mmwhs_ct'",
    "unwritable_output": "cannot create the folder" if os.geteuid() == 0 else "not writable",
    "output_is_an_input": "one of the inputs",
    "existing_output": "--overwrite",
    "corrupt_checkpoint": "not a loadable CLDL checkpoint",
    "unknown_model": "unknown model",
}


@pytest.mark.parametrize("name", list(ERROR_CASES))
def test_segment_errors_are_one_line_and_touch_nothing(
    name: str, tiny_checkpoint: Path, case: dict[str, Path], tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    images, model = _images(case), str(tiny_checkpoint)
    output, uncertainty = tmp_path / "out.nii.gz", tmp_path / "u.nii.gz"
    output.write_bytes(SENTINEL)
    uncertainty.write_bytes(SENTINEL)
    extra = ["--overwrite"]
    if name == "three_images":
        images = images[:3]
    elif name == "nan_voxels":
        images = _bad_image(case, tmp_path, "t1", "nan")
    elif name == "all_zero":
        images = _bad_image(case, tmp_path, "t2", "zero")
    elif name == "different_grids":
        images = _bad_image(case, tmp_path, "t1ce", "shifted")
    elif name == "not_an_image":
        images = _bad_image(case, tmp_path, "t1", "text")
    elif name == "truncated_input":
        images = _bad_image(case, tmp_path, "flair", "truncated")
    elif name == "same_file_twice":
        images = _bad_image(case, tmp_path, "t1", "same")
    elif name == "identical_copy":
        images = _bad_image(case, tmp_path, "t2", "copy")
    elif name == "other_task":
        extra += ["--task", "mmwhs_ct"]
    elif name == "unwritable_output":
        output = _unwritable(tmp_path)
    elif name == "output_is_an_input":
        output = case["flair"]
    elif name == "existing_output":
        extra = []
    elif name == "corrupt_checkpoint":
        model = str(tmp_path / "corrupt.pt")
        Path(model).write_bytes(random.Random(1).randbytes(2048))
    elif name == "unknown_model":
        model = "no-such-model"
    before = _snapshot(tmp_path)
    argv = ["segment", "--model", model, "-i", *images, "-o", str(output), "--uncertainty", str(uncertainty)]
    assert main([*argv, "--device", "cpu", *extra]) == 1
    out, line = _one_error_line(capfd)
    assert out == ""
    assert ERROR_CASES[name] in line
    assert _snapshot(tmp_path) == before  # no output written, no input changed
    assert uncertainty.read_bytes() == SENTINEL


def test_segment_error_is_also_a_json_event(
    tiny_checkpoint: Path, case: dict[str, Path], tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    argv = ["segment", "--model", str(tiny_checkpoint), "-i", *_images(case)[:3], "-o", str(tmp_path / "o.nii.gz")]
    assert main([*argv, "--device", "cpu", "--progress", "jsonl"]) == 1
    out, line = _one_error_line(capfd)
    events = [json.loads(text) for text in out.splitlines()]
    assert events[-1]["event"] == "error"
    assert line == f"cldl: error: {events[-1]['message']}"
    assert not (tmp_path / "o.nii.gz").exists()


def test_usage_errors_exit_with_status_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["segment", "-o", "out.nii.gz"])  # no images
    assert info.value.code == 2
    assert "--images" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------------------------
# evaluate, models, entry point


def test_evaluate_identical_files_gives_dice_1(phantom_files: dict[str, Path], capsys) -> None:
    seg = str(phantom_files["seg"])
    assert main(["evaluate", "--pred", seg, "--ref", seg, "--task", "brats", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["task"] == "brats" and len(data["cases"]) == 1
    regions = data["cases"][0]["regions"]
    assert set(regions) == {"WT", "TC", "ET"}
    for values in regions.values():
        assert values["dice"] == 1.0 and values["hd95"] == 0.0
    assert data["summary"]["WT"]["dice"]["mean"] == 1.0


def test_evaluate_refuses_another_grid(phantom_files: dict[str, Path], tmp_path: Path, capfd) -> None:
    labels, geometry = read_image(phantom_files["seg"])
    moved = write_image(
        labels,
        Geometry(geometry.size, (2.0, 2.0, 2.0), geometry.origin, geometry.direction),
        tmp_path / "moved_seg.nii.gz",
    )
    assert main(["evaluate", "--pred", str(moved), "--ref", str(phantom_files["seg"])]) == 1
    assert "does not match" in _one_error_line(capfd)[1]


def test_models_list(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "list"]) == 0
    out = capsys.readouterr().out
    assert f"{DEFAULT_MODEL}  (default)  [brats, bundled" in out
    assert out.count("(default)") == 1


def test_console_script_runs() -> None:
    script = Path(sys.executable).with_name("cldl")
    done = subprocess.run([str(script), "segment", "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "--images" in done.stdout and "--uncertainty" in done.stdout


# ----------------------------------------------------------------------------------------------------------------
# train


def test_train_resume_and_config_errors(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    config, run = tmp_path / "tiny.json", tmp_path / "run"
    config.write_text(json.dumps(TINY_TRAIN))
    assert main(["train", "--config", str(config), "--out", str(run), "--progress", "none"]) == 0
    out, err = capfd.readouterr()
    assert "trained 1 epochs" in out and err == ""
    for name in ("config.json", "last.pt", "best.pt", "metrics.jsonl"):
        assert (run / name).is_file(), name
    best = load_checkpoint(run / "best.pt")
    assert best.task == BRATS and best.training_state is None and best.provenance["epoch"] == 1
    assert json.loads((run / "config.json").read_text())["model"] == {"base_width": 4}

    # --resume continues to the new epoch count, with JSON events on stdout; a flag repeating the recorded value
    # (the same --seed here) is no change
    seed = str(json.loads((run / "config.json").read_text())["seed"])
    assert main(["train", "--resume", "--out", str(run), "--epochs", "2", "--seed", seed, "--progress", "jsonl"]) == 0
    events = [json.loads(line) for line in capfd.readouterr().out.splitlines()]
    assert [e["epoch"] for e in events if e["event"] == "metrics"] == [2]
    assert events[-1]["event"] == "result" and events[-1]["epochs"] == 2
    assert [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    assert load_checkpoint(run / "last.pt").training_state["epoch"] == 2

    before = _snapshot(run)
    failing = {
        "existing run": (["--config", str(config), "--out", str(run)], "already holds a run"),
        "resume, new seed": (["--resume", "--out", str(run), "--seed", "5"], "only --epochs and --device"),
        "resume, no run": (["--resume", "--out", str(tmp_path / "none")], "config.json not found"),
        "no config": (["--out", str(tmp_path / "new")], "--config is required"),
    }
    bad_configs = {
        "unknown key": ({**TINY_TRAIN, "learning_rate": 0.1}, "unknown config keys ['learning_rate']"),
        "unknown model key": ({**TINY_TRAIN, "model": {"width": 4}}, "unknown model keys ['width']"),
        "wrong type": ({**TINY_TRAIN, "epochs": "two"}, "config key 'epochs' must be a whole number"),
        "bad patch": ({**TINY_TRAIN, "patch_size": [30, 32, 32]}, "multiples of 16"),
    }
    for label, (data, expected) in bad_configs.items():
        path = tmp_path / f"{label.replace(' ', '_')}.json"
        path.write_text(json.dumps(data))
        failing[label] = (["--config", str(path), "--out", str(tmp_path / "new")], expected)
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    failing["broken JSON"] = (["--config", str(broken), "--out", str(tmp_path / "new")], "broken.json: not valid JSON")
    broken_yaml = tmp_path / "broken.yaml"
    broken_yaml.write_text("task: [brats\n")
    failing["broken YAML"] = (["--config", str(broken_yaml), "--out", str(tmp_path / "new")], "not valid YAML")
    for label, (args, expected) in failing.items():
        assert main(["train", *args, "--progress", "none"]) == 1, label
        _, line = _one_error_line(capfd)
        assert expected in line, (label, line)
    assert _snapshot(run) == before
    assert not (tmp_path / "new").exists()
