"""Tests for cldl.render: offscreen VTK snapshots of an axial slice with outlines, uncertainty overlay and legend."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import vtkmodules.vtkRenderingCore  # noqa: F401  (the tests need VTK)

from cldl.render import palette
from cldl.render.palette import inferno_rgb, pick_tumour_slice
from cldl.render.snapshot import IMAGE_VIEWPORT, PANEL_VIEWPORT, snapshot

CYAN = (0.1, 0.9, 0.95)  # class 1
GREEN = (0.2, 1.0, 0.2)  # class 2
COLORS = ((0.0, 0.0, 0.0), CYAN, GREEN)
NAMES = ("Background", "Sphere", "Ring")
SIZE = (640, 480)
RING_SLICE = 14


def _volume() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A (24, 64, 80) volume: a sphere of class 1 (centre z=10), a ring of class 2 (largest at z=14), an x ramp."""
    z, y, x = np.mgrid[0:24, 0:64, 0:80].astype(np.float32)
    in_plane = np.sqrt((y - 32) ** 2 + (x - 40) ** 2)
    sphere = np.sqrt((z - 10) ** 2 + (y - 32) ** 2 + (x - 40) ** 2) <= 7
    classes = np.zeros(z.shape, np.uint8)
    classes[sphere] = 1
    for zz, outer in ((13, 16), (RING_SLICE, 20), (15, 16)):
        ring = (in_plane[0] >= 12) & (in_plane[0] <= outer)
        classes[zz][ring] = 2
    image = 100.0 + 50.0 * np.sin(x / 5.0) * np.cos(y / 7.0) + 80.0 * sphere
    uncertainty = np.broadcast_to(x / 79.0, z.shape).astype(np.float32)
    return image.astype(np.float32), classes, uncertainty


def _read_png(path: Path) -> np.ndarray:
    """A PNG as a (rows, cols, 3) uint8 array, row 0 at the top, read back with vtkPNGReader."""
    from vtkmodules.util.numpy_support import vtk_to_numpy
    from vtkmodules.vtkIOImage import vtkPNGReader

    reader = vtkPNGReader()
    reader.SetFileName(str(path))
    reader.Update()
    data = reader.GetOutput()
    cols, rows, _ = data.GetDimensions()
    pixels = vtk_to_numpy(data.GetPointData().GetScalars()).reshape(rows, cols, -1)
    return np.ascontiguousarray(pixels[::-1, :, :3])


def _region(pixels: np.ndarray, viewport: tuple[float, float, float, float]) -> np.ndarray:
    """The pixels of a normalised (x0, y0, x1, y1) viewport (VTK's y up)."""
    rows, cols = pixels.shape[:2]
    x0, y0, x1, y1 = viewport
    top, bottom = round((1 - y1) * rows), round((1 - y0) * rows)
    return pixels[top:bottom, round(x0 * cols) : round(x1 * cols)]


def _near(pixels: np.ndarray, rgb: tuple[float, float, float] | np.ndarray, tol: int = 12) -> np.ndarray:
    """Mask of pixels within ``tol`` (per channel) of a colour given in 0..1."""
    target = np.round(np.asarray(rgb, dtype=np.float64) * 255)
    return np.all(np.abs(pixels.astype(np.int16) - target) <= tol, axis=-1)


def _warm(pixels: np.ndarray) -> np.ndarray:
    """Mask of strongly red-dominant pixels: the inferno overlay/colour bar, never greys, cyan or green."""
    p = pixels.astype(np.int16)
    return (p[..., 0] - np.minimum(p[..., 1], p[..., 2])) > 60


@pytest.fixture(scope="module")
def volume() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return _volume()


@pytest.fixture(scope="module")
def rendered(volume, tmp_path_factory) -> tuple[Path, np.ndarray]:
    image, classes, uncertainty = volume
    out = tmp_path_factory.mktemp("render") / "nested" / "folder" / "snap.png"
    path = snapshot(image, classes, uncertainty, (2.0, 1.0, 1.0), out, COLORS, NAMES, title="Synthetic", size=SIZE)
    return path, _read_png(path)


def test_pick_tumour_slice_largest_area(volume):
    _, classes, _ = volume
    areas = [(classes[z] > 0).sum() for z in range(classes.shape[0])]
    assert pick_tumour_slice(classes) == RING_SLICE == int(np.argmax(areas))
    only = np.zeros((9, 4, 4), np.uint8)
    only[2, :2, :2] = 1
    only[6, :3, :3] = 3  # any non-zero class counts as foreground
    assert pick_tumour_slice(only) == 6


def test_pick_tumour_slice_empty_is_middle():
    assert pick_tumour_slice(np.zeros((11, 5, 5), np.uint8)) == 5
    assert pick_tumour_slice(np.zeros((1, 5, 5), np.uint8)) == 0


def test_png_written_with_requested_size(rendered):
    path, pixels = rendered
    assert path.is_file() and path.suffix == ".png"
    assert path.parent.name == "folder"  # parents were created
    assert pixels.shape == (SIZE[1], SIZE[0], 3)
    assert pixels.std() > 10  # not a blank window


def test_outline_colours_in_image(rendered):
    _, pixels = rendered
    view = _region(pixels, IMAGE_VIEWPORT)
    assert _near(view, CYAN).sum() > 40, "class 1 outline colour missing"
    assert _near(view, GREEN).sum() > 40, "class 2 outline colour missing"
    # Outlines, not filled regions: a filled ring would cover about half of its bounding box.
    ys, xs = np.nonzero(_near(view, GREEN))
    box = (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)
    assert len(ys) < 0.25 * box


def test_overlay_and_colour_bar_colours(rendered):
    _, pixels = rendered
    view = _region(pixels, IMAGE_VIEWPORT)
    panel = _region(pixels, PANEL_VIEWPORT)
    assert _warm(view).sum() > 2000, "uncertainty overlay not visible in the image"
    for value in (0.3, 0.6, 0.9):  # the colour bar shows the colour map opaque
        assert _near(panel, inferno_rgb(value), tol=10).any(), f"colour bar colour at {value} missing"
    # Legend swatches in the class colours.
    assert _near(panel, CYAN, tol=6).sum() > 20 and _near(panel, GREEN, tol=6).sum() > 20


def test_uncertainty_none_has_no_colour_map(volume, tmp_path):
    image, classes, _ = volume
    path = snapshot(image, classes, None, (2.0, 1.0, 1.0), tmp_path / "none.png", COLORS, NAMES, size=SIZE)
    pixels = _read_png(path)
    assert pixels.shape == (SIZE[1], SIZE[0], 3)
    assert _warm(pixels).sum() == 0, "colour map / colour bar drawn without uncertainty"
    panel = _region(pixels, PANEL_VIEWPORT)
    for value in (0.3, 0.6, 0.9):
        assert not _near(panel, inferno_rgb(value), tol=10).any()
    assert _near(_region(pixels, IMAGE_VIEWPORT), CYAN).sum() > 40  # outlines still drawn


def test_all_background_renders(volume, tmp_path):
    image, _, uncertainty = volume
    empty = np.zeros(image.shape, np.uint8)
    path = snapshot(image, empty, uncertainty, (3.0, 0.8, 0.8), tmp_path / "empty.png", COLORS, None, size=SIZE)
    pixels = _read_png(path)
    view = _region(pixels, IMAGE_VIEWPORT)
    assert pixels.shape == (SIZE[1], SIZE[0], 3)
    assert not _near(view, CYAN, tol=6).any() and not _near(view, GREEN, tol=6).any()
    assert _warm(view).sum() > 2000


def test_explicit_slice_without_foreground(volume, tmp_path):
    image, classes, uncertainty = volume
    path = snapshot(image, classes, uncertainty, (2.0, 1.0, 1.0), tmp_path / "s0.png", COLORS, NAMES, slice_index=0)
    view = _region(_read_png(path), IMAGE_VIEWPORT)
    assert not _near(view, CYAN, tol=6).any() and not _near(view, GREEN, tol=6).any()
    with pytest.raises(IndexError):
        snapshot(image, classes, None, (1, 1, 1), tmp_path / "bad.png", COLORS, slice_index=classes.shape[0])


def test_physical_aspect_and_orientation(tmp_path):
    rows, cols = 40, 100
    spacing = (5.0, 2.0, 0.5)  # 80 mm tall, 50 mm wide
    image = np.ones((3, rows, cols), np.float32)
    classes = np.ones((3, rows, cols), np.uint8)  # outline traces the slice border
    classes[1, :8, :10] = 2  # a block at array row 0 / column 0
    path = snapshot(image, classes, None, spacing, tmp_path / "aspect.png", COLORS, NAMES, slice_index=1, size=SIZE)
    view = _region(_read_png(path), IMAGE_VIEWPORT)
    ys, xs = np.nonzero(_near(view, CYAN))
    height, width = ys.max() - ys.min() + 1, xs.max() - xs.min() + 1
    assert width / height == pytest.approx((cols * spacing[2]) / (rows * spacing[1]), rel=0.04)
    gy, gx = np.nonzero(_near(view, GREEN))
    # Array row 0 is at the top of the picture and column 0 at the left (radiological axial view for LPS arrays).
    assert gy.mean() < ys.min() + 0.3 * height and gx.mean() < xs.min() + 0.3 * width


def test_uint8_uncertainty_is_scaled(tmp_path):
    assert np.allclose(palette.as_unit_uncertainty(np.array([0, 128, 255], np.uint8)), [0.0, 128 / 255, 1.0])
    image = np.zeros((2, 30, 30), np.float32)  # black image: the overlay colour shows unblended
    classes = np.zeros(image.shape, np.uint8)
    unc = np.full(image.shape, 128, np.uint8)
    path = snapshot(image, classes, unc, (1, 1, 1), tmp_path / "u8.png", COLORS, NAMES, size=SIZE)
    view = _region(_read_png(path), IMAGE_VIEWPORT)
    expected = palette.uncertainty_alpha(128 / 255) * inferno_rgb(128 / 255)
    assert _near(view, expected, tol=8).sum() > 0.3 * view.shape[0] * view.shape[1]


def test_missing_vtk_raises_clear_error(volume, tmp_path, monkeypatch):
    image, classes, _ = volume
    monkeypatch.setitem(sys.modules, "vtkmodules.vtkRenderingOpenGL2", None)
    with pytest.raises(RuntimeError, match="install vtk to render snapshots"):
        snapshot(image, classes, None, (1, 1, 1), tmp_path / "x.png", COLORS)


def test_import_does_not_import_vtk():
    code = (
        "import sys, cldl.render.palette, cldl.render.snapshot\n"
        "bad = sorted(m for m in sys.modules if m == 'vtk' or m.startswith('vtkmodules'))\n"
        "assert not bad, bad\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
