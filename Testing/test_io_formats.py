"""cldl.files.images: every supported format read and written with exact geometry (oblique, anisotropic), dtypes, 4D
inputs,
DICOM series folders, Slicer .seg.nrrd files (cross-checked with slicerio) and clear errors for bad files."""

from __future__ import annotations

import locale
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from cldl.files.geometry import Geometry, overlap_fraction, resample
from cldl.files.images import ImageError, image_info, read_channels, read_image, write_image, write_unit_interval
from cldl.files.label_maps import read_labels, read_segmentation, write_labels, write_segmentation
from cldl.tasks import BRATS, MMWHS_CT


def rotation(ax: float, ay: float, az: float) -> np.ndarray:
    """A rotation matrix from three angles (radians)."""
    cx, sx, cy, sy, cz, sz = np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay), np.cos(az), np.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


OBLIQUE = Geometry(
    size=(13, 11, 7),
    spacing=(0.8, 1.3, 3.5),
    origin=(-12.345678901, 20.5, 33.25),
    direction=tuple(float(d) for d in rotation(0.3, -0.2, 0.5).ravel()),
)
DTYPES = (np.int16, np.uint8, np.float32)
FORMATS = (".nii.gz", ".nii", ".nrrd", ".mha")


def _array(dtype: type, shape: tuple[int, ...] = OBLIQUE.shape, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return rng.integers(max(info.min, -1000), min(info.max, 1000), size=shape).astype(dtype)
    return rng.normal(size=shape).astype(dtype)


def _assert_same_geometry(a: Geometry, b: Geometry, exact: bool) -> None:
    assert a.size == b.size
    if exact:
        assert a.same_as(b), (a, b)
    else:
        np.testing.assert_allclose(a.spacing, b.spacing, rtol=1e-12)
        np.testing.assert_allclose(a.origin, b.origin, atol=1e-9)
        np.testing.assert_allclose(a.direction, b.direction, atol=1e-12)


@pytest.mark.parametrize("suffix", FORMATS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_round_trip_keeps_values_dtype_and_oblique_anisotropic_geometry(
    tmp_path: Path, suffix: str, dtype: type
) -> None:
    array = _array(dtype)
    first = write_image(array, OBLIQUE, tmp_path / f"a{suffix}")
    back, geometry = read_image(first)
    assert back.dtype == dtype
    np.testing.assert_array_equal(back, array)
    tol = 1e-6 if suffix.startswith(".nii") else 1e-12  # NIfTI stores the affine in float32
    np.testing.assert_allclose(geometry.direction, OBLIQUE.direction, atol=tol)
    np.testing.assert_allclose(geometry.origin, OBLIQUE.origin, atol=1e-4 if suffix.startswith(".nii") else 1e-9)
    # an output written on a grid read from a file keeps that file's geometry: bit-identical for NIfTI (its header
    # is copied; NRRD: its space lines are copied; MHA stores full precision)
    second = write_image(back, geometry, tmp_path / f"b{suffix}")
    again, geometry2 = read_image(second)
    np.testing.assert_array_equal(again, array)
    _assert_same_geometry(geometry2, geometry, exact=True)


def test_nifti_output_copies_the_input_header_codes(tmp_path: Path) -> None:
    """A scanner-aligned sform (code 2) with a different qform: the output keeps both, so every reader agrees."""
    affine = np.array([[-0.9, 0.1, 0.0, 90.0], [0.1, 0.9, 0.2, -120.0], [0.0, -0.3, 2.9, -60.0], [0, 0, 0, 1.0]])
    image = nib.Nifti1Image(_array(np.int16, (9, 10, 11)), affine)
    image.set_sform(affine, code=2)
    image.set_qform(affine, code=1)
    nib.save(image, tmp_path / "scanner.nii.gz")
    values, geometry = read_image(tmp_path / "scanner.nii.gz")
    write_image((values > 0).astype(np.uint8), geometry, tmp_path / "labels.nii.gz")
    write_unit_interval(np.full(values.shape, 0.5, np.float32), geometry, tmp_path / "u.nii.gz")
    header = nib.load(tmp_path / "scanner.nii.gz").header
    for name in ("labels.nii.gz", "u.nii.gz"):
        out = nib.load(tmp_path / name).header
        assert int(out["sform_code"]) == 2 and int(out["qform_code"]) == 1
        for key in ("srow_x", "srow_y", "srow_z", "quatern_b", "quatern_c", "quatern_d", "qoffset_x", "pixdim"):
            np.testing.assert_array_equal(
                out[key][:4] if key == "pixdim" else out[key], header[key][:4] if key == "pixdim" else header[key]
            )
        _, out_geometry = read_image(tmp_path / name)
        assert out_geometry.same_as(geometry)
    u, _ = read_image(tmp_path / "u.nii.gz")
    np.testing.assert_allclose(u, 128 / 255, atol=1e-6)
    # a geometry that differs from its source's is written as given, not with the stale header
    moved = Geometry(geometry.size, geometry.spacing, (0.0, 0.0, 0.0), geometry.direction, source=geometry.source)
    write_image(values, moved, tmp_path / "moved.nii.gz")
    assert read_image(tmp_path / "moved.nii.gz")[1].matches(moved)


def test_4d_input_channels_and_geometry(tmp_path: Path) -> None:
    """An MSD-style 4D NIfTI: channels come out first, the geometry is the 3D one."""
    data = np.stack([_array(np.float32, seed=s) for s in range(4)])  # C, z, y, x
    image = sitk.JoinSeries([OBLIQUE.apply(sitk.GetImageFromArray(c)) for c in data])
    direction = np.eye(4)
    direction[:3, :3] = OBLIQUE.matrix
    image.SetDirection(tuple(direction.ravel()))
    image.SetOrigin((*OBLIQUE.origin, 0.0))
    image.SetSpacing((*OBLIQUE.spacing, 1.0))
    sitk.WriteImage(image, str(tmp_path / "four.nii.gz"))
    channels, geometry = read_channels(tmp_path / "four.nii.gz")
    assert channels.shape == (4, *OBLIQUE.shape)
    np.testing.assert_allclose(channels, data, atol=1e-6)
    assert geometry.matches(OBLIQUE, tol=1e-5)
    assert image_info(tmp_path / "four.nii.gz")[1] == 4
    with pytest.raises(ImageError, match="has 4 channels"):
        read_image(tmp_path / "four.nii.gz")
    # labels written on the 4D input's grid copy its (4D) header and come back 3D on the same grid
    labels = (channels[0] > 0).astype(np.uint8)
    write_image(labels, geometry, tmp_path / "labels.nii.gz")
    back, back_geometry = read_image(tmp_path / "labels.nii.gz")
    np.testing.assert_array_equal(back, labels)
    assert back_geometry.same_as(geometry)


def _write_dicom_series(folder: Path, array: np.ndarray, geometry: Geometry, uid: str, modality: str = "CT") -> None:
    """One DICOM file per slice with position, orientation and spacing tags (as scanners write them). GDCM's writer
    switches the process to the C locale (text files would then default to ASCII in later tests): restored."""
    saved = locale.setlocale(locale.LC_ALL)
    try:
        _write_dicom_slices(folder, array, geometry, uid, modality)
    finally:
        locale.setlocale(locale.LC_ALL, saved)


def _write_dicom_slices(folder: Path, array: np.ndarray, geometry: Geometry, uid: str, modality: str) -> None:
    """See :func:`_write_dicom_series`."""
    folder.mkdir(parents=True, exist_ok=True)
    matrix = geometry.matrix
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(array.shape[0]):
        position = geometry.index_to_physical(np.array([0.0, 0.0, float(k)]))
        slice_image = geometry.slab(k, k + 1).apply(sitk.GetImageFromArray(array[k : k + 1]))
        tags = {
            "0008|0060": modality,
            "0020|000d": "1.2.826.0.1.3680043.2.1125.1",
            "0020|000e": uid,
            "0020|0013": str(k + 1),
            "0020|0032": "\\".join(f"{v:.6f}" for v in position),
            "0020|0037": "\\".join(f"{v:.6f}" for v in np.concatenate([matrix[:, 0], matrix[:, 1]])),
            "0028|0030": f"{geometry.spacing[1]:.6f}\\{geometry.spacing[0]:.6f}",
            "0018|0050": f"{geometry.spacing[2]:.6f}",
            "0008|0018": f"{uid}.{k + 1}",
        }
        for key, value in tags.items():
            slice_image.SetMetaData(key, value)
        writer.SetFileName(str(folder / f"series{uid.rsplit('.', 1)[1]}_{k:03d}.dcm"))
        writer.Execute(slice_image)


def test_dicom_series_folder(tmp_path: Path) -> None:
    geometry = Geometry((12, 10, 6), (0.7, 0.9, 2.5), (-30.0, 12.5, 40.0), tuple(rotation(0.2, 0.1, -0.3).ravel()))
    array = _array(np.int16, geometry.shape)
    _write_dicom_series(tmp_path / "series", array, geometry, "1.2.826.0.1.3680043.2.1125.2")
    values, read_geometry = read_image(tmp_path / "series")
    np.testing.assert_array_equal(values, array)
    assert read_geometry.matches(geometry, tol=1e-4)
    # one file of the series names the series
    values2, _ = read_image(tmp_path / "series" / "series2_003.dcm")
    np.testing.assert_array_equal(values2, array)
    # two series in one folder: a file names its series, the folder alone is a clear error
    _write_dicom_series(tmp_path / "series", array[:3] + 1, geometry.slab(0, 3), "1.2.826.0.1.3680043.2.1125.3")
    with pytest.raises(ImageError, match="holds 2 DICOM series"):
        read_image(tmp_path / "series")
    np.testing.assert_array_equal(read_image(tmp_path / "series" / "series2_000.dcm")[0], array)
    np.testing.assert_array_equal(read_image(tmp_path / "series" / "series3_000.dcm")[0], array[:3] + 1)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ImageError, match="no DICOM series"):
        read_image(empty)


def test_bad_files_give_one_clear_line(tmp_path: Path) -> None:
    (tmp_path / "notes.nii.gz").write_text("not an image\n")
    sitk.WriteImage(sitk.GetImageFromArray(np.ones((8, 9), np.float32)), str(tmp_path / "flat.nrrd"))
    sitk.WriteImage(sitk.GetImageFromArray(np.ones((1, 8, 9), np.float32)), str(tmp_path / "one_slice.nrrd"))
    cases = {
        tmp_path / "missing.nii.gz": "no such file",
        tmp_path / "notes.nii.gz": "not a readable image",
        tmp_path / "flat.nrrd": "is a 2D image; a 3D volume is needed",
        tmp_path / "one_slice.nrrd": "is a single slice",
    }
    for path, message in cases.items():
        with pytest.raises(ImageError, match=message) as info:
            read_image(path)
        assert "\n" not in str(info.value)
    labels = np.full(OBLIQUE.shape, 0.5, np.float32)
    write_image(labels, OBLIQUE, tmp_path / "fractional.nrrd")
    with pytest.raises(ImageError, match="not a label map"):
        read_labels(tmp_path / "fractional.nrrd")


def test_unwritable_output_path(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ImageError, match="cannot create the folder"):
        write_image(np.zeros(OBLIQUE.shape, np.uint8), OBLIQUE, blocker / "sub" / "x.nii.gz")
    assert blocker.read_text() == "x"


# -- Slicer segmentations --------------------------------------------------------------------------------------


def _brats_labels(shape: tuple[int, int, int] = OBLIQUE.shape) -> np.ndarray:
    labels = np.zeros(shape, np.uint8)
    labels[1:6, 2:9, 3:11] = 2
    labels[2:5, 3:7, 4:9] = 4
    labels[3, 4:6, 5:7] = 1
    return labels


def test_seg_nrrd_written_with_names_colours_and_geometry_read_by_slicerio(tmp_path: Path) -> None:
    import slicerio

    labels = _brats_labels()
    path = write_labels(labels, OBLIQUE, tmp_path / "tumour.seg.nrrd", BRATS)
    segmentation = slicerio.read_segmentation(str(path))
    by_name = {s["name"]: s for s in segmentation["segments"]}
    assert set(by_name) == {
        "Necrotic and non-enhancing tumour core (NCR)",
        "Peritumoral edema (ED)",
        "GD-enhancing tumour (ET)",
    }
    edema = by_name["Peritumoral edema (ED)"]
    np.testing.assert_allclose(edema["color"], BRATS.colors[2], atol=1e-6)
    assert edema["labelValue"] == 2 and by_name["GD-enhancing tumour (ET)"]["labelValue"] == 4
    assert edema["tags"]["CLDL.Class"] == "ED"
    voxels = segmentation["voxels"].transpose(2, 1, 0)  # slicerio indexes (i, j, k)
    np.testing.assert_array_equal(voxels, labels)
    ijk_to_lps = np.asarray(segmentation["ijkToLPS"])
    np.testing.assert_allclose(ijk_to_lps[:3, :3], OBLIQUE.matrix * np.asarray(OBLIQUE.spacing), atol=1e-12)
    np.testing.assert_allclose(ijk_to_lps[:3, 3], OBLIQUE.origin, atol=1e-9)
    # and back through cldl: same labels, same geometry
    back, geometry = read_labels(path, BRATS)
    np.testing.assert_array_equal(back, labels)
    _assert_same_geometry(geometry, OBLIQUE, exact=False)
    with pytest.raises(ValueError, match="needs the task"):
        write_labels(labels, OBLIQUE, tmp_path / "x.seg.nrrd")


def test_seg_nrrd_mmwhs_values_above_255(tmp_path: Path) -> None:
    labels = np.zeros(OBLIQUE.shape, np.int16)
    labels[1:4, 2:5, 3:7] = 850
    labels[4:6, 5:8, 6:9] = 205
    write_segmentation(labels, OBLIQUE, tmp_path / "heart.seg.nrrd", MMWHS_CT)
    segmentation = read_segmentation(tmp_path / "heart.seg.nrrd")
    assert [s.name for s in segmentation.segments][-1] == "Pulmonary artery (PA)"
    np.testing.assert_array_equal(segmentation.to_labels(MMWHS_CT), labels)
    with pytest.raises(ValueError, match=r"\[3\]"):
        write_segmentation(np.full(OBLIQUE.shape, 3, np.uint8), OBLIQUE, tmp_path / "bad.seg.nrrd", BRATS)


def test_seg_nrrd_overlapping_layers_and_name_matching(tmp_path: Path) -> None:
    """A Slicer file with overlapping segments (4D, one layer each) and free-form names becomes one label map."""
    import slicerio

    ijk = np.eye(4)
    ijk[:3, :3] = OBLIQUE.matrix * np.asarray(OBLIQUE.spacing)
    ijk[:3, 3] = OBLIQUE.origin
    segmentation = slicerio.create_segmentation(OBLIQUE.size, ijk)
    edema = np.zeros(OBLIQUE.size, bool)
    edema[2:10, 2:9, 1:6] = True
    enhancing = np.zeros(OBLIQUE.size, bool)
    enhancing[4:7, 4:7, 2:4] = True  # inside the edema: a second layer
    slicerio.add_segment(segmentation, edema, {"name": "peritumoral oedema", "color": [0, 1, 0]})
    slicerio.add_segment(segmentation, enhancing, {"name": "ET", "color": [1, 1, 0]})
    assert segmentation["voxels"].ndim == 4
    slicerio.write_segmentation(str(tmp_path / "two.seg.nrrd"), segmentation)
    read = read_segmentation(tmp_path / "two.seg.nrrd")
    assert read.layers.shape == (2, *OBLIQUE.shape)
    assert [s.name for s in read.segments] == ["peritumoral oedema", "ET"]
    with pytest.warns(UserWarning, match="18 voxels belong to several segments"):
        labels = read.to_labels(BRATS, "two.seg.nrrd")  # "oedema" matches "Peritumoral edema"
    expected = np.where(enhancing, 4, np.where(edema, 2, 0)).transpose(2, 1, 0)
    np.testing.assert_array_equal(labels, expected)
    # names that match no class: refused unless the label values are the task's
    segmentation["segments"][0]["name"] = "liver"
    slicerio.write_segmentation(str(tmp_path / "liver.seg.nrrd"), segmentation)
    with pytest.raises(ImageError, match="'liver' match no class of task 'brats'"):
        read_labels(tmp_path / "liver.seg.nrrd", BRATS)


# -- resampling helpers -----------------------------------------------------------------------------------------


def test_resample_identity_and_overlap() -> None:
    array = _array(np.float32)
    np.testing.assert_allclose(resample(array, OBLIQUE, OBLIQUE), array, atol=1e-5)
    labels = _brats_labels()
    np.testing.assert_array_equal(resample(labels, OBLIQUE, OBLIQUE, "nearest"), labels)
    assert overlap_fraction(OBLIQUE, OBLIQUE) == 1.0
    far = Geometry(OBLIQUE.size, OBLIQUE.spacing, (1000.0, 0.0, 0.0), OBLIQUE.direction)
    assert overlap_fraction(far, OBLIQUE) == 0.0
    shifted = Geometry(OBLIQUE.size, OBLIQUE.spacing, OBLIQUE.index_to_physical([6.0, 0, 0]), OBLIQUE.direction)
    assert 0.3 < overlap_fraction(shifted, OBLIQUE) < 0.7


def test_nan_voxels_in_a_nifti_file_are_refused(tmp_path: Path) -> None:
    """SimpleITK 2.5 reads NaN in NIfTI as 0; the raw data is checked so the NaN is still reported."""
    data = np.ones((6, 7, 8), np.float32)
    data[2, 3, 4] = np.nan
    data[1, 1, 1] = np.inf
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(tmp_path / "bad.nii.gz"))
    with pytest.raises(ImageError, match="2 NaN/Inf voxels"):
        read_image(tmp_path / "bad.nii.gz")
    nib.save(nib.Nifti1Image(np.ones((6, 7, 8), np.float32), np.eye(4)), str(tmp_path / "good.nii.gz"))
    assert read_image(tmp_path / "good.nii.gz")[0].shape == (8, 7, 6)
