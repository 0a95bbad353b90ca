"""``cldl sample`` (issues 9, 21): the Sample Data case, written once; a clear error without nilearn; ``--compact``
(how the case shipped with the Slicer extension is made) keeps the physical grid, and the shipped files are its
output."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import slicer_testing  # noqa: F401  (puts the module folders on sys.path)
from CLDLSegmentationLib.sampledata import findSampleFiles, sampleFolder

import cldl.data.anatomy
from cldl.commands.main import main
from cldl.commands.sample import SAMPLE_SEED
from cldl.data.phantoms import COMPACT_MAXIMUM, brats_phantom, compact_case
from cldl.files.images import read_image


def _small(seed: int):
    """A fast stand-in for ``anatomy_case`` with its case id."""
    case = brats_phantom(seed, shape=(16, 16, 16))
    case.case_id = f"anatomy_{seed:05d}"
    return case


def test_sample_writes_the_case_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    made = []
    monkeypatch.setattr(cldl.data.anatomy, "anatomy_case", lambda seed, config=None: made.append(seed) or _small(seed))
    assert main(["sample", "--out", str(tmp_path), "--seed", "3", "--progress", "none"]) == 0
    files = findSampleFiles(tmp_path)
    assert files and files["flair"].parent.name == "anatomy_00003"
    assert main(["sample", "--out", str(tmp_path), "--seed", "3", "--progress", "none"]) == 0
    assert made == [3], "a complete case is skipped"


def test_sample_without_nilearn_is_a_clear_error(tmp_path: Path, monkeypatch, capsys) -> None:
    findSpec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "nilearn" else findSpec(name, *a))
    assert main(["sample", "--out", str(tmp_path), "--progress", "none"]) == 1
    assert "pip install 'cldl[anatomy]'" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_compact_case_crops_to_the_head_on_the_same_physical_grid() -> None:
    case = brats_phantom(5, shape=(24, 28, 32))
    case.images = np.abs(case.images) + 1.0  # a head that fills the grid ...
    case.images[:, :3] = 0  # ... but for three background slices, cropped to one (the margin)
    compact = compact_case(case, margin=1)
    assert compact.images.dtype == np.int16 and compact.labels.dtype == np.uint8
    assert compact.images.shape == (4, 22, 28, 32) and compact.labels.shape == (22, 28, 32)
    assert int(compact.images.max()) == COMPACT_MAXIMUM and int(compact.images.min()) >= 0
    np.testing.assert_array_equal(compact.labels, case.labels[2:])
    np.testing.assert_array_equal(compact.images == 0, case.images[:, 2:] == 0)
    corner = compact.geometry.index_to_physical(np.zeros(3))
    np.testing.assert_allclose(corner, case.geometry.index_to_physical(np.array([0.0, 0.0, 2.0])))
    correlation = np.corrcoef(compact.images[0].ravel(), case.images[0, 2:].ravel())[0, 1]
    assert correlation > 0.999, "a linear rescale"


@pytest.mark.slow
def test_the_shipped_sample_case_is_what_cldl_sample_compact_writes(tmp_path: Path) -> None:
    """``cldl sample --out CLDLSegmentation/Resources/SampleData --compact`` (needs nilearn; about 20 s) makes the
    files shipped with the extension: same grids and labels, images within one int16 step (CPU rounding)."""
    pytest.importorskip("nilearn")
    shipped = findSampleFiles(sampleFolder())
    assert shipped is not None and sum(p.stat().st_size for p in shipped.values()) < 5e6
    assert main(["sample", "--out", str(tmp_path), "--seed", str(SAMPLE_SEED), "--compact", "--progress", "none"]) == 0
    made = findSampleFiles(tmp_path)
    for name, path in shipped.items():
        (a, ga), (b, gb) = read_image(path), read_image(made[name])
        assert ga == gb, name
        assert np.abs(a.astype(np.int32) - b.astype(np.int32)).max() <= (0 if name == "seg" else 1), name
