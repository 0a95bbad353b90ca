"""Tests of the procedural BraTS-like and MM-WHS-like phantoms (cldl.data.phantoms)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cldl.data.phantoms import PhantomCase, brats_phantom, make_phantom, mmwhs_phantom, write_case
from cldl.files.images import read_image
from cldl.tasks import BRATS, MMWHS_CT

SMALL = (48, 56, 64)


@pytest.fixture(scope="module")
def brats96() -> PhantomCase:
    return brats_phantom(7, (96, 96, 96))


@pytest.fixture(scope="module")
def mmwhs96() -> PhantomCase:
    return mmwhs_phantom(7, (96, 96, 96))


def _same(a: PhantomCase, b: PhantomCase) -> bool:
    return (
        a.case_id == b.case_id
        and np.array_equal(a.images, b.images)
        and np.array_equal(a.labels, b.labels)
        and np.array_equal(a.fractions, b.fractions)
        and a.geometry == b.geometry
    )


def _tumour_box(labels: np.ndarray, margin: int = 3) -> tuple[slice, ...]:
    idx = np.argwhere(labels > 0)
    lo = np.maximum(idx.min(0) - margin, 0)
    hi = np.minimum(idx.max(0) + margin + 1, labels.shape)
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))


# ------------------------------------------------------------------------------------------------ determinism


@pytest.mark.parametrize("make", [brats_phantom, mmwhs_phantom])
def test_same_seed_is_bit_identical_and_seeds_differ(make) -> None:
    a, b, c = make(3, SMALL), make(3, SMALL), make(4, SMALL)
    assert _same(a, b)
    assert not np.array_equal(a.images, c.images)
    assert not np.array_equal(a.labels, c.labels)


def _digest(case: PhantomCase) -> str:
    return hashlib.sha1(case.images.tobytes() + case.labels.tobytes() + case.fractions.tobytes()).hexdigest()


def test_bit_identical_in_a_fresh_single_threaded_process() -> None:
    """No BLAS (whose results can depend on the thread count) and no global random state may leak in."""
    code = (
        "import hashlib; from cldl.data.phantoms import brats_phantom, mmwhs_phantom\n"
        "for make in (brats_phantom, mmwhs_phantom):\n"
        "    c = make(5, (40, 52, 44), (1.2, 1.0, 1.1))\n"
        "    print(hashlib.sha1(c.images.tobytes() + c.labels.tobytes() + c.fractions.tobytes()).hexdigest())\n"
    )
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(root), env.get("PYTHONPATH", "")])
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=root, capture_output=True, text=True, check=True)
    here = [_digest(make(5, (40, 52, 44), (1.2, 1.0, 1.1))) for make in (brats_phantom, mmwhs_phantom)]
    assert out.stdout.split() == here


def test_case_ids_and_dispatch() -> None:
    assert brats_phantom(12, SMALL).case_id == "phantom_brats_00012"
    assert mmwhs_phantom(12, SMALL).case_id == "phantom_mmwhs_00012"
    assert _same(make_phantom("mmwhs", 2, SMALL), mmwhs_phantom(2, SMALL))
    assert _same(make_phantom("brats", 2, SMALL), brats_phantom(2, SMALL))
    with pytest.raises(ValueError):
        make_phantom("nope", 1)


@pytest.mark.parametrize("bad", [{"seed": -1}, {"seed": 1.5}, {"shape": (4, 64, 64)}, {"spacing": (0, 1, 1)}])
def test_invalid_arguments(bad) -> None:
    kwargs = {"seed": 1, "shape": SMALL, "spacing": (1.0, 1.0, 1.0)} | bad
    with pytest.raises(ValueError):
        brats_phantom(**kwargs)


# ------------------------------------------------------------------------------------------------ BraTS


def test_brats_shapes_dtypes_geometry(brats96: PhantomCase) -> None:
    case = brats96
    assert case.modalities == BRATS.modalities == ("flair", "t1", "t1ce", "t2")
    assert case.images.shape == (4, 96, 96, 96) and case.images.dtype == np.float32
    assert case.labels.shape == (96, 96, 96) and case.labels.dtype == np.uint8
    assert case.fractions.shape == (4, 96, 96, 96) and case.fractions.dtype == np.float32
    assert case.geometry.shape == (96, 96, 96) and case.geometry.spacing == (1.0, 1.0, 1.0)
    assert np.allclose(case.geometry.origin, -47.5)  # volume centred on the origin
    assert np.isfinite(case.images).all()
    assert 0 <= case.images.min() and case.images.max() < 3000


@pytest.mark.parametrize(
    "seed,shape",
    [(0, (64,) * 3), (1, (64,) * 3), (2, (64,) * 3), (3, (64,) * 3), (4, (80,) * 3), (5, (96,) * 3), (6, (128,) * 3)],
)
def test_brats_labels_and_tumour_size(seed: int, shape) -> None:
    case = brats_phantom(seed, shape)
    assert set(np.unique(case.labels).tolist()) == {0, 1, 2, 4}
    for value in (1, 2, 4):
        assert (case.labels == value).sum() >= 10, f"class {value} missing or tiny"
    head = case.images[0] != 0
    wt = case.labels > 0
    assert not (wt & ~head).any()
    fraction = wt.sum() / head.sum()
    assert 0.01 <= fraction <= 0.05, fraction
    assert 0.15 < head.mean() < 0.6


def test_brats_background_exactly_zero_outside_head(brats96: PhantomCase) -> None:
    images = brats96.images
    zero = images == 0
    head = ~zero[0]
    for ch in range(4):
        assert np.array_equal(zero[ch], ~head), brats96.modalities[ch]
        assert (images[ch][head] > 0).all()
    assert not head[0].any() and not head[-1].any() and not head[:, 0].any() and not head[:, :, -1].any()
    # the head is one blob around the centre, not scattered voxels
    z, y, x = (s // 2 for s in head.shape)
    assert head[z - 5 : z + 5, y - 5 : y + 5, x - 5 : x + 5].all()


def test_brats_fractions_are_a_distribution_whose_argmax_is_the_labels(brats96: PhantomCase) -> None:
    fr = brats96.fractions
    assert fr.min() >= -1e-5 and fr.max() <= 1 + 1e-5
    assert np.allclose(fr.sum(0), 1.0, atol=1e-4)
    assert np.array_equal(BRATS.classes_to_labels(np.argmax(fr, 0)), brats96.labels)


def test_brats_region_label_distributions_are_mixed(brats96: PhantomCase) -> None:
    classes = BRATS.labels_to_classes(brats96.labels)
    box = _tumour_box(brats96.labels)
    crop = classes[box]
    crop = crop[tuple(slice(0, (n // 2) * 2) for n in crop.shape)]
    onehot = np.eye(4, dtype=np.float32)[crop]  # (z, y, x, 4)
    z, y, x = (n // 2 for n in crop.shape)
    pooled = onehot.reshape(z, 2, y, 2, x, 2, 4).mean(axis=(1, 3, 5))  # average pooling, r = 2
    n_classes = (pooled > 0).sum(-1)
    tumour_cells = pooled[..., 1:].sum(-1) > 0
    mixed = (n_classes[tumour_cells] >= 2).mean()
    assert 0.2 < mixed < 0.95, mixed
    # the soft fractions are genuinely soft around the tumour
    fr = brats96.fractions[(slice(None),) + box]
    assert 0.05 < (fr.max(0) < 0.9).mean() < 0.6


def test_brats_partial_volume_intensities_at_tumour_boundary(brats96: PhantomCase) -> None:
    flair = brats96.images[0]
    fr = brats96.fractions
    box = _tumour_box(brats96.labels, margin=4)
    wt = (1 - fr[0])[box]
    ed = fr[2][box]
    f = flair[box]
    head = f > 0
    healthy = f[(wt < 0.01) & head].mean()
    oedema = f[ed > 0.99].mean()
    boundary = f[(wt > 0.3) & (wt < 0.7)]
    assert oedema > healthy + 100
    assert boundary.size > 50
    assert healthy + 0.2 * (oedema - healthy) < boundary.mean() < oedema - 0.2 * (oedema - healthy)
    # intermediate values also seen by labels alone: edema voxels touching background are darker than deep ones
    lab = brats96.labels[box]
    edge = np.zeros_like(head)
    for axis in range(3):
        for shift in (1, -1):
            edge |= np.roll(lab, shift, axis) == 0
    ed_lab = lab == 2
    assert f[ed_lab & edge].mean() < f[ed_lab & ~edge].mean()


def test_brats_modality_contrasts(brats96: PhantomCase) -> None:
    flair, t1, t1ce, t2 = brats96.images
    lab = brats96.labels
    head = flair > 0
    brain = head & (lab == 0)
    ncr, ed, et = lab == 1, lab == 2, lab == 4

    def mean(img, mask):
        return float(img[mask].mean())

    assert mean(flair, ed) > 1.3 * mean(flair, brain)  # FLAIR: oedema bright
    assert mean(t1ce, et) > 1.4 * mean(t1ce, ncr) and mean(t1ce, et) > 1.2 * mean(t1ce, brain)  # enhancing rim
    assert mean(t1, ncr) < mean(t1, brain) and mean(t1, ed) < mean(t1, brain)  # T1: tumour dark-ish
    assert mean(t2, ed) > mean(t2, brain) and mean(t2, ncr) > mean(t2, brain)  # T2: oedema, necrosis bright
    # CSF: the darkest FLAIR voxels of the inner brain (away from the partial-volume brain edge) are bright in T2
    # and dark in T1
    inner = head.copy()
    for axis in range(3):
        for shift in (-3, 3):
            inner &= np.roll(head, shift, axis)
    inner &= lab == 0
    dark = inner & (flair < np.percentile(flair[inner], 3))
    assert mean(t2, dark) > 1.2 * mean(t2, brain)
    assert mean(t1, dark) < 0.7 * mean(t1, brain)
    # every channel has a usable dynamic range inside the head (z-score over non-zero voxels works)
    for img in (flair, t1, t1ce, t2):
        assert img[head].std() > 0.1 * img[head].mean()


def test_brats_anisotropic_non_cubic() -> None:
    shape, spacing = (40, 72, 64), (2.5, 1.0, 1.2)
    case = brats_phantom(5, shape, spacing)
    assert case.images.shape == (4,) + shape and case.labels.shape == shape
    assert case.geometry.spacing == (1.2, 1.0, 2.5) and case.geometry.shape == shape
    assert set(np.unique(case.labels).tolist()) == {0, 1, 2, 4}
    head = case.images[0] != 0
    assert 0.01 <= (case.labels > 0).sum() / head.sum() <= 0.05


# ------------------------------------------------------------------------------------------------ MM-WHS


def test_mmwhs_shapes_dtypes_labels(mmwhs96: PhantomCase) -> None:
    case = mmwhs96
    assert case.modalities == MMWHS_CT.modalities == ("ct",)
    assert case.images.shape == (1, 96, 96, 96) and case.images.dtype == np.float32
    assert case.labels.shape == (96, 96, 96) and case.labels.dtype == np.int16
    assert set(np.unique(case.labels).tolist()) == set(MMWHS_CT.label_values)
    fr = case.fractions
    assert fr.shape == (8, 96, 96, 96) and np.allclose(fr.sum(0), 1.0, atol=1e-4) and fr.min() >= -1e-5
    assert np.array_equal(MMWHS_CT.classes_to_labels(np.argmax(fr, 0)), case.labels)


@pytest.mark.parametrize("seed,shape", [(0, (64, 64, 64)), (1, (64, 64, 64)), (2, (48, 80, 72)), (3, (96, 96, 96))])
def test_mmwhs_all_structures_present(seed: int, shape) -> None:
    labels = mmwhs_phantom(seed, shape).labels
    for value in MMWHS_CT.label_values[1:]:
        assert (labels == value).sum() >= 50, value


def test_mmwhs_hounsfield_ranges(mmwhs96: PhantomCase) -> None:
    hu = mmwhs96.images[0]
    lab = mmwhs96.labels
    assert -1024 <= hu.min() and hu.max() <= 3071
    corners = np.concatenate([hu[:, :4, :4].ravel(), hu[:, -4:, -4:].ravel()])
    assert abs(float(np.median(corners)) + 1000) < 30  # air outside the body
    assert (hu < -700).mean() > 0.1  # lungs and air
    assert (hu > 400).sum() > 100  # bone
    means = {}
    for k, value in enumerate(MMWHS_CT.label_values[1:], start=1):
        pure = mmwhs96.fractions[k] > 0.8  # away from partial-volume boundaries where there is room
        means[value] = float(hu[pure if pure.sum() >= 20 else lab == value].mean())
    assert 50 < means[205] < 200  # myocardium
    for value in (420, 500, 550, 600, 820, 850):  # contrast-enhanced blood pools
        assert 180 < means[value] < 500, (value, means[value])
        assert means[value] > means[205] + 60
    pools = [means[v] for v in (420, 500, 550, 600, 820, 850)]
    assert max(pools) - min(pools) < 200  # similar blood-pool intensities: the hard part
    body = hu[lab == 0]
    assert (np.abs(body - 40) < 80).mean() > 0.1  # soft tissue present
    assert ((body > -200) & (body < -50)).mean() > 0.01  # fat present
    # noise of about 20 HU in a homogeneous region (the centre of the LV cavity)
    inner = mmwhs96.fractions[3] > 0.999
    assert 10 < hu[inner].std() < 40


def test_mmwhs_anisotropic_non_cubic() -> None:
    shape, spacing = (40, 88, 72), (2.0, 0.9, 1.1)
    case = mmwhs_phantom(9, shape, spacing)
    assert case.images.shape == (1,) + shape and case.geometry.spacing == (1.1, 0.9, 2.0)
    assert set(np.unique(case.labels).tolist()) == set(MMWHS_CT.label_values)


# ------------------------------------------------------------------------------------------------ writing


def test_write_case_brats_round_trip(tmp_path) -> None:
    case = brats_phantom(11, (40, 48, 44), (1.5, 1.0, 0.9))
    paths = write_case(case, tmp_path, layout="brats")
    assert set(paths) == {"flair", "t1", "t1ce", "t2", "seg"}
    for name, path in paths.items():
        assert path == tmp_path / case.case_id / f"{case.case_id}_{name}.nii.gz" and path.is_file()
    for ch, name in enumerate(case.modalities):
        array, geometry = read_image(paths[name])
        assert array.dtype == np.float32 and np.array_equal(array, case.images[ch])
        assert geometry.matches(case.geometry)
    seg, geometry = read_image(paths["seg"])
    assert seg.dtype == np.uint8 and np.array_equal(seg, case.labels) and geometry.matches(case.geometry)


def test_write_case_mmwhs_round_trip(tmp_path) -> None:
    case = mmwhs_phantom(11, (40, 48, 44), (1.5, 1.0, 0.9))
    paths = write_case(case, tmp_path, layout="mmwhs")
    assert paths == {
        "image": tmp_path / f"{case.case_id}_image.nii.gz",
        "label": tmp_path / f"{case.case_id}_label.nii.gz",
    }
    image, geometry = read_image(paths["image"])
    assert np.array_equal(image, case.images[0]) and geometry.matches(case.geometry)
    label, geometry = read_image(paths["label"])
    assert label.dtype == np.int16 and np.array_equal(label, case.labels) and geometry.matches(case.geometry)


def test_write_case_rejects_bad_layouts(tmp_path) -> None:
    with pytest.raises(ValueError):
        write_case(brats_phantom(1, SMALL), tmp_path, layout="mmwhs")  # four channels do not fit one image
    with pytest.raises(ValueError):
        write_case(mmwhs_phantom(1, SMALL), tmp_path, layout="nnunet")
