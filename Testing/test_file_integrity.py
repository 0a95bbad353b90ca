"""Issue 15: damaged files are refused with one clear line, outputs are complete or absent.

Real files (written by ITK, nibabel and cldl) are cut short at several points; full disks are simulated by writers
that stop early, either raising (nibabel, NRRD) or silently (ITK's NIfTI writer, as measured on a full tmpfs).
"""

from __future__ import annotations

import csv
import gzip
import json
import re
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch

from cldl.checkpoint import load_checkpoint, save_checkpoint
from cldl.commands.main import main
from cldl.data.cache import PreprocessCache
from cldl.data.cases import check_mixups, mixup_problems
from cldl.data.discovery import detect_dataset
from cldl.data.phantoms import brats_phantom, write_case
from cldl.data.preprocess import InputError, PreprocessConfig
from cldl.files import atomic_writes as atomic
from cldl.files.geometry import Geometry
from cldl.files.images import ImageError, read_channels, read_image, write_image, write_unit_interval
from cldl.files.integrity import payload_problem
from cldl.files.label_maps import read_labels
from cldl.tasks import BRATS

CUTS = (0.0, 0.1, 0.5, 0.9, 0.99)
SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".seg.nrrd")
GEOMETRY = Geometry((16, 12, 10), (0.9, 1.1, 2.5), (10.0, -5.0, 3.0), (0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0))


def _noise(dtype: type = np.float32) -> np.ndarray:
    """Poorly compressible voxels on GEOMETRY, so every cut lands in the image data."""
    return (np.random.default_rng(0).random(GEOMETRY.shape) * 1000).astype(dtype)


def _cut(path: Path, fraction: float, out: Path | None = None) -> Path:
    """Keep the first ``fraction`` of the file's bytes (at least one byte short)."""
    data = path.read_bytes()
    out = out or path
    out.write_bytes(data[: min(int(len(data) * fraction), len(data) - 1)])
    return out


def _write(suffix: str, folder: Path) -> Path:
    """A complete file of each format (labels for .seg.nrrd)."""
    path = folder / f"image{suffix}"
    if suffix == ".seg.nrrd":
        labels = (np.random.default_rng(1).random(GEOMETRY.shape) * 4).astype(np.uint8)
        sitk.WriteImage(GEOMETRY.apply(sitk.GetImageFromArray(labels)), str(path), True)
    else:
        write_image(_noise(), GEOMETRY, path)
    return path


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_truncated_files_are_refused_naming_the_file_and_the_amount(suffix: str, tmp_path: Path) -> None:
    complete = _write(suffix, tmp_path)
    read = read_labels if suffix == ".seg.nrrd" else read_image
    read(complete)  # the complete file reads
    for fraction in CUTS:
        damaged = _cut(complete, fraction, tmp_path / f"cut{fraction}{suffix}")
        with pytest.raises(ImageError) as info:
            read(damaged)
        message = str(info.value)
        assert message.startswith(f"{damaged}: "), message
        assert "\n" not in message
        if fraction >= 0.5:  # past the header: how much image data is there
            total = "1.9" if suffix == ".seg.nrrd" else "7.7"
            assert re.search(rf"truncated: [\d.]+ of {total} kB of image data", message), message


def test_corrupt_and_empty_compressed_nifti(tmp_path: Path) -> None:
    path = write_image(_noise(), GEOMETRY, tmp_path / "a.nii.gz")
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte in the middle of the deflate stream
    path.write_bytes(bytes(data))
    with pytest.raises(ImageError, match="a.nii.gz: damaged"):
        read_image(path)
    good = write_image(_noise(), GEOMETRY, tmp_path / "b.nii.gz")
    trailer = bytearray(good.read_bytes())
    trailer[-6] ^= 0xFF  # the gzip checksum only: the voxels decompress, the file is still damaged
    good.write_bytes(bytes(trailer))
    with pytest.raises(ImageError, match="damaged: its gzip checksum \\(CRC-32\\) does not match the data"):
        read_image(good)
    empty = tmp_path / "c.nii.gz"
    empty.write_bytes(b"")
    with pytest.raises(ImageError, match="empty file"):
        read_image(empty)


def test_detached_data_files_are_checked(tmp_path: Path) -> None:
    for suffix in (".mhd", ".nhdr"):
        header = write_image(_noise(), GEOMETRY, tmp_path / f"d{suffix}")
        data_files = [p for p in tmp_path.iterdir() if p.stem.startswith("d") and p.suffix not in (".mhd", ".nhdr")]
        assert data_files and not list(tmp_path.glob(".*.part"))  # the data file moved into place with its header
        read_image(header)
        for data_file in data_files:
            _cut(data_file, 0.5)
        with pytest.raises(ImageError, match=rf"d{suffix}: truncated: [\d.]+ of 7\.7 kB"):
            read_image(header)
        for data_file in data_files:
            data_file.unlink()


def test_multi_member_gzip_is_complete(tmp_path: Path) -> None:
    """Concatenated gzip members (bgzip, pigz --independent) hold one complete file."""
    plain = write_image(_noise(), GEOMETRY, tmp_path / "a.nii")
    data = plain.read_bytes()
    multi = tmp_path / "multi.nii.gz"
    multi.write_bytes(b"".join(gzip.compress(data[i : i + 1000]) for i in range(0, len(data), 1000)))
    assert np.array_equal(read_image(multi)[0], read_image(plain)[0])


@pytest.mark.parametrize(
    "kind", ["int16", "uint8-scaled", "int16-scaled-inter", "float64", "4d", "big-endian", "qform-only"]
)
def test_one_pass_nifti_reader_equals_itk(kind: str, tmp_path: Path) -> None:
    """The verified .nii.gz reader builds the image from its own decompression: voxels, type and geometry must be
    exactly ITK's."""
    rng = np.random.default_rng(2)
    affine = np.array([[0.0, -1.1, 0.0, 10.0], [0.9, 0.0, 0.0, -5.0], [0.0, 0.0, 2.5, 3.0], [0, 0, 0, 1]])
    data = (rng.random((10, 12, 16)) * 300).astype(np.int16)
    if kind == "float64":
        data = data.astype(np.float64) / 7
    if kind == "4d":
        data = rng.random((10, 12, 16, 3)).astype(np.float32)
    if kind == "big-endian":
        data = data.astype(">i2")
    image = nib.Nifti1Image(data, affine)
    if kind == "uint8-scaled":
        image = nib.Nifti1Image(data.astype(np.uint8), affine)
        image.header.set_slope_inter(1 / 255, 0)
    if kind == "int16-scaled-inter":
        image.header.set_slope_inter(0.37, -12.5)
    if kind == "qform-only":
        image.set_sform(None, code=0)
    path = tmp_path / "x.nii.gz"
    nib.save(image, str(path))
    itk = sitk.ReadImage(str(path))
    ours, geometry = read_channels(path)
    theirs = sitk.GetArrayFromImage(itk)
    theirs = theirs if itk.GetDimension() == 4 else theirs[np.newaxis]
    assert ours.dtype == theirs.dtype and np.array_equal(ours, theirs)
    assert geometry == Geometry.of(itk)


# --------------------------------------------------------------------------------------------------------------
# writes


def _silent_partial_writer(real):
    """A writer that stops half-way without an error, as ITK's NIfTI writer does on a full disk."""

    def write(image, path, *args, **kwargs):
        real(image, path, *args, **kwargs)
        _cut(Path(path), 0.5)

    return write


def _raising_partial_writer(real):
    """A writer that stops half-way and raises No space left on device, as nibabel and the NRRD writer do."""

    def write(image, path, *args, **kwargs):
        real(image, path, *args, **kwargs)
        _cut(Path(path), 0.5)
        raise OSError(28, "No space left on device")

    return write


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd", ".mha"])
@pytest.mark.parametrize("fails", ["silently", "raising"])
def test_a_failed_image_write_leaves_the_old_file_and_nothing_else(
    suffix: str, fails: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / f"out{suffix}"
    target.write_bytes(b"previous result")
    wrap = _silent_partial_writer if fails == "silently" else _raising_partial_writer
    monkeypatch.setattr(sitk, "WriteImage", wrap(sitk.WriteImage))
    with pytest.raises(OSError, match=f"out{re.escape(suffix)}"):
        write_image(_noise(), GEOMETRY, target)
    assert target.read_bytes() == b"previous result"
    assert sorted(p.name for p in tmp_path.iterdir()) == [target.name]


def test_a_failed_nibabel_write_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(nib, "save", _raising_partial_writer(nib.save))
    with pytest.raises(OSError, match="No space left"):
        write_unit_interval(np.full(GEOMETRY.shape, 0.5), GEOMETRY, tmp_path / "u.nii.gz")
    assert list(tmp_path.iterdir()) == []


def test_staged_outputs_are_all_or_nothing(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("old a")
    with pytest.raises(RuntimeError), atomic.atomic_outputs() as staged:
        staged.path(tmp_path / "a.txt").write_text("new a")
        staged.path(tmp_path / "b.txt").write_text("new b")
        raise RuntimeError("the third output failed")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"] and (tmp_path / "a.txt").read_text() == "old a"
    with atomic.atomic_outputs() as staged:
        staged.path(tmp_path / "a.txt").write_text("new a")
        staged.path(tmp_path / "b.txt").write_text("new b")
        staged.path(tmp_path / "never.txt")  # staged but not written (e.g. a skipped snapshot): dropped
        assert not (tmp_path / "b.txt").exists()  # nothing appears before the block ends
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.txt"]
    assert (tmp_path / "a.txt").read_text() == "new a"


def test_a_failed_checkpoint_save_keeps_the_previous_checkpoint(
    tiny_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    checkpoint = load_checkpoint(tiny_checkpoint)
    target = Path(shutil.copy(tiny_checkpoint, tmp_path / "last.pt"))
    before = target.read_bytes()

    def full_disk(data, path, *args, **kwargs) -> None:
        Path(path).write_bytes(b"half a checkpoint")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint(checkpoint, target)
    assert target.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


def test_a_failed_cache_entry_leaves_no_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    case = detect_dataset(_dataset(tmp_path / "data", 1)).cases[0]
    cache = PreprocessCache(tmp_path / "cache")

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(np, "save", full_disk)
        with pytest.raises(OSError, match="No space left"):
            cache.load(case, BRATS, PreprocessConfig())
    assert [p for p in (tmp_path / "cache").rglob("*") if p.is_file()] == []
    loaded = cache.load(case, BRATS, PreprocessConfig())  # a later run stores and reads the entry
    assert loaded.images.shape[0] == 4 and cache.misses == 2


# --------------------------------------------------------------------------------------------------------------
# the command line


def _dataset(folder: Path, cases: int) -> Path:
    """A BraTS-layout dataset of small phantoms."""
    for seed in range(cases):
        write_case(brats_phantom(seed, shape=(24, 24, 24)), folder, layout="brats")
    return folder


def test_datasets_check_reports_every_damaged_file_in_one_pass(tmp_path: Path, capsys) -> None:
    root = _dataset(tmp_path / "data", 3)
    files = sorted(root.rglob("*.nii.gz"))
    flair = next(p for p in files if p.name.endswith("_flair.nii.gz"))
    seg = next(p for p in files if p.name.endswith("_seg.nii.gz") and p.parent != flair.parent)
    t2 = next(p for p in files if p.name.endswith("_t2.nii.gz") and p.parent == flair.parent)
    for path in (flair, seg, t2):
        _cut(path, 0.6)
    assert main(["datasets", "check", str(root)]) == 1
    problems = [line for line in capsys.readouterr().out.splitlines() if line.startswith("problem:")]
    for path in (flair, seg, t2):
        assert any(str(path) in line and "truncated" in line for line in problems), (path, problems)


def _label_folders(tmp_path: Path) -> tuple[Path, Path]:
    """Three reference label maps and predictions (shifted copies) in two folders."""
    pred, ref = tmp_path / "pred", tmp_path / "ref"
    labels = np.zeros((20, 20, 20), np.uint8)
    labels[5:15, 5:15, 5:15], labels[8:12, 8:12, 8:12] = 2, 4
    geometry = Geometry.identity(labels.shape)
    for index, cid in enumerate(("c1", "c2", "c3")):
        write_image(labels, geometry, ref / f"{cid}_seg.nii.gz")
        write_image(np.roll(labels, index, axis=0), geometry, pred / f"{cid}.nii.gz")
    return pred, ref


def test_evaluate_reports_a_damaged_case_and_evaluates_the_others(tmp_path: Path, capsys) -> None:
    pred, ref = _label_folders(tmp_path)
    _cut(pred / "c2.nii.gz", 0.7)
    out = tmp_path / "report"
    assert main(["evaluate", "--pred", str(pred), "--ref", str(ref), "--out", str(out), "--progress", "none"]) == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and all(line.startswith("cldl: error: ") for line in err), err
    assert f"case c2: {pred / 'c2.nii.gz'}: truncated" in err[0]
    assert "1 of 3 case(s) could not be evaluated" in err[1]
    rows = list(csv.DictReader((out / "metrics.csv").open(encoding="utf-8")))
    assert sorted({row["case"] for row in rows}) == ["c1", "c3"]
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert summary["cases"] == 2 and [e["case"] for e in summary["errors"]] == ["c2"]
    assert "not evaluated (1): c2" in (out / "summary.md").read_text(encoding="utf-8")
    # two files: the damaged prediction is the one error
    args = ["evaluate", "--pred", str(pred / "c2.nii.gz"), "--ref", str(ref / "c2_seg.nii.gz"), "--progress", "none"]
    assert main(args) == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "c2.nii.gz: truncated" in err[0]


def test_evaluate_reports_are_all_or_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    pred, ref = _label_folders(tmp_path)
    out = tmp_path / "report"
    real = Path.write_text

    def full_disk(self: Path, text: str, *args, **kwargs) -> int:
        if self.name == "summary.md":
            real(self, text[:5], *args, **kwargs)
            raise OSError(28, "No space left on device")
        return real(self, text, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", full_disk)
    assert main(["evaluate", "--pred", str(pred), "--ref", str(ref), "--out", str(out), "--progress", "none"]) == 1
    assert "No space left on device" in capsys.readouterr().err
    assert list(out.iterdir()) == []


# --------------------------------------------------------------------------------------------------------------
# mix-ups


def test_mixup_checks() -> None:
    rng = np.random.default_rng(3)
    flair = rng.normal(100, 20, (20, 20, 20)).astype(np.float32)
    t1 = rng.normal(100, 20, (20, 20, 20)).astype(np.float32)
    labels = rng.integers(0, 4, (20, 20, 20)).astype(np.float32)
    names = ["flair (a)", "t1 (b)", "t2 (c)"]
    errors, notes = mixup_problems(np.stack([flair, t1, flair * 0.5 + 3]), names)
    assert errors == [] and len(notes) == 1 and "flair (a) and t2 (c) look like the same contrast" in notes[0]
    errors, notes = mixup_problems(np.stack([flair, labels, t1]), names)
    assert errors == [] and notes == ["t1 (b) looks like a label map (only the values 0, 1, 2, 3), not an image"]
    with pytest.raises(InputError, match="flair \\(a\\) and t2 \\(c\\) hold identical voxels"):
        check_mixups(np.stack([flair, t1, flair.copy()]), names)
    assert mixup_problems(np.stack([flair, t1, labels * 0]), names) == ([], [])  # empty: refused elsewhere


def test_segment_warns_about_a_label_map_given_as_an_image(
    tiny_checkpoint: Path, phantom_files: dict[str, Path], tmp_path: Path, capfd
) -> None:
    images = [str(phantom_files[m]) for m in BRATS.modalities]
    images[1] = str(phantom_files["seg"])  # the label map given as T1
    args = ["segment", "--model", str(tiny_checkpoint), "-i", *images, "-o", str(tmp_path / "o.nii.gz")]
    assert main([*args, "--device", "cpu", "--progress", "none"]) == 0
    warnings = [line for line in capfd.readouterr().err.splitlines() if line.startswith("cldl: warning:")]
    assert len(warnings) == 1 and "looks like a label map (only the values 0, 1, 2, 4)" in warnings[0]


def test_segment_failure_while_writing_keeps_every_existing_output(
    tiny_checkpoint: Path, phantom_files: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd
) -> None:
    """The uncertainty map (the second output) hits a full disk: the label map is not replaced either."""
    out = tmp_path / "out"
    out.mkdir()
    for name in ("seg.nii.gz", "unc.nii.gz"):
        (out / name).write_bytes(b"previous result")
    real = nib.save

    def save(image, path, *args, **kwargs) -> None:
        (_raising_partial_writer(real) if Path(path).name == "unc.nii.gz" else real)(image, path, *args, **kwargs)

    monkeypatch.setattr(nib, "save", save)
    images = [str(phantom_files[m]) for m in BRATS.modalities]
    args = ["segment", "--model", str(tiny_checkpoint), "-i", *images, "-o", str(out / "seg.nii.gz")]
    args += ["--uncertainty", str(out / "unc.nii.gz"), "--overwrite", "--device", "cpu", "--progress", "none"]
    assert main(args) == 1
    err = capfd.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(f"cldl: error: {out / 'unc.nii.gz'}: not written (No space left")
    assert sorted(p.name for p in out.iterdir()) == ["seg.nii.gz", "unc.nii.gz"]
    assert all((out / name).read_bytes() == b"previous result" for name in ("seg.nii.gz", "unc.nii.gz"))


def test_payload_problem_of_written_files(tmp_path: Path) -> None:
    for suffix in (".nii.gz", ".nii", ".nrrd", ".mha"):
        path = write_image(_noise(), GEOMETRY, tmp_path / f"w{suffix}")
        assert payload_problem(path) is None
        shutil.copy(path, tmp_path / f"c{suffix}")
        assert "truncated" in payload_problem(_cut(tmp_path / f"c{suffix}", 0.5))


def test_a_demo_that_fails_while_writing_keeps_the_previous_results(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cldl.commands.demo import run_demo

    out = tmp_path / "demo"
    out.mkdir()
    (out / "segmentation.nii.gz").write_bytes(b"previous result")
    real = nib.save

    def save(image, path, *args, **kwargs) -> None:
        (_raising_partial_writer(real) if Path(path).name == "probabilities.nii.gz" else real)(
            image, path, *args, **kwargs
        )

    monkeypatch.setattr(nib, "save", save)
    with pytest.raises(OSError, match="probabilities.nii.gz: not written"):
        run_demo(out, device="cpu")
    assert sorted(p.name for p in out.iterdir()) == ["inputs", "segmentation.nii.gz"]
    assert (out / "segmentation.nii.gz").read_bytes() == b"previous result"
