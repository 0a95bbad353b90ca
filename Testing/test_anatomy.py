"""The anatomy-based case generator: determinism, label/fraction consistency, contrasts, test anatomy from a T1."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from cldl.data.anatomy import (
    BASE_CONTRAST,
    RANDOM_CONTRAST_RANGE,
    TISSUES,
    VISIBILITY_RULES,
    AnatomyConfig,
    _contrasts,
    anatomy_case,
    load_t1_anatomy,
    mni152_anatomy,
    visible,
)
from cldl.tasks import BRATS

# Half resolution over the whole BraTS field of view: the same brain, ~8x fewer voxels (about a second a case).
SMALL = AnatomyConfig(shape=(78, 120, 120), spacing=2.0, p_healthy=0.0)


def _tissue_medians(case, modality: str, classes: dict[str, int]) -> dict[str, float]:
    image = case.images[BRATS.modalities.index(modality)]
    return {name: float(np.median(image[case.labels == value])) for name, value in classes.items()}


def test_same_seed_same_case_other_seed_other_case() -> None:
    a, b, c = anatomy_case(3, SMALL), anatomy_case(3, SMALL), anatomy_case(4, SMALL)
    assert np.array_equal(a.images, b.images) and np.array_equal(a.labels, b.labels)
    assert np.array_equal(a.fractions, b.fractions)
    assert not np.array_equal(a.labels, c.labels)


@pytest.mark.parametrize("seed", [0, 1, 2, 5])
def test_labels_are_the_argmax_of_exact_fractions(seed: int) -> None:
    case = anatomy_case(seed, SMALL)
    f = case.fractions
    assert f.shape == (4, *SMALL.shape) and f.dtype == np.float32
    assert f.min() >= 0 and f.max() <= 1 + 1e-6
    assert np.allclose(f.sum(0), 1, atol=1e-5)
    lut = np.asarray(BRATS.label_values)
    assert np.array_equal(case.labels, lut[f.argmax(0)])
    assert set(np.unique(case.labels)) <= {0, 1, 2, 4}
    assert (case.labels > 0).sum() > 0  # every case holds a tumour
    # the tumour lies in the brain: every labelled voxel has signal in every modality
    assert (case.images[:, case.labels > 0] > 0).mean() > 0.99
    # partial volume: a share of the tumour boundary is mixed
    mixed = (f[1:].sum(0) > 0.05) & (f[1:].sum(0) < 0.95)
    assert mixed.sum() > 0.05 * (case.labels > 0).sum()


def test_images_are_int16_valued_and_zero_outside_the_brain() -> None:
    case = anatomy_case(7, SMALL)
    assert case.images.shape == (4, *SMALL.shape)
    assert np.array_equal(case.images, np.round(case.images))
    assert case.images.min() >= 0 and case.images.max() <= 32767
    assert (case.images.max(0) == 0).mean() > 0.5  # skull-stripped: background is exactly 0
    assert case.geometry.spacing == (2.0, 2.0, 2.0) and case.geometry.size == (120, 120, 78)


def test_realistic_contrasts_keep_the_tissue_orderings() -> None:
    config = AnatomyConfig(
        shape=SMALL.shape,
        spacing=SMALL.spacing,
        p_random_contrast=0.0,
        contrast_jitter=(0.01, 0.01),
        noise=(0.01, 0.01),
        p_lgg=0.0,
        p_solid=0.0,
        rim_mm=(5.0, 6.0),
        rim_completeness=(1.0, 1.0),
        tumour_ml=(30.0, 40.0),
        p_gamma=0.0,
        p_strip_error=0.0,
    )
    case = anatomy_case(11, config)
    labels = {"ed": 2, "et": 4}
    flair = _tissue_medians(case, "flair", labels)
    t1ce = _tissue_medians(case, "t1ce", labels)
    t1 = _tissue_medians(case, "t1", labels)
    assert (case.labels == 4).sum() > 0 and (case.labels == 2).sum() > 0
    # enhancing tumour is bright on T1ce and not on T1; edema is brighter on FLAIR than enhancing tumour's T1
    assert t1ce["et"] > 1.5 * t1["et"]
    brain = case.images[0] > 0
    assert flair["ed"] > np.median(case.images[0][brain & (case.labels == 0)])


def test_contrast_draws_stay_in_their_ranges() -> None:
    config = AnatomyConfig(p_random_contrast=0.3)
    rng = np.random.default_rng(0)
    random_seen = realistic_seen = 0
    orderings = []
    widest = config.contrast_jitter[1] * 5  # log-normal jitter: 5 sd of the widest draw
    for _ in range(300):
        means, random = _contrasts(rng, config)
        assert means.shape == (4, len(TISSUES))
        if random:
            random_seen += 1
            assert means.min() >= RANDOM_CONTRAST_RANGE[0] and means.max() <= RANDOM_CONTRAST_RANGE[1]
        else:
            realistic_seen += 1
            ratio = np.log(means / BASE_CONTRAST)
            assert np.abs(ratio).max() <= widest
            # the orderings that make an MR contrast recognisable survive the jitter in most draws
            orderings.append((means[3, 0] > means[3, 2], means[2, 6] > means[2, 2], means[0, 0] < means[0, 2]))
    assert 50 < random_seen < 130 and realistic_seen > 170
    assert np.mean(orderings, axis=0).min() > 0.9  # T2: CSF > WM; T1ce: ET > WM; FLAIR: CSF < WM


def test_lgg_like_cases_have_no_enhancing_tumour() -> None:
    config = AnatomyConfig(shape=SMALL.shape, spacing=SMALL.spacing, p_lgg=1.0, p_healthy=0.0)
    for seed in (0, 1):
        case = anatomy_case(seed, config)
        assert (case.labels == 4).sum() == 0 and (case.labels > 0).sum() > 0


def test_config_names_unknown_keys() -> None:
    with pytest.raises(ValueError, match="tumor_ml"):
        AnatomyConfig.from_dict({"tumor_ml": [1, 2]})
    assert AnatomyConfig.from_dict({"tumour_ml": [1, 2]}).tumour_ml == (1, 2)


def test_atlas_tissues_partition_the_brain() -> None:
    atlas = mni152_anatomy()
    assert atlas.brain.shape == atlas.gm.shape == atlas.wm.shape
    csf = atlas.brain - atlas.gm - atlas.wm
    assert csf.min() >= -1e-6
    brain_ml = (atlas.brain > 0.5).sum() / 1000
    assert 1400 < brain_ml < 2200
    assert 0.3 < atlas.wm.sum() / atlas.brain.sum() < 0.5


def test_test_anatomy_from_a_t1_recovers_the_tissues(tmp_path: Path) -> None:
    """A T1 made from the atlas's own tissue maps (written as RAS NIfTI) gives back its white matter."""
    atlas = mni152_anatomy()
    t1_lps = (0.35 * (atlas.brain - atlas.gm - atlas.wm) + 0.7 * atlas.gm + 1.0 * atlas.wm) * 100
    ras = np.ascontiguousarray(t1_lps[:, ::-1, ::-1].transpose(2, 1, 0))  # back to nibabel's (i, j, k) RAS order
    path = tmp_path / "t1.nii.gz"
    nib.save(nib.Nifti1Image(ras.astype(np.float32), np.eye(4)), path)
    test = load_t1_anatomy(path)
    assert test.brain.shape == atlas.brain.shape
    a, b = test.wm > 0.5, atlas.wm > 0.5
    assert 2 * (a & b).sum() / (a.sum() + b.sum()) > 0.85
    with pytest.raises(ValueError, match="1 mm"):
        nib.save(nib.Nifti1Image(ras.astype(np.float32), np.diag([2.0, 2.0, 2.0, 1.0])), tmp_path / "t2mm.nii.gz")
        load_t1_anatomy(tmp_path / "t2mm.nii.gz")


def test_synth_command_writes_a_brats_layout_and_skips_complete_cases(tmp_path: Path, capsys) -> None:
    from cldl.commands.main import main
    from cldl.data.discovery import discover_cases

    config = tmp_path / "small.json"
    config.write_text('{"shape": [78, 120, 120], "spacing": 2.0}')
    out = tmp_path / "data"
    assert main(["synth", "--out", str(out), "--seeds", "3:5", "--config", str(config), "--progress", "none"]) == 0
    assert "wrote 2 case(s)" in capsys.readouterr().out
    cases = discover_cases(out, BRATS)
    assert [c.case_id for c in cases] == ["anatomy_00003", "anatomy_00004"]
    assert all(c.label is not None for c in cases)
    assert main(["synth", "--out", str(out), "--seeds", "3:5", "--config", str(config), "--progress", "none"]) == 0
    assert "wrote 0 case(s)" in capsys.readouterr().out
    assert main(["synth", "--out", str(out), "--seeds", "5", "--progress", "none"]) == 1
    assert "A:B" in capsys.readouterr().err


def test_skull_stripping_errors_leave_exact_zeros_outside_the_mask() -> None:
    """Every modality is exactly 0 outside one common brain mask, with or without stripping errors."""
    for p_strip in (0.0, 1.0):
        case = anatomy_case(2, AnatomyConfig(shape=SMALL.shape, spacing=SMALL.spacing, p_strip_error=p_strip))
        nonzero = case.images > 0
        support = nonzero.any(0)
        assert (nonzero.sum(0)[support] >= 3).mean() > 0.995  # no faint halo in one channel only
        low = (case.images > 0) & (case.images < 0.01 * case.images.max(axis=(1, 2, 3), keepdims=True))
        assert low.sum() < 0.01 * nonzero.sum()


def test_realistic_draws_keep_the_tumour_visible_on_every_sequence() -> None:
    """The jitter never yields what no scanner shows (a rim that does not enhance, edema as dark as white matter)."""
    config = AnatomyConfig(p_random_contrast=0.0, contrast_jitter=(0.25, 0.25))
    rng = np.random.default_rng(1)
    draws = [_contrasts(rng, config)[0] for _ in range(300)]
    assert all(visible(m) for m in draws)
    assert len({m.tobytes() for m in draws}) == 300  # still jittered, not a constant fallback
    assert visible(BASE_CONTRAST)
    broken = BASE_CONTRAST.copy()
    broken[2, TISSUES.index("enhancing")] = broken[2, TISSUES.index("wm")]  # the T1ce rim does not enhance
    assert not visible(broken)
    assert {rule[0] for rule in VISIBILITY_RULES} == {0, 1, 2, 3}  # a rule for every sequence


def test_a_realistic_case_shows_its_tumour_where_a_reader_looks() -> None:
    """Edema brighter than the healthy brain on FLAIR and T2, the enhancing rim brighter on T1ce (seeded cases)."""
    config = AnatomyConfig(shape=SMALL.shape, spacing=SMALL.spacing, p_random_contrast=0.0, p_healthy=0.0, p_lgg=0.0)
    for seed in (90000, 3, 4):
        case = anatomy_case(seed, config)
        brain = case.images[0] > 0
        for modality, label, ratio in (("flair", 2, 1.1), ("t2", 2, 1.1), ("t1ce", 4, 1.1)):
            image = case.images[BRATS.modalities.index(modality)]
            if (case.labels == label).sum() < 20:
                continue
            healthy = np.median(image[brain & (case.labels == 0)])
            assert np.median(image[case.labels == label]) > ratio * healthy, (seed, modality)


def test_healthy_brains_have_no_tumour_and_no_edema_anywhere() -> None:
    config = AnatomyConfig(shape=SMALL.shape, spacing=SMALL.spacing, p_healthy=1.0)
    case = anatomy_case(5, config)
    assert (case.labels == 0).all()
    assert np.array_equal(case.fractions[0], np.ones_like(case.fractions[0]))
    assert (case.images.max(0) > 0).sum() * 8 / 1000 > 1000  # a whole brain (ml) is still there


@pytest.mark.parametrize("seed", [7, 8])  # before the fix: 4.7 % and 0.12 % edema 60 mm away
def test_edema_ends_at_its_front_far_from_the_tumour(seed: int) -> None:
    """No faint edema fraction spread over the whole brain: below 0.1 % beyond the diffusion front."""
    case = anatomy_case(seed, SMALL)
    tumour = case.labels > 0
    far = ndimage.distance_transform_edt(~tumour, sampling=2.0) > 60
    assert tumour.any() and far.any()
    assert case.fractions[2][far].max() < 1e-3
