"""Dataset layouts as distributed (real file formats, phantom contents): detection, label-value mappings, case lists,
``cldl datasets check`` reporting every problem, and the preprocessed-case cache.

The ``build_*`` functions are shared with test_datasets_e2e.py.
"""

from __future__ import annotations

import csv
import json
import os
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from cldl.commands.main import main
from cldl.data.cache import PreprocessCache, case_key, open_cache
from cldl.data.cases import load_case, map_label_values, read_case
from cldl.data.check import check_dataset
from cldl.data.discovery import detect_dataset, discover_cases
from cldl.data.layouts import CaseFiles
from cldl.data.phantoms import brats_phantom, mmwhs_phantom
from cldl.data.preprocess import InputError, PreprocessConfig
from cldl.files.geometry import Geometry, affine_ras
from cldl.files.images import write_image
from cldl.tasks import BRATS, MMWHS_CT, MMWHS_MR, get_task

SHAPE = (20, 20, 20)
MSD_FROM_BRATS = {0: 0, 1: 2, 2: 1, 4: 3}  # BraTS NCR 1 / ED 2 / ET 4 -> MSD 2 / 1 / 3
MSD_DATASET_JSON = {
    "name": "BRATS",
    "description": "Gliomas segmentation tumour and oedema in on brain images",
    "tensorImageSize": "4D",
    "modality": {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"},
    "labels": {"0": "background", "1": "edema", "2": "non-enhancing tumor", "3": "enhancing tumour"},
}


def _brats_files(case, folder: Path, case_id: str, names: dict[str, str], sep: str = "_", seg: str | None = "seg"):
    """Write a BraTS phantom as one file per modality, named ``<case_id><sep><name>.nii.gz``."""
    folder.mkdir(parents=True, exist_ok=True)
    for modality, image in zip(BRATS.modalities, case.images):
        write_image(image, case.geometry, folder / f"{case_id}{sep}{names.get(modality, modality)}.nii.gz")
    if seg is not None:
        write_image(case.labels, case.geometry, folder / f"{case_id}{sep}{seg}.nii.gz")


def build_brats2018(root: Path, n: int = 3, shape=SHAPE) -> list[str]:
    """``{HGG,LGG}/Brats18_<inst>_<n>_1/Brats18_..._{flair,t1,t1ce,t2,seg}.nii.gz``."""
    ids = []
    for i in range(n):
        grade = "HGG" if i % 3 != 2 else "LGG"
        case_id = f"Brats18_TCIA0{i}_{100 + i}_1"
        _brats_files(brats_phantom(i, shape=shape), root / grade / case_id, case_id, {})
        ids.append(case_id)
    return ids


def build_brats2020(root: Path, n: int = 3, shape=SHAPE) -> list[str]:
    """Flat BraTS 2020 training folder, including case 355's oddly named label and the CSV side files."""
    ids = []
    for i in range(n):
        case_id = f"BraTS20_Training_{353 + i:03d}"
        folder = root / case_id
        case = brats_phantom(10 + i, shape=shape)
        if case_id == "BraTS20_Training_355":
            _brats_files(case, folder, case_id, {}, seg=None)
            write_image(case.labels, case.geometry, folder / "W39_1998.09.19_Segm.nii")
        else:
            _brats_files(case, folder, case_id, {})
        ids.append(case_id)
    (root / "name_mapping.csv").write_text("Grade,BraTS_2020_subject_ID\nHGG,BraTS20_Training_353\n")
    (root / "survival_info.csv").write_text("Brats20ID,Age\nBraTS20_Training_353,60\n")
    return ids


def build_brats2021(root: Path, n: int = 2, shape=SHAPE) -> list[str]:
    ids = []
    for i in range(n):
        case_id = f"BraTS2021_{i:05d}"
        _brats_files(brats_phantom(20 + i, shape=shape), root / case_id, case_id, {})
        ids.append(case_id)
    return ids


def build_brats2023(root: Path, n: int = 2, shape=SHAPE) -> list[tuple[str, np.ndarray]]:
    """BraTS 2023 names (t2f, t1n, t1c, t2w, seg with ET = 3)."""
    names = {"flair": "t2f", "t1": "t1n", "t1ce": "t1c", "t2": "t2w"}
    out = []
    for i in range(n):
        case_id = f"BraTS-GLI-{i:05d}-000"
        case = brats_phantom(30 + i, shape=shape)
        original = case.labels.copy()
        case.labels[case.labels == 4] = 3
        _brats_files(case, root / case_id, case_id, names, sep="-")
        out.append((case_id, original))
    return out


def build_brats_validation(root: Path, n: int = 2, shape=SHAPE) -> list[str]:
    ids = []
    for i in range(n):
        case_id = f"BraTS20_Validation_{i + 1:03d}"
        _brats_files(brats_phantom(40 + i, shape=shape), root / case_id, case_id, {}, seg=None)
        ids.append(case_id)
    return ids


def _nifti(array_zyx_or_czyx: np.ndarray, geometry: Geometry, path: Path) -> None:
    """Write like the MSD/nnU-Net tools do (nibabel, RAS affine; 4D as x, y, z, channel)."""
    data = array_zyx_or_czyx
    data = data.transpose(2, 1, 0) if data.ndim == 3 else data.transpose(3, 2, 1, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.ascontiguousarray(data), affine_ras(geometry)), str(path))


def build_msd(root: Path, n: int = 3, shape=SHAPE, tests: int = 1) -> dict[str, np.ndarray]:
    """Task01_BrainTumour: 4D imagesTr (FLAIR, T1w, t1gd, T2w), labelsTr in MSD values, dataset.json, imagesTs and
    the macOS ``._`` files of the original tarball. Returns the BraTS-valued labels by case id."""
    expected = {}
    training = []
    for i in range(n + tests):
        case_id = f"BRATS_{i + 1:03d}"
        case = brats_phantom(50 + i, shape=shape)
        split = "imagesTr" if i < n else "imagesTs"
        _nifti(case.images, case.geometry, root / split / f"{case_id}.nii.gz")
        (root / split / f"._{case_id}.nii.gz").write_bytes(b"\x00\x05\x16\x07 macOS resource fork")
        if i < n:
            msd = map_label_values(case.labels, MSD_FROM_BRATS.items())
            _nifti(msd.astype(np.uint8), case.geometry, root / "labelsTr" / f"{case_id}.nii.gz")
            expected[case_id] = case.labels
            training.append({"image": f"./imagesTr/{case_id}.nii.gz", "label": f"./labelsTr/{case_id}.nii.gz"})
    data = dict(MSD_DATASET_JSON, numTraining=n, numTest=tests, training=training)
    data["test"] = [f"./imagesTs/BRATS_{n + j + 1:03d}.nii.gz" for j in range(tests)]
    (root / "dataset.json").write_text(json.dumps(data, indent=4))
    return expected


def build_mmwhs(root: Path, n: int = 3, shape=SHAPE, modality: str = "ct", stray: bool = True) -> list[str]:
    """``ct_train_1001_image.nii.gz`` / ``_label``; the first label holds a few 421 voxels."""
    ids = []
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        case_id = f"{modality}_train_{1001 + i}"
        case = mmwhs_phantom(60 + i, shape=shape)
        labels = case.labels.copy()
        if stray and i == 0:
            for z, y, x in np.argwhere(labels == 420)[:2]:
                labels[z, y, x] = 421
        write_image(case.images[0].astype(np.int16), case.geometry, root / f"{case_id}_image.nii.gz")
        write_image(labels, case.geometry, root / f"{case_id}_label.nii.gz")
        ids.append(case_id)
    return ids


def build_nnunet(root: Path, n: int = 3, shape=SHAPE) -> dict[str, np.ndarray]:
    """nnU-Net v2 raw (converted from MSD Task01: labels 1 edema, 2 non-enhancing, 3 enhancing)."""
    expected = {}
    for i in range(n):
        case_id = f"BRATS_{i + 1:03d}"
        case = brats_phantom(70 + i, shape=shape)
        for c in range(4):
            _nifti(case.images[c], case.geometry, root / "imagesTr" / f"{case_id}_{c:04d}.nii.gz")
        msd = map_label_values(case.labels, MSD_FROM_BRATS.items()).astype(np.uint8)
        _nifti(msd, case.geometry, root / "labelsTr" / f"{case_id}.nii.gz")
        expected[case_id] = case.labels
    dataset = {
        "channel_names": {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"},
        "labels": {"background": 0, "edema": 1, "non-enhancing tumor": 2, "enhancing tumour": 3},
        "numTraining": n,
        "file_ending": ".nii.gz",
        "name": "Dataset001_BrainTumour",
    }
    (root / "dataset.json").write_text(json.dumps(dataset, indent=4))
    return expected


def build_case_list(root: Path, n: int = 3, shape=SHAPE, kind: str = "csv") -> list[str]:
    """Files anywhere, in mixed formats (NRRD, MHA, NIfTI), listed in ``cases.csv`` or ``cases.json``."""
    rows, ids = [], []
    for i in range(n):
        case_id = f"patient{i:02d}"
        case = brats_phantom(80 + i, shape=shape)
        row = {"case_id": case_id}
        for modality, image, suffix in zip(BRATS.modalities, case.images, (".nrrd", ".mha", ".nii.gz", ".nrrd")):
            path = Path("scans") / case_id / f"{modality.upper()}{suffix}"
            write_image(image, case.geometry, root / path)
            row[modality] = str(path)
        write_image(case.labels, case.geometry, root / "labels" / f"{case_id}.nii.gz")
        row["label"] = f"labels/{case_id}.nii.gz"
        rows.append(row)
        ids.append(case_id)
    if kind == "csv":
        with (root / "cases.csv").open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    else:
        cases = [
            {"case_id": r["case_id"], "images": {m: r[m] for m in BRATS.modalities}, "label": r["label"]} for r in rows
        ]
        (root / "cases.json").write_text(json.dumps({"cases": cases}, indent=2))
    return ids


# -- detection ---------------------------------------------------------------------------------------------------


def test_brats_2018_hgg_lgg(tmp_path: Path) -> None:
    ids = build_brats2018(tmp_path)
    dataset = detect_dataset(tmp_path)
    assert dataset.layout == "brats" and dataset.task is BRATS and "2018-2020" in dataset.description
    assert [c.case_id for c in dataset.cases] == sorted(ids)
    assert all(c.label is not None and len(c.images) == 4 for c in dataset.cases)
    assert [p.name.split("_")[-1] for p in dataset.cases[0].images] == [
        "flair.nii.gz",
        "t1.nii.gz",
        "t1ce.nii.gz",
        "t2.nii.gz",
    ]


def test_brats_2020_flat_with_the_odd_case_355(tmp_path: Path) -> None:
    build_brats2020(tmp_path)
    dataset = detect_dataset(tmp_path, BRATS)
    case = {c.case_id: c for c in dataset.cases}["BraTS20_Training_355"]
    assert case.label is not None and case.label.name == "W39_1998.09.19_Segm.nii"
    assert any("W39_1998.09.19_Segm.nii" in note for note in dataset.notes)
    assert not dataset.problems


def test_brats_2021(tmp_path: Path) -> None:
    build_brats2021(tmp_path)
    dataset = detect_dataset(tmp_path)
    assert "2021+" in dataset.description and len(dataset.labelled) == 2


def test_brats_2023_names_and_label_3_read_as_4(tmp_path: Path) -> None:
    cases = build_brats2023(tmp_path)
    dataset = detect_dataset(tmp_path)
    assert "2023" in dataset.description and dataset.cases[0].label_map == ((3, 4),)
    for (case_id, original), case in zip(cases, dataset.cases):
        assert case.case_id == case_id
        _, _, labels, _ = read_case(case, BRATS)
        np.testing.assert_array_equal(labels, original)


def test_validation_folder_without_labels(tmp_path: Path) -> None:
    build_brats_validation(tmp_path)
    dataset = detect_dataset(tmp_path)
    assert len(dataset.cases) == 2 and not dataset.labelled and "no label maps" in dataset.description
    report = check_dataset(dataset)
    assert report.ok and any("not trained on" in w for w in report.warnings)


def test_msd_task01_channels_and_label_meaning(tmp_path: Path) -> None:
    expected = build_msd(tmp_path)
    dataset = detect_dataset(tmp_path)  # BraTS inferred from dataset.json
    assert dataset.layout == "msd" and dataset.task is BRATS
    assert len(dataset.cases) == 4 and len(dataset.labelled) == 3  # imagesTs has no labels; ._ files skipped
    case = dataset.labelled[0]
    assert case.channels == (0, 1, 2, 3)
    assert dict(case.label_map) == {1: 2, 2: 1, 3: 4}
    assert any("edema" in note and "-> 2" in note for note in dataset.notes)
    images, _, labels, _ = read_case(case, BRATS)
    np.testing.assert_array_equal(labels, expected[case.case_id])  # edema 1 -> 2, non-enhancing 2 -> 1, 3 -> 4
    assert images.shape == (4, *SHAPE)
    # with the MSD task itself (labels as distributed) nothing is remapped
    own = detect_dataset(tmp_path, get_task(tmp_path / "dataset.json"))
    assert own.task.label_values == (0, 1, 2, 3) and own.labelled[0].label_map == ()


def test_msd_channel_order_follows_dataset_json(tmp_path: Path) -> None:
    build_msd(tmp_path, n=1, tests=0)
    data = json.loads((tmp_path / "dataset.json").read_text())
    data["modality"] = {"0": "T2w", "1": "t1gd", "2": "FLAIR", "3": "T1w"}
    (tmp_path / "dataset.json").write_text(json.dumps(data))
    case = detect_dataset(tmp_path, BRATS).cases[0]
    assert case.channels == (2, 3, 1, 0)  # flair, t1, t1ce, t2


def test_mmwhs_ct_and_mr_with_stray_421(tmp_path: Path) -> None:
    build_mmwhs(tmp_path / "ct_train")
    build_mmwhs(tmp_path / "mr_train", n=2, modality="mr", stray=False)
    with pytest.raises(InputError, match="pass --task mmwhs_ct or mmwhs_mr"):
        detect_dataset(tmp_path)
    ct = detect_dataset(tmp_path, MMWHS_CT)
    assert ct.layout == "mmwhs" and [c.case_id for c in ct.cases] == ["ct_train_1001", "ct_train_1002", "ct_train_1003"]
    assert any("skipped" in n for n in ct.notes)
    mr = detect_dataset(tmp_path / "mr_train")
    assert mr.task is MMWHS_MR and len(mr.cases) == 2
    with pytest.warns(UserWarning, match="label value 421 \\(2 voxels\\) read as 420"):
        _, _, labels, notes = read_case(ct.cases[0], MMWHS_CT)
    original = mmwhs_phantom(60, shape=SHAPE).labels
    np.testing.assert_array_equal(labels, original)  # the stray voxels are LA again
    report = check_dataset(ct)
    assert report.ok and report.label_values[421] == 1
    assert any("421 (2 voxels) read as 420" in w for w in report.warnings)


def test_nnunet_raw_with_label_names(tmp_path: Path) -> None:
    expected = build_nnunet(tmp_path)
    dataset = detect_dataset(tmp_path, BRATS)
    assert dataset.layout == "nnunet" and [c.case_id for c in dataset.cases] == sorted(expected)
    assert [p.name for p in dataset.cases[0].images] == [f"BRATS_001_{i:04d}.nii.gz" for i in range(4)]
    _, _, labels, _ = read_case(dataset.cases[0], BRATS)
    np.testing.assert_array_equal(labels, expected["BRATS_001"])
    own = detect_dataset(tmp_path)  # without a task: the dataset.json's own
    assert own.task.name == "Dataset001_BrainTumour" and own.task.num_classes == 4


@pytest.mark.parametrize("kind", ["csv", "json"])
def test_case_lists(tmp_path: Path, kind: str) -> None:
    ids = build_case_list(tmp_path, kind=kind)
    dataset = detect_dataset(tmp_path)
    assert dataset.layout == "list" and [c.case_id for c in dataset.cases] == ids
    images, _, labels, _ = read_case(dataset.cases[1], BRATS)
    assert images.shape == (4, *SHAPE) and labels is not None
    # the list file itself can be given, with paths relative to it
    again = detect_dataset(tmp_path / f"cases.{kind}")
    assert [c.case_id for c in again.cases] == ids


def test_nothing_recognised_gives_a_clear_message(tmp_path: Path) -> None:
    write_image(np.ones(SHAPE, np.float32), Geometry.identity(SHAPE), tmp_path / "scan.nii.gz")
    (tmp_path / "readme.txt").write_text("hello")
    with pytest.raises(InputError, match="no known dataset layout .*1 image files, e.g. scan.nii.gz.*BraTS") as info:
        detect_dataset(tmp_path)
    assert "\n" not in str(info.value)
    with pytest.raises(InputError, match="no such file"):
        detect_dataset(tmp_path / "missing")


def test_incomplete_case_stops_training_discovery_with_the_full_count(tmp_path: Path) -> None:
    build_brats2018(tmp_path, n=3)
    for path in tmp_path.rglob("*_t1ce.nii.gz"):
        path.unlink()
        break
    with pytest.raises(InputError, match="missing modality t1ce .*cldl datasets check"):
        discover_cases(tmp_path, BRATS)


# -- check: every problem in one run -------------------------------------------------------------------------------


def _break_dataset(root: Path) -> None:
    """Seven cases: five with a different problem each, one with a warning (overlapping grids), one fine."""
    ids = build_brats2021(root, n=7)
    a, b, c, d, e, f, _ = (root / i / i for i in ids)
    Path(f"{a}_t1ce.nii.gz").unlink()  # missing modality
    t2 = sitk.ReadImage(f"{b}_t2.nii.gz")
    t2.SetOrigin((500.0, 0.0, 0.0))  # does not overlap
    sitk.WriteImage(t2, f"{b}_t2.nii.gz")
    seg = sitk.ReadImage(f"{c}_seg.nii.gz")
    array = sitk.GetArrayFromImage(seg)
    array[array == 4] = 3  # a label outside the task
    out = sitk.GetImageFromArray(array)
    out.CopyInformation(seg)
    sitk.WriteImage(out, f"{c}_seg.nii.gz")
    Path(f"{d}_flair.nii.gz").write_text("not an image")  # unreadable
    t1 = sitk.ReadImage(f"{e}_t1.nii.gz")
    sitk.WriteImage(t1 * 0, f"{e}_t1.nii.gz")  # all zero
    t1 = sitk.ReadImage(f"{f}_t1.nii.gz")
    t1.SetOrigin((2.0, 0.0, 0.0))  # overlaps: a warning, resampled
    sitk.WriteImage(t1, f"{f}_t1.nii.gz")


def test_check_reports_every_problem(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _break_dataset(tmp_path)
    report = check_dataset(detect_dataset(tmp_path))
    text = "\n".join(report.problems)
    assert "BraTS2021_00000: missing modality t1ce" in text
    assert "BraTS2021_00001: t2 (BraTS2021_00001_t2.nii.gz) does not overlap flair" in text
    assert "BraTS2021_00002: label values [3] are not part of task 'brats'" in text
    assert "BraTS2021_00003" in text and "not a readable image" in text
    assert "BraTS2021_00004: modality 't1 (BraTS2021_00004_t1.nii.gz)' is an empty (all-zero) image" in text
    assert len(report.problems) == 5
    assert any("BraTS2021_00005" in w and "will be resampled" in w for w in report.warnings)
    assert report.label_values[3] == 1
    # the command: the same report, status 1, and a JSON form
    assert main(["datasets", "check", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "layout: brats" in out and "cases: 6" in out and "5 problem(s) found" in out
    assert out.count("problem: ") == 5
    assert main(["datasets", "check", str(tmp_path), "--json"]) == 1
    data = json.loads(capsys.readouterr().out)
    assert data["ok"] is False and len(data["problems"]) == 5 and data["label_values"]["3"] == 1


def test_check_command_on_a_good_dataset_and_jsonl(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    build_msd(tmp_path)
    assert main(["datasets", "check", str(tmp_path), "--task", "brats"]) == 0
    out = capsys.readouterr().out
    for expected in (
        "layout: msd",
        "cases: 4 (3 with a label map, 1 without)",
        "label values found: 0 (3 cases), 1 (3 cases), 2 (3 cases), 3 (3 cases)",
        "channels FLAIR -> flair, T1w -> t1, t1gd -> t1ce, T2w -> t2",
        "OK: no problems found",
    ):
        assert expected in out
    assert main(["datasets", "check", str(tmp_path), "--progress", "jsonl"]) == 0
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert events[-1]["event"] == "result" and events[-1]["ok"] is True
    assert any(e["event"] == "log" and e["message"].startswith("layout: msd") for e in events)
    assert main(["datasets", "check", str(tmp_path), "--quick", "--json"]) == 0
    quick = json.loads(capsys.readouterr().out)
    assert (quick["layout"], quick["cases"], quick["labelled"], quick["label_values"]) == ("msd", 4, 3, {})
    assert main(["datasets", "check", str(tmp_path / "nope")]) == 1
    assert "no such file" in capsys.readouterr().err


def test_label_mapping_swaps_in_one_pass() -> None:
    labels = np.array([[[0, 1, 2, 3]]], np.uint8)
    np.testing.assert_array_equal(map_label_values(labels, {1: 2, 2: 1, 3: 4}.items()), [[[0, 2, 1, 4]]])
    np.testing.assert_array_equal(map_label_values(labels, ()), labels)


# -- cache ---------------------------------------------------------------------------------------------------------


def test_cache_hits_memory_maps_and_invalidates(tmp_path: Path) -> None:
    build_brats2021(tmp_path / "data", n=1)
    case = detect_dataset(tmp_path / "data").cases[0]
    config = PreprocessConfig()
    cache = PreprocessCache(tmp_path / "cache")
    first = cache.load(case, BRATS, config)
    second = cache.load(case, BRATS, config)
    assert (cache.misses, cache.hits) == (1, 1)
    assert isinstance(second.images, np.memmap) and isinstance(second.labels, np.memmap)
    direct = load_case(case, BRATS, config)
    np.testing.assert_array_equal(second.images, direct.images)
    np.testing.assert_array_equal(second.labels, direct.labels)
    assert second.bbox == direct.bbox and second.input_shape == direct.input_shape
    assert first.grid == direct.grid
    key = case_key(case, BRATS, config)
    assert case_key(case, BRATS, PreprocessConfig(target_spacing=(2.0, 2.0, 2.0))) != key
    # a changed file (new modification time) is a new entry
    later = time.time() + 5
    os.utime(case.images[0], (later, later))
    assert case_key(case, BRATS, config) != key
    cache.load(case, BRATS, config)
    assert cache.misses == 2
    # a damaged entry is rebuilt
    entry = cache.entry(case_key(case, BRATS, config))
    (entry / "images.npy").write_bytes(b"broken")
    cache.load(case, BRATS, config)
    assert cache.misses == 3
    assert open_cache(None) is None and open_cache("none") is None
    assert open_cache(str(tmp_path / "c")).folder == tmp_path / "c"


def test_case_files_in_lists_must_exist(tmp_path: Path) -> None:
    (tmp_path / "cases.csv").write_text("case_id,flair,t1,t1ce,t2,label\nx,a.nii.gz,b.nii.gz,c.nii.gz,d.nii.gz,\n")
    dataset = detect_dataset(tmp_path)
    assert len(dataset.problems) == 4 and "a.nii.gz does not exist" in dataset.problems[0]
    with pytest.raises(InputError, match="does not exist .*and 3 more"):
        discover_cases(tmp_path, BRATS)
    assert CaseFiles("x", (), None).files == ()
