"""Hostile but realistic use of the command line (docs/hostile_inputs.md): real files, real processes and real
signals; each test checks the exit status, the one error line and what is left in the output folder."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import random_checkpoint

from cldl.checkpoint import load_checkpoint, save_checkpoint
from cldl.commands.main import main
from cldl.config_files import load_config
from cldl.files import atomic_writes as atomic
from cldl.files.images import read_image, write_image
from cldl.tasks import BRATS

SENTINEL = b"someone else's file, must survive"
SLOW = ["--overlap", "0.9", "--window-batch", "1", "--tta"]  # many windows, 8 flips each: time to act during a run


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random BraTS checkpoint on disk."""
    return save_checkpoint(random_checkpoint(), tmp_path_factory.mktemp("model") / "tiny.pt")


def _images(phantom_files: dict[str, Path]) -> list[str]:
    return [str(phantom_files[m]) for m in BRATS.modalities]


def _cldl(*args: str) -> list[str]:
    return [sys.executable, "-m", "cldl", *args]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}


def _leftovers(folder: Path) -> list[str]:
    """Hidden temporary files or folders under ``folder``."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob(".*"))


def _error_line(stderr: str) -> str:
    """The single line on stderr, which must be a ``cldl:`` line."""
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("cldl: "), stderr
    return lines[0]


def _default_stop_signals() -> None:
    """In the child: SIGINT and SIGTERM as an interactive user's process gets them (a test run started in the
    background, e.g. under nohup, ignores SIGINT, and children would inherit that)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _start(argv: list[str]) -> subprocess.Popen:
    return subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
        preexec_fn=_default_stop_signals,  # the test process starts no threads of its own
    )


def _wait_for_progress(process: subprocess.Popen) -> None:
    """Read events until the first inference progress event (the run is under way)."""
    for line in process.stdout:
        if json.loads(line)["event"] == "progress":
            return
    raise AssertionError(f"no progress event; stderr: {process.stderr.read()}")


# ----------------------------------------------------------------------------------------------------------------
# 1: no file replaced that was not there (or not the one checked) at the start


def test_two_concurrent_runs_with_one_output_one_wins(model: Path, phantom_files: dict, tmp_path: Path) -> None:
    output = tmp_path / "seg.nii.gz"
    argv = _cldl("segment", "--model", str(model), "-i", *_images(phantom_files), "-o", str(output), "--device", "cpu")
    runs = [_start([*argv, "--progress", "none"]) for _ in range(2)]
    results = [(run.wait(timeout=600), *run.communicate()) for run in runs]
    codes = sorted(code for code, _, _ in results)
    assert codes == [0, 1], results
    _, _, stderr = next(r for r in results if r[0] == 1)
    line = _error_line(stderr)
    assert "appeared while this run was going" in line or "exists; pass --overwrite" in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["seg.nii.gz"]
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_file_written_during_a_run_is_not_replaced(
    overwrite: bool, model: Path, phantom_files: dict, tmp_path: Path
) -> None:
    output, uncertainty = tmp_path / "seg.nii.gz", tmp_path / "unc.nii.gz"
    if overwrite:
        output.write_bytes(b"the old result, to be replaced")
    argv = _cldl("segment", "--model", str(model), "-i", *_images(phantom_files), "-o", str(output))
    argv += ["--uncertainty", str(uncertainty), "--device", "cpu", "--progress", "jsonl", *SLOW]
    process = _start(argv + (["--overwrite"] if overwrite else []))
    _wait_for_progress(process)
    replacement = tmp_path / "copy.tmp"
    replacement.write_bytes(SENTINEL)
    os.replace(replacement, output)  # another program's result lands there while cldl runs
    _, stderr = process.communicate(timeout=600)
    assert process.returncode == 1
    line = _error_line(stderr)
    expected = "was replaced or changed by someone else" if overwrite else "appeared while this run was going"
    assert expected in line and str(output) in line, line
    assert output.read_bytes() == SENTINEL
    assert not uncertainty.exists()  # the set is all or nothing
    assert _leftovers(tmp_path) == []


# ----------------------------------------------------------------------------------------------------------------
# 2: SIGTERM stops like Ctrl+C, and stale temporaries are removed


def test_sigterm_during_inference_leaves_nothing(model: Path, phantom_files: dict, tmp_path: Path) -> None:
    output = tmp_path / "out" / "seg.nii.gz"
    argv = _cldl("segment", "--model", str(model), "-i", *_images(phantom_files), "-o", str(output))
    process = _start([*argv, "--device", "cpu", "--progress", "jsonl", *SLOW])
    _wait_for_progress(process)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=600)
    assert process.returncode == 143
    assert _error_line(stderr) == "cldl: stopped by SIGTERM"
    assert not output.parent.exists() or list(output.parent.iterdir()) == []


def test_sigterm_while_writing_removes_the_temporary_files(
    model: Path, phantom_files: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd
) -> None:
    import cldl.files.images

    real = cldl.files.images.write_unit_interval

    def write_then_terminated(*args, **kwargs):
        written = real(*args, **kwargs)  # the label map and this map are staged in hidden folders now
        assert _leftovers(tmp_path)
        os.kill(os.getpid(), signal.SIGTERM)  # what a batch scheduler or Slicer's Cancel sends
        return written

    monkeypatch.setattr(cldl.files.images, "write_unit_interval", write_then_terminated)
    handler = signal.getsignal(signal.SIGTERM)
    output, uncertainty = tmp_path / "seg.nii.gz", tmp_path / "unc.nii.gz"
    argv = ["segment", "--model", str(model), "-i", *_images(phantom_files), "-o", str(output)]
    assert main([*argv, "--uncertainty", str(uncertainty), "--device", "cpu", "--progress", "none"]) == 143
    assert _error_line(capfd.readouterr().err) == "cldl: stopped by SIGTERM"
    assert list(tmp_path.iterdir()) == []
    assert signal.getsignal(signal.SIGTERM) is handler  # put back after the command


def test_stale_temporaries_of_an_output_are_removed_by_the_next_run(
    model: Path, phantom_files: dict, tmp_path: Path, capfd
) -> None:
    ended = subprocess.Popen(["true"])
    ended.wait()
    output = tmp_path / "seg.nii.gz"
    stale = tmp_path / f".seg.nii.gz.{ended.pid}.k1ll3d.part"  # left by a run killed with SIGKILL
    stale.mkdir()
    (stale / "seg.nii.gz").write_bytes(b"\0" * 2048)
    running = tmp_path / f".seg.nii.gz.{os.getpid()}.busy.part"  # a run that is still going
    running.mkdir()
    other = tmp_path / f".other.nii.gz.{ended.pid}.k1ll3d.part"  # not an output of this run
    other.mkdir()
    argv = ["segment", "--model", str(model), "-i", *_images(phantom_files), "-o", str(output)]
    assert main([*argv, "--device", "cpu", "--progress", "none"]) == 0
    assert capfd.readouterr().err == ""
    assert output.is_file()
    assert not stale.exists() and running.is_dir() and other.is_dir()


# ----------------------------------------------------------------------------------------------------------------
# 3: the outputs of one run are replaced together


def _three_outputs(folder: Path) -> list[Path]:
    targets = [folder / name for name in ("seg.nii.gz", "unc.nii.gz", "prob.nii.gz")]
    for target in targets:
        target.write_bytes(b"old " + target.name.encode())
    return targets


def test_a_failure_between_moves_restores_the_old_set(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    targets = _three_outputs(tmp_path)
    real, moved = os.replace, []

    def fail_on_the_second(source, target):
        if Path(target) in targets:
            moved.append(target)
            if len(moved) == 2:
                raise OSError(28, "No space left on device")
        return real(source, target)

    with pytest.raises(OSError, match="No space"):
        with atomic.atomic_outputs() as staged:
            for target in targets:
                staged.path(target).write_bytes(b"new " + target.name.encode())
            monkeypatch.setattr(atomic.os, "replace", fail_on_the_second)
    monkeypatch.undo()
    assert [t.read_bytes() for t in targets] == [b"old " + t.name.encode() for t in targets]
    assert _leftovers(tmp_path) == []


def test_a_stop_signal_during_the_moves_waits_for_the_whole_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    targets = _three_outputs(tmp_path)
    seen: list[list[bytes]] = []

    def note(number, frame):  # the state of the files when the signal is finally handled
        seen.append([t.read_bytes() for t in targets])

    real_move = atomic._move

    def move_and_signal(source, target, expected):
        done = real_move(source, target, expected)
        if not seen and target == targets[0]:
            os.kill(os.getpid(), signal.SIGTERM)  # arrives after the first of three moves
        return done

    previous = signal.signal(signal.SIGTERM, note)
    try:
        monkeypatch.setattr(atomic, "_move", move_and_signal)
        with atomic.atomic_outputs() as staged:
            for target in targets:
                staged.path(target).write_bytes(b"new " + target.name.encode())
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert seen == [[b"new " + t.name.encode() for t in targets]]
    assert _leftovers(tmp_path) == []


def test_staging_keeps_a_copy_when_the_folder_has_no_hard_links(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_links(*args, **kwargs):
        raise OSError(1, "Operation not permitted")

    monkeypatch.setattr(atomic.os, "link", no_links)
    with atomic.atomic_path(tmp_path / "new.txt") as path:
        path.write_text("new")
    assert (tmp_path / "new.txt").read_text() == "new" and _leftovers(tmp_path) == []
    with pytest.raises(atomic.OutputChanged, match="appeared while this run"):
        with atomic.atomic_path(tmp_path / "late.txt") as path:
            path.write_text("mine")
            (tmp_path / "late.txt").write_bytes(SENTINEL)
    assert (tmp_path / "late.txt").read_bytes() == SENTINEL and _leftovers(tmp_path) == []


# ----------------------------------------------------------------------------------------------------------------
# 4: a diverged checkpoint (NaN weights) is refused


def test_a_checkpoint_with_nan_weights_is_refused(phantom_files: dict, tmp_path: Path, capfd) -> None:
    import torch

    checkpoint = random_checkpoint()
    name = next(k for k, v in checkpoint.state_dict.items() if v.is_floating_point())
    checkpoint.state_dict[name] = torch.full_like(checkpoint.state_dict[name], float("nan"))
    model = save_checkpoint(checkpoint, tmp_path / "diverged.pt")
    out = tmp_path / "out"
    argv = ["segment", "--model", str(model), "-i", *_images(phantom_files), "-o", str(out / "seg.nii.gz")]
    assert main([*argv, "--device", "cpu", "--progress", "jsonl"]) == 1
    stdout, stderr = capfd.readouterr()
    line = _error_line(stderr)
    assert "weight tensors hold NaN or Inf" in line and name in line, line
    assert json.loads(stdout.splitlines()[-1]) == {"event": "error", "message": line.removeprefix("cldl: error: ")}
    assert not out.exists()


def test_non_finite_network_outputs_are_an_error() -> None:
    import torch

    from cldl.inference.predictor import sliding_window_outputs
    from cldl.method.network import UNetLDL

    network = UNetLDL(random_checkpoint().model_config).eval()
    with torch.no_grad():
        next(network.parameters()).fill_(float("inf"))  # weights broken after loading
    with pytest.raises(RuntimeError, match="outputs hold NaN or Inf"):
        sliding_window_outputs(network, torch.rand(4, 32, 32, 32), (32, 32, 32))


def test_a_checkpoint_whose_weights_are_a_list_is_one_error_line(phantom_files: dict, tmp_path: Path, capfd) -> None:
    import torch

    data = random_checkpoint().to_dict()
    data["state_dict"] = list(data["state_dict"].values())
    torch.save(data, tmp_path / "list.pt")
    argv = ["segment", "--model", str(tmp_path / "list.pt"), "-i", *_images(phantom_files)]
    assert main([*argv, "-o", str(tmp_path / "seg.nii.gz"), "--progress", "jsonl"]) == 1
    stdout, stderr = capfd.readouterr()
    assert "not a mapping of names to tensors" in _error_line(stderr)
    assert json.loads(stdout.splitlines()[-1])["event"] == "error"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["list.pt"]


# ----------------------------------------------------------------------------------------------------------------
# 5: evaluate refuses maps that are not uncertainties or probabilities


@pytest.mark.parametrize("option", ["--uncertainty", "--probabilities"])
def test_evaluate_refuses_an_image_as_uncertainty_or_probabilities(
    option: str, phantom_files: dict, tmp_path: Path, capfd
) -> None:
    labels, geometry = read_image(phantom_files["seg"])
    mr = np.linspace(0, 1679, labels.size, dtype=np.float32).reshape(labels.shape)  # an MR image's range
    if option == "--probabilities":  # four "class maps", the last one the MR image
        channels = np.stack([mr / 1679] * 3 + [mr]).transpose(3, 2, 1, 0)
        path = tmp_path / "mr_probabilities.nii.gz"
        nib.save(nib.Nifti1Image(channels, nib.load(phantom_files["seg"]).affine), path)
    else:
        path = write_image(mr, geometry, tmp_path / "mr.nii.gz")
    seg = str(phantom_files["seg"])
    argv = ["evaluate", "--pred", seg, "--ref", seg, option, str(path), "--out", str(tmp_path / "report")]
    assert main(argv) == 1
    line = _error_line(capfd.readouterr().err)
    assert "values run from 0 to 1679" in line and path.name in line, line
    assert not (tmp_path / "report").exists()


# ----------------------------------------------------------------------------------------------------------------
# 6: a small file that inflates to gigabytes is refused before anything is allocated


def _inflating_nifti(path: Path, side: int = 1200) -> Path:
    """A complete, valid .nii.gz of side^3 int16 zeros (3.5 GB of voxels for 1200) in about 3.4 MB: gzip members
    of one compressed 64 MiB block of zeros, concatenated."""
    import gzip

    header = nib.Nifti1Header()
    header.set_data_shape((side,) * 3)
    header.set_data_dtype(np.int16)
    header.set_qform(np.eye(4), code=1)
    total, chunk = side**3 * 2, 1 << 26
    block = gzip.compress(bytes(chunk), compresslevel=9)
    with open(path, "wb") as handle:
        handle.write(gzip.compress(header.binaryblock + bytes(4)))
        for _ in range(total // chunk):
            handle.write(block)
        handle.write(gzip.compress(bytes(total % chunk), compresslevel=9))
    return path


def _limit_memory() -> None:
    """2.5 GB of address space: enough for torch and a real case, not for the inflated image."""
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (2_500_000_000, 2_500_000_000))


def test_an_inflating_image_is_refused_under_a_memory_limit(model: Path, phantom_files: dict, tmp_path: Path) -> None:
    bomb = _inflating_nifti(tmp_path / "flair.nii.gz")
    assert bomb.stat().st_size < 5_000_000
    out = tmp_path / "out"
    images = [str(bomb), *_images(phantom_files)[1:]]
    argv = _cldl("segment", "--model", str(model), "-i", *images, "-o", str(out / "seg.nii.gz"), "--device", "cpu")
    done = subprocess.run(
        [*argv, "--progress", "none"], capture_output=True, text=True, env=_env(), preexec_fn=_limit_memory, timeout=300
    )
    assert done.returncode == 1, done.stderr
    line = _error_line(done.stderr)
    assert "header promises a 1200x1200x1200 image of 3.46 GB" in line and "--max-image-gb 4" in line, line
    assert not out.exists()
    # the same command on a real case works under the same limit
    argv[argv.index(str(bomb))] = str(phantom_files["flair"])
    done = subprocess.run(
        [*argv, "--progress", "none"], capture_output=True, text=True, env=_env(), preexec_fn=_limit_memory, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in out.iterdir()) == ["seg.nii.gz"]


def test_max_image_gb_sets_the_limit(phantom_files: dict, tmp_path: Path, capfd) -> None:
    seg = str(phantom_files["seg"])  # 48^3 uint8 voxels: 0.11 MB
    assert main(["evaluate", "--pred", seg, "--ref", seg, "--max-image-gb", "0.0001"]) == 1
    line = _error_line(capfd.readouterr().err)
    assert "header promises a 48x48x48 image of 0.000111 GB" in line and "limit of 0.0001 GB" in line, line
    assert main(["evaluate", "--pred", seg, "--ref", seg, "--max-image-gb", "0.001"]) == 0
    assert main(["evaluate", "--pred", seg, "--ref", seg]) == 0  # the default applies again


# ----------------------------------------------------------------------------------------------------------------
# 8: an overlap that explodes the window count, and a FIFO as input


def test_an_overlap_near_one_is_refused_with_the_window_count(
    model: Path, phantom_files: dict, tmp_path: Path, capfd
) -> None:
    out = tmp_path / "out"
    argv = ["segment", "--model", str(model), "-i", *_images(phantom_files), "-o", str(out / "seg.nii.gz")]
    assert main([*argv, "--device", "cpu", "--overlap", "0.99999", "--progress", "none"]) == 1
    line = _error_line(capfd.readouterr().err)
    count = re.search(r"an overlap of 0.99999 plans ([\d,]+) sliding windows for this \d+x\d+x\d+ volume", line)
    assert count and int(count.group(1).replace(",", "")) > 50 * 8, line  # 8: overlap 0.5's windows (48^3, 32^3)
    assert "use --overlap 0.9 or less" in line, line
    assert not out.exists()


def test_a_fifo_as_input_is_refused_up_front(model: Path, phantom_files: dict, tmp_path: Path) -> None:
    fifo = tmp_path / "flair.nii.gz"
    os.mkfifo(fifo)
    out = tmp_path / "out"
    argv = _cldl("segment", "--model", str(model), "-i", str(fifo), *_images(phantom_files)[1:])
    done = subprocess.run(
        [*argv, "-o", str(out / "seg.nii.gz"), "--progress", "none"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 1
    assert "flair.nii.gz: not a regular file (a pipe, socket or device)" in _error_line(done.stderr)
    seg = str(phantom_files["seg"])
    done = subprocess.run(
        _cldl("evaluate", "--pred", str(fifo), "--ref", seg), capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 1
    assert "not a regular file" in _error_line(done.stderr)
    assert not out.exists()


# ----------------------------------------------------------------------------------------------------------------
# 9: every config key is checked for type and range before anything is written

TINY_TRAIN = load_config("tiny_phantoms")
BAD_CONFIGS = {
    "lr: fast": ({"lr": "fast"}, "config key 'lr' must be a number, got 'fast'"),
    "betas: xy": ({"betas": "xy"}, "config key 'betas' must be a list of numbers, got 'xy'"),
    "one beta": ({"betas": [0.9]}, "config key 'betas' must be two numbers in [0, 1)"),
    "epochs: 1.5": ({"epochs": 1.5}, "config key 'epochs' must be a whole number, got 1.5"),
    "seed: -1": ({"seed": -1}, "config key 'seed' must be in [0, 4294967295], got -1"),
    "lr: 0": ({"lr": 0}, "config key 'lr' must be in (0, inf), got 0"),
    "amp: yes": ({"amp": "yes"}, "config key 'amp' must be true or false"),
    "reversed seeds": (
        {"phantoms": {**TINY_TRAIN["phantoms"], "train_seeds": [5, 2]}},
        "config key 'phantoms' needs train_seeds as a half-open range [first, stop) with 0 <= first < stop",
    ),
    "reversed validation seeds": (
        {"phantoms": {**TINY_TRAIN["phantoms"], "val_seeds": [5, 2]}},
        "config key 'phantoms' needs val_seeds as a half-open range [first, stop) with 0 <= first <= stop",
    ),
}


def test_an_empty_validation_range_is_allowed() -> None:
    """No validation cases (``val_seeds`` [a, a]) is a valid run, as the training benchmarks use it."""
    from cldl.training.config import TrainConfig

    config = TrainConfig.from_dict({**TINY_TRAIN, "phantoms": {**TINY_TRAIN["phantoms"], "val_seeds": [7, 7]}})
    assert config.phantoms["val_seeds"] == [7, 7]


@pytest.mark.parametrize("name", list(BAD_CONFIGS))
def test_a_bad_config_value_is_one_line_and_leaves_no_run_folder(name: str, tmp_path: Path, capfd) -> None:
    change, expected = BAD_CONFIGS[name]
    config = tmp_path / "config.yaml"
    config.write_text(json.dumps({**TINY_TRAIN, **change}))  # JSON is YAML
    run = tmp_path / "run"
    assert main(["train", "--config", str(config), "--out", str(run), "--progress", "jsonl"]) == 1
    stdout, stderr = capfd.readouterr()
    assert expected in _error_line(stderr)
    assert json.loads(stdout.splitlines()[-1])["event"] == "error"
    assert not run.exists()


def test_a_refused_dataset_leaves_no_run_folder(tmp_path: Path, capfd) -> None:
    config = tmp_path / "config.json"
    config.write_text(json.dumps({**{k: v for k, v in TINY_TRAIN.items() if k != "phantoms"}, "data": str(tmp_path)}))
    (tmp_path / "notes.csv").write_text("case,flair\n")
    run = tmp_path / "run"
    assert main(["train", "--config", str(config), "--out", str(run), "--progress", "none"]) == 1
    assert "no known dataset layout" in _error_line(capfd.readouterr().err)
    assert not run.exists()


DIVERGING_RUNS = {  # lr 1e30: the first Adam step blows the weights up, and the next step's loss is NaN
    "after an epoch": ({"epochs": 2, "val_every": 2}, "epoch 2, iteration 1"),
    "in the first epoch": ({"iters_per_epoch": 2}, "epoch 1, iteration 2"),
}


@pytest.mark.parametrize("name", list(DIVERGING_RUNS))
def test_a_nan_loss_is_one_error_line_and_keeps_the_last_checkpoint(name: str, tmp_path: Path, capfd) -> None:
    """``cldl train`` ends with one line saying where and what to try (exit status 1, an ``error`` event), not a
    FloatingPointError traceback; a completed epoch keeps its last.pt (docs/method.md)."""
    settings, where = DIVERGING_RUNS[name]
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"extends": "tiny_phantoms", "lr": 1e30, **settings}))
    run = tmp_path / "run"
    assert main(["train", "--config", str(config), "--out", str(run), "--progress", "jsonl"]) == 1
    stdout, stderr = capfd.readouterr()
    line = _error_line(stderr)
    assert re.match(
        rf"cldl: error: training stopped: the loss became (nan|-?inf) at {where}; lower the learning ", line
    )
    assert "or check the input data" in line
    assert json.loads(stdout.splitlines()[-1]) == {"event": "error", "message": line.removeprefix("cldl: error: ")}
    if name == "in the first epoch":
        assert line.endswith("no checkpoint was written yet") and not (run / "last.pt").exists()
    else:
        assert line.endswith(f"its last checkpoint {run / 'last.pt'} is kept")
        assert load_checkpoint(run / "last.pt").provenance["epoch"] == 1


# ----------------------------------------------------------------------------------------------------------------
# 12: folder mode reports a case with a missing modality and segments the others


def test_folder_mode_segments_the_cases_next_to_one_missing_a_modality(model: Path, tmp_path: Path, capfd) -> None:
    from cldl.data.phantoms import brats_phantom, write_case

    data = tmp_path / "data"
    for seed in (20_100, 20_101, 20_102):
        write_case(brats_phantom(seed, shape=(32, 32, 32)), data)
    broken, *complete = sorted(p.name for p in data.iterdir())
    next((data / broken).glob("*_t1ce.nii.gz")).unlink()
    out = tmp_path / "out"
    argv = ["segment", "--model", str(model), "-i", str(data), "-o", str(out), "--device", "cpu"]
    assert main([*argv, "--progress", "none"]) == 1
    stdout, stderr = capfd.readouterr()
    line = _error_line(stderr)
    assert line.startswith(f"cldl: error: case {broken}: missing modality t1ce"), line
    assert "segmented 2 of 3 case(s)" in stdout
    assert sorted(p.name for p in out.iterdir()) == [f"{case}.nii.gz" for case in complete]
    assert main([*argv, "--progress", "jsonl"]) == 1  # a re-run: the two are done, the broken case still reported
    events = [json.loads(text) for text in capfd.readouterr().out.splitlines()]
    assert [e["case"] for e in events if e["event"] == "case_error"] == [broken]
    assert events[-1]["event"] == "result" and events[-1]["skipped"] == 2 and events[-1]["segmented"] == []


# ----------------------------------------------------------------------------------------------------------------
# 11: exit statuses as docs/command_line.md states them


def test_exit_statuses_are_the_documented_ones(tmp_path: Path) -> None:
    page = Path(__file__).parents[1] / "docs" / "command_line.md"
    documented = " ".join(page.read_text(encoding="utf-8").split())
    assert "An error is one line on stderr (`cldl: error: ...`) and exit status 1" in documented
    assert "the command's usage, then `cldl <command>: error: ...`, and exit status 2" in documented
    usage = subprocess.run(_cldl("segment", "-o", str(tmp_path / "seg.nii.gz")), capture_output=True, text=True)
    assert usage.returncode == 2
    lines = usage.stderr.splitlines()
    assert lines[0].startswith("usage: cldl segment")
    assert lines[-1] == "cldl segment: error: the following arguments are required: -i/--images"
    missing = subprocess.run(
        _cldl("evaluate", "--pred", "nothing.nii.gz", "--ref", "x.nii.gz"), capture_output=True, text=True
    )
    assert missing.returncode == 1
    assert _error_line(missing.stderr) == "cldl: error: nothing.nii.gz: no such file or folder"
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------------------------------------------
# 7: a YAML alias bomb in a config is refused


def test_a_yaml_alias_bomb_is_refused_quickly_under_a_memory_limit(tmp_path: Path) -> None:
    items = ['&a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    items += [f"&a{n} [{', '.join([f'*a{n - 1}'] * 9)}]" for n in range(1, 10)]  # 9^10 values, all in one value
    config = tmp_path / "bomb.yaml"
    config.write_text("task: brats\nphantoms: {train_seeds: [0, 2], shape: [" + ", ".join(items) + "]}\n")
    run = tmp_path / "run"
    done = subprocess.run(
        _cldl("train", "--config", str(config), "--out", str(run)),
        capture_output=True,
        text=True,
        env=_env(),
        preexec_fn=_limit_memory,
        timeout=120,
    )
    assert done.returncode == 1, done.stderr
    assert "bomb.yaml: expands to more than 100,000 values" in _error_line(done.stderr)
    assert not run.exists()


def test_sigterm_while_training_data_loads_ends_the_run_at_once(tmp_path: Path) -> None:
    config = tmp_path / "config.json"
    slow_loading = {**TINY_TRAIN, "phantoms": {"train_seeds": [0, 400], "val_seeds": [10_000, 10_001]}}
    config.write_text(json.dumps(slow_loading))  # 400 phantoms of 96^3 to make before the first step
    run = tmp_path / "run"
    process = _start(_cldl("train", "--config", str(config), "--out", str(run), "--progress", "jsonl"))
    for line in process.stdout:  # the first case is made: loading is under way
        if json.loads(line).get("stage") == "load":
            break
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 143
    assert _error_line(stderr) == "cldl: stopped by SIGTERM"
    assert not run.exists()


# ----------------------------------------------------------------------------------------------------------------
# 10: messages that say what is wrong, in one line


class _RunsCode:
    """Pickles as a call of os.system: what a malicious checkpoint holds."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _checkpoint_variant(kind: str, folder: Path) -> tuple[Path, str]:
    """A damaged or hostile checkpoint and the text its error line must hold."""
    import torch

    data = random_checkpoint().to_dict()
    path = folder / f"{kind}.pt"
    if kind == "pickle":
        data["provenance"] = {"note": _RunsCode(folder / "code_ran")}
        expected = "refused: it holds Python objects other than weights, which could run code"
    elif kind == "wrong_shape":
        name = next(k for k, v in data["state_dict"].items() if v.ndim == 5)
        data["state_dict"][name] = torch.zeros(3, 3, 3, 3, 3)
        expected = f"its weights do not fit the network its model_config describes (size mismatch for {name}"
    elif kind == "patch_zero":
        data["patch_size"] = [0, 0, 0]
        expected = "patch size [0, 0, 0]; each side must be a multiple of 16 from 16 to 1024"
    else:
        data["patch_size"] = [262144] * 3
        expected = "patch size [262144, 262144, 262144]"
    torch.save(data, path)
    return path, expected


@pytest.mark.parametrize("kind", ["pickle", "wrong_shape", "patch_zero", "patch_huge"])
def test_a_hostile_checkpoint_is_one_clear_line(kind: str, phantom_files: dict, tmp_path: Path, capfd) -> None:
    model, expected = _checkpoint_variant(kind, tmp_path)
    out = tmp_path / "out"
    argv = ["segment", "--model", str(model), "-i", *_images(phantom_files), "-o", str(out / "seg.nii.gz")]
    assert main([*argv, "--device", "cpu", "--progress", "none"]) == 1
    line = _error_line(capfd.readouterr().err)
    assert expected in line, line
    assert "weights_only" not in line and "Error(s) in loading" not in line
    assert not (tmp_path / "code_ran").exists() and not out.exists()


@pytest.mark.parametrize("byte, expected", [(-8, "gzip checksum (CRC-32) does not match"), (-1, "length field")])
def test_a_gzip_checksum_error_is_not_called_truncated(
    byte: int, expected: str, model: Path, phantom_files: dict, tmp_path: Path, capfd
) -> None:
    damaged = bytearray(phantom_files["flair"].read_bytes())
    damaged[byte] ^= 0xFF  # the trailer: all the data is there
    flair = tmp_path / "flair.nii.gz"
    flair.write_bytes(bytes(damaged))
    out = tmp_path / "out"
    argv = ["segment", "--model", str(model), "-i", str(flair), *_images(phantom_files)[1:], "-o", str(out / "s.nii")]
    assert main([*argv, "--device", "cpu", "--progress", "none"]) == 1
    line = _error_line(capfd.readouterr().err)
    assert f"flair.nii.gz: damaged: its {expected}" in line or expected in line, line
    assert "truncated" not in line and not out.exists()


@pytest.mark.parametrize("output", ["seg.png", "folder"])
def test_an_unusable_output_name_is_refused_before_inference(
    output: str, model: Path, phantom_files: dict, tmp_path: Path, capfd
) -> None:
    target = tmp_path / output
    if output == "folder":
        target.mkdir()
    argv = ["segment", "--model", str(model), "-i", *_images(phantom_files), "-o", str(target)]
    assert main([*argv, "--device", "cpu", "--progress", "jsonl"]) == 1
    stdout, stderr = capfd.readouterr()
    line = _error_line(stderr)
    expected = "unknown image format; use one of .seg.nrrd, .nii.gz" if output == "seg.png" else "is a folder"
    assert expected in line and ".part" not in line, line
    assert '"progress"' not in stdout  # refused before inference
    assert sorted(p.name for p in tmp_path.iterdir()) == (["folder"] if output == "folder" else [])


def test_grids_that_differ_only_in_direction_are_described_differently(
    phantom_files: dict, tmp_path: Path, capfd
) -> None:
    from cldl.files.geometry import Geometry

    labels, geometry = read_image(phantom_files["seg"])
    turned = Geometry(geometry.size, geometry.spacing, geometry.origin, (1.0, 0, 0, 0, 0, 1.0, 0, 1.0, 0))
    pred = write_image(labels, turned, tmp_path / "pred.nii.gz")
    assert main(["evaluate", "--pred", str(pred), "--ref", str(phantom_files["seg"])]) == 1
    line = _error_line(capfd.readouterr().err)
    described = re.fullmatch(r".*pred\.nii\.gz \((.*)\) does not match reference .*_seg\.nii\.gz \((.*)\); .*", line)
    assert described and described[1] != described[2], line
    assert described[1].endswith("direction (1, 0, 0, 0, 0, 1, 0, 1, 0)") and "oblique" not in line, line


def test_itk_diagnostics_stay_off_stderr(phantom_files: dict, tmp_path: Path) -> None:
    image = nib.load(phantom_files["seg"])
    sheared = image.affine.copy()
    sheared[0, 1] = 0.5
    odd = nib.Nifti1Image(np.asanyarray(image.dataobj), image.affine, image.header.copy())
    odd.set_sform(sheared, code=2)  # ITK warns "unexpected scales in sform" and uses the qform
    path = tmp_path / "odd_seg.nii.gz"
    nib.save(odd, path)
    argv = _cldl("evaluate", "--pred", str(path), "--ref", str(path), "--progress", "none")
    done = subprocess.run(argv, capture_output=True, text=True)
    assert done.returncode == 0 and done.stderr == "", done.stderr


def test_an_image_given_as_labels_is_a_short_error_line(phantom_files: dict, tmp_path: Path, capfd) -> None:
    labels, geometry = read_image(phantom_files["seg"])
    mr = (np.arange(labels.size) % 1680).reshape(labels.shape).astype(np.int16)  # an MR image's 1680 grey values
    pred = write_image(mr, geometry, tmp_path / "mr.nii.gz")
    assert main(["evaluate", "--pred", str(pred), "--ref", str(phantom_files["seg"])]) == 1
    line = _error_line(capfd.readouterr().err)
    assert "(1676 values)" in line and "an image rather than a label map?" in line and len(line) < 400, line


def test_a_negative_et_min_voxels_is_an_argument_error(phantom_files: dict) -> None:
    seg = str(phantom_files["seg"])
    done = subprocess.run(
        _cldl("evaluate", "--pred", seg, "--ref", seg, "--et-min-voxels", "-5"), capture_output=True, text=True
    )
    assert done.returncode == 2
    assert done.stderr.splitlines()[-1] == "cldl evaluate: error: argument --et-min-voxels: must be 0 or more, got -5"


# ----------------------------------------------------------------------------------------------------------------
# situations that were already handled, kept so (docs/hostile_inputs.md)


def test_sigint_during_inference_leaves_nothing(model: Path, phantom_files: dict, tmp_path: Path) -> None:
    output = tmp_path / "seg.nii.gz"
    argv = _cldl("segment", "--model", str(model), "-i", *_images(phantom_files), "-o", str(output))
    process = _start([*argv, "--device", "cpu", "--progress", "jsonl", *SLOW])
    _wait_for_progress(process)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=600)
    assert process.returncode == 130
    assert _error_line(stderr) == "cldl: interrupted"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("kind", ["symlink", "hard_link"])
def test_one_file_twice_through_a_link_is_refused(
    kind: str, model: Path, phantom_files: dict, tmp_path: Path, capfd
) -> None:
    twin = tmp_path / "t1.nii.gz"
    (os.symlink if kind == "symlink" else os.link)(phantom_files["flair"], twin)
    images = _images(phantom_files)
    images[1] = str(twin)
    argv = ["segment", "--model", str(model), "-i", *images, "-o", str(tmp_path / "seg.nii.gz"), "--device", "cpu"]
    assert main([*argv, "--progress", "none"]) == 1
    assert "is given for both flair and t1" in _error_line(capfd.readouterr().err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t1.nii.gz"]


def test_a_png_named_nii_gz_is_not_an_image(model: Path, phantom_files: dict, tmp_path: Path, capfd) -> None:
    fake = tmp_path / "flair.nii.gz"
    fake.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(200))
    argv = ["segment", "--model", str(model), "-i", str(fake), *_images(phantom_files)[1:]]
    assert main([*argv, "-o", str(tmp_path / "seg.nii.gz"), "--progress", "none"]) == 1
    line = _error_line(capfd.readouterr().err)  # and no lines of libpng's own
    assert "flair.nii.gz: not a readable image: it holds a PNG picture, not a 3D volume" in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["flair.nii.gz"]


def test_a_python_tag_in_a_yaml_config_runs_nothing(tmp_path: Path, capfd) -> None:
    marker = tmp_path / "code_ran"
    config = tmp_path / "config.yaml"
    config.write_text(f'task: brats\nphantoms: !!python/object/apply:os.system ["touch {marker}"]\n')
    assert main(["train", "--config", str(config), "--out", str(tmp_path / "run"), "--progress", "none"]) == 1
    assert "not valid YAML" in _error_line(capfd.readouterr().err)
    assert not marker.exists() and not (tmp_path / "run").exists()


def test_the_docs_table_names_only_tests_that_exist() -> None:
    root = Path(__file__).parents[1]
    table = (root / "docs" / "hostile_inputs.md").read_text(encoding="utf-8")
    names = re.findall(r"`(?:Testing/(test_\w+)\.py::)?(test_\w+)", table)
    assert len(names) > 40
    for module, name in names:
        source = (root / "Testing" / f"{module or 'test_hostile'}.py").read_text(encoding="utf-8")
        assert f"def {name}(" in source, (module, name)


def test_random_bytes_as_a_checkpoint_get_no_unsafe_advice(tmp_path: Path) -> None:
    from cldl.checkpoint import CheckpointError, load_checkpoint

    path = tmp_path / "random.pt"
    path.write_bytes(np.random.default_rng(1).bytes(2048))
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(path)
    assert "not a loadable CLDL checkpoint (not a safe torch checkpoint: " in str(error.value)
    assert "weights_only" not in str(error.value) and "\n" not in str(error.value)
