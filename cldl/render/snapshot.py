"""Offscreen VTK snapshots of one axial slice: image, uncertainty overlay, class outlines, colour bar and legend.

VTK is imported lazily inside the functions so that ``cldl`` imports without it.

Orientation: arrays are (z, y, x) as returned by ``SimpleITK.GetArrayFromImage``. The axial slice ``image[z]`` is
drawn like a picture (``imshow``): array row 0 at the top, column 0 at the left. For the usual LPS arrays (identity
direction: x towards the patient's left, y towards posterior) this is the radiological axial view, anterior up and the
patient's right on the left of the screen. Pixels are drawn with their physical size (``spacing_zyx``), so anisotropic
in-plane spacing keeps the true aspect ratio.
"""

from __future__ import annotations

import importlib
import os
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .palette import (
    as_unit_uncertainty,
    boundary_rgba,
    grey_window,
    inferno_rgb,
    nice_length,
    pick_tumour_slice,
    uncertainty_alpha,
)

# Fraction of the window (x0, y0, x1, y1) that shows the slice; the rest on the right is the legend / colour-bar panel.
IMAGE_VIEWPORT = (0.0, 0.0, 0.72, 1.0)
PANEL_VIEWPORT = (0.72, 0.0, 1.0, 1.0)

BACKGROUND = (0.06, 0.065, 0.08)
PANEL_BACKGROUND = (0.11, 0.115, 0.135)
TEXT_COLOR = (0.93, 0.93, 0.95)
MUTED_TEXT_COLOR = (0.62, 0.63, 0.67)


# The VTK classes used here, by vtkmodules module; imported on first use only.
_VTK_CLASSES = {
    "vtkCommonCore": ("vtkLookupTable", "vtkPoints"),
    "vtkCommonDataModel": ("vtkCellArray", "vtkImageData", "vtkPolyData"),
    "vtkIOImage": ("vtkPNGWriter",),
    "vtkRenderingAnnotation": ("vtkScalarBarActor",),
    "vtkRenderingCore": (
        "vtkActor2D",
        "vtkImageProperty",
        "vtkImageSlice",
        "vtkImageSliceMapper",
        "vtkPolyDataMapper2D",
        "vtkRenderer",
        "vtkRenderWindow",
        "vtkTextActor",
        "vtkWindowToImageFilter",
    ),
    "vtkRenderingImage": ("vtkImageStack",),
}


def _vtk() -> dict[str, Any]:
    """Import the VTK classes used here (lazily), or raise a clear RuntimeError."""
    os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")
    try:
        # These two register the OpenGL and FreeType (text) implementations behind the abstract rendering classes.
        importlib.import_module("vtkmodules.vtkRenderingOpenGL2")
        importlib.import_module("vtkmodules.vtkRenderingFreeType")
        classes = {
            name: getattr(importlib.import_module(f"vtkmodules.{module}"), name)
            for module, names in _VTK_CLASSES.items()
            for name in names
        }
        classes["numpy_to_vtk"] = importlib.import_module("vtkmodules.util.numpy_support").numpy_to_vtk
    except ImportError as exc:
        raise RuntimeError(f"install vtk to render snapshots ({exc})") from exc
    return classes


def _image_data(v: dict[str, Any], plane: np.ndarray, spacing_xy: tuple[float, float], z: float = 0.0) -> Any:
    """A one-slice vtkImageData from a (rows, cols[, components]) array, row 0 at the top (VTK's y points up)."""
    rows, cols = plane.shape[:2]
    data = v["vtkImageData"]()
    data.SetDimensions(cols, rows, 1)
    data.SetSpacing(spacing_xy[0], spacing_xy[1], 1.0)
    data.SetOrigin(0.0, 0.0, z)
    flipped = np.ascontiguousarray(plane[::-1, :])
    flipped = flipped.reshape(rows * cols, -1) if flipped.ndim == 3 else flipped.ravel()
    array = v["numpy_to_vtk"](flipped, deep=True)
    array.SetName("scalars")
    data.GetPointData().SetScalars(array)
    return data


def _text(
    v: dict[str, Any],
    text: str,
    x: float,
    y: float,
    size: int,
    color: Sequence[float] = TEXT_COLOR,
    *,
    bold: bool = False,
    justify: str = "left",
    vertical: str = "bottom",
) -> Any:
    """A 2D text actor at viewport pixel (x, y)."""
    actor = v["vtkTextActor"]()
    actor.SetInput(text)
    actor.SetTextScaleModeToNone()
    prop = actor.GetTextProperty()
    prop.SetFontFamilyToArial()
    prop.SetFontSize(int(size))
    prop.SetColor(*color)
    prop.SetBold(bold)
    prop.SetShadow(False)
    {
        "left": prop.SetJustificationToLeft,
        "center": prop.SetJustificationToCentered,
        "right": prop.SetJustificationToRight,
    }[justify]()
    {
        "bottom": prop.SetVerticalJustificationToBottom,
        "center": prop.SetVerticalJustificationToCentered,
        "top": prop.SetVerticalJustificationToTop,
    }[vertical]()
    actor.GetPositionCoordinate().SetCoordinateSystemToViewport()
    actor.SetPosition(float(x), float(y))
    return actor


def _rectangle_2d(
    v: dict[str, Any],
    x0: float,
    y0: float,
    x1: float,
    y1: float,
    color: Sequence[float],
    *,
    filled: bool = True,
    width: float = 1.0,
) -> Any:
    """A 2D rectangle (filled, or outlined) in viewport pixels."""
    points = v["vtkPoints"]()
    for x, y in ((x0, y0), (x1, y0), (x1, y1), (x0, y1)):
        points.InsertNextPoint(x, y, 0.0)
    cells = v["vtkCellArray"]()
    if filled:
        cells.InsertNextCell(4)
        for i in range(4):
            cells.InsertCellPoint(i)
    else:
        cells.InsertNextCell(5)
        for i in (0, 1, 2, 3, 0):
            cells.InsertCellPoint(i)
    poly = v["vtkPolyData"]()
    poly.SetPoints(points)
    if filled:
        poly.SetPolys(cells)
    else:
        poly.SetLines(cells)
    mapper = v["vtkPolyDataMapper2D"]()
    mapper.SetInputData(poly)
    actor = v["vtkActor2D"]()
    actor.SetMapper(mapper)
    actor.GetProperty().SetColor(*[float(c) for c in color[:3]])
    actor.GetProperty().SetLineWidth(width)
    actor.GetPositionCoordinate().SetCoordinateSystemToViewport()
    return actor


def _uncertainty_lut(v: dict[str, Any], entries: int = 256) -> Any:
    """Inferno-like lookup table over 0..1 with transparent low values and an alpha ramp."""
    lut = v["vtkLookupTable"]()
    lut.SetNumberOfTableValues(entries)
    lut.SetTableRange(0.0, 1.0)
    values = (np.arange(entries) + 0.5) / entries
    rgb = inferno_rgb(values)
    alpha = uncertainty_alpha(values)
    for i in range(entries):
        lut.SetTableValue(i, *rgb[i], float(alpha[i]))
    lut.SetBelowRangeColor(0.0, 0.0, 0.0, 0.0)
    lut.SetUseBelowRangeColor(True)
    lut.Build()
    return lut


def _wrap(name: str, width: int) -> str:
    """Wrap a legend entry over at most three lines."""
    lines = textwrap.wrap(name, max(width, 8)) or [""]
    if len(lines) > 3:
        lines = lines[:2] + [textwrap.shorten(" ".join(lines[2:]), max(width, 8), placeholder="...")]
    return "\n".join(lines)


def snapshot(
    image: np.ndarray,
    classes: np.ndarray,
    uncertainty: np.ndarray | None,
    spacing_zyx: tuple[float, float, float],
    out_png: str | Path,
    colors: Sequence[tuple[float, float, float]],
    names: Sequence[str] | None = None,
    slice_index: int | None = None,
    title: str = "",
    size: tuple[int, int] = (900, 700),
) -> Path:
    """Render one axial slice (image, uncertainty overlay, class outlines, colour bar, legend) to a PNG; its path."""
    image = np.asarray(image)
    classes = np.asarray(classes)
    if image.ndim != 3 or classes.shape != image.shape:
        raise ValueError(f"image and classes must be 3D with the same shape, got {image.shape} and {classes.shape}")
    if uncertainty is not None and np.shape(uncertainty) != image.shape:
        raise ValueError(f"uncertainty shape {np.shape(uncertainty)} differs from the image shape {image.shape}")
    if len(spacing_zyx) != 3 or not all(float(s) > 0 for s in spacing_zyx):
        raise ValueError(f"spacing_zyx must be three positive numbers, got {spacing_zyx}")
    width_px, height_px = (int(size[0]), int(size[1]))
    if width_px < 64 or height_px < 64:
        raise ValueError(f"size must be at least 64 x 64 pixels, got {size}")
    num_classes = max(len(colors), int(classes.max(initial=0)) + 1)
    if names is None:
        names = ["Background"] + [f"Class {k}" for k in range(1, num_classes)]
    z_index = pick_tumour_slice(classes) if slice_index is None else int(slice_index)
    if not 0 <= z_index < image.shape[0]:
        raise IndexError(f"slice_index {slice_index} is outside 0..{image.shape[0] - 1}")

    v = _vtk()
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)

    spacing_xy = (float(spacing_zyx[2]), float(spacing_zyx[1]))
    plane = np.nan_to_num(image[z_index].astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    labels = classes[z_index]
    rows, cols = plane.shape
    width_mm, height_mm = cols * spacing_xy[0], rows * spacing_xy[1]
    scale = min(width_px, height_px) / 700.0  # font and line sizes follow the window size
    font = max(9, round(15 * scale))
    small_font = max(8, round(12.5 * scale))
    title_font = max(10, round(19 * scale))

    window = v["vtkRenderWindow"]()
    window.SetOffScreenRendering(1)
    window.SetSize(width_px, height_px)
    window.SetMultiSamples(0)

    # ---- image viewport ---------------------------------------------------------------------------------------------
    view = v["vtkRenderer"]()
    view.SetViewport(*IMAGE_VIEWPORT)
    view.SetBackground(*BACKGROUND)
    window.AddRenderer(view)
    view_w = (IMAGE_VIEWPORT[2] - IMAGE_VIEWPORT[0]) * width_px
    view_h = (IMAGE_VIEWPORT[3] - IMAGE_VIEWPORT[1]) * height_px

    lo, hi = grey_window(image)
    grey = v["vtkImageSlice"]()
    grey_mapper = v["vtkImageSliceMapper"]()
    grey_mapper.SetInputData(_image_data(v, plane, spacing_xy))
    grey.SetMapper(grey_mapper)
    grey_prop = v["vtkImageProperty"]()
    grey_prop.SetColorWindow(hi - lo)
    grey_prop.SetColorLevel(0.5 * (hi + lo))
    grey_prop.SetInterpolationTypeToLinear()
    grey_prop.SetLayerNumber(0)
    grey.SetProperty(grey_prop)
    stack = v["vtkImageStack"]()
    stack.AddImage(grey)

    lut = None
    if uncertainty is not None:
        lut = _uncertainty_lut(v)
        u_plane = as_unit_uncertainty(np.asarray(uncertainty)[z_index])
        overlay = v["vtkImageSlice"]()
        overlay_mapper = v["vtkImageSliceMapper"]()
        overlay_mapper.SetInputData(_image_data(v, u_plane, spacing_xy))
        overlay.SetMapper(overlay_mapper)
        overlay_prop = v["vtkImageProperty"]()
        overlay_prop.SetLookupTable(lut)
        overlay_prop.UseLookupTableScalarRangeOn()
        overlay_prop.SetInterpolationTypeToLinear()
        overlay_prop.SetLayerNumber(1)
        overlay.SetProperty(overlay_prop)
        stack.AddImage(overlay)
    view.AddViewProp(stack)

    # Fit the slice into the viewport, leaving room for the title above and the caption below.
    top_margin = (2.6 * title_font if title else 1.2 * font) + 6 * scale
    bottom_margin = 2.4 * small_font + 6 * scale
    side_margin = 0.04 * view_w
    avail_w = max(view_w - 2 * side_margin, 16.0)
    avail_h = max(view_h - top_margin - bottom_margin, 16.0)
    mm_per_px = max(width_mm / avail_w, height_mm / avail_h)
    centre_offset_px = bottom_margin + 0.5 * avail_h - 0.5 * view_h
    cx, cy = 0.5 * (cols - 1) * spacing_xy[0], 0.5 * (rows - 1) * spacing_xy[1]
    focal_y = cy - centre_offset_px * mm_per_px
    camera = view.GetActiveCamera()
    camera.ParallelProjectionOn()
    camera.SetFocalPoint(cx, focal_y, 0.0)
    camera.SetPosition(cx, focal_y, 1000.0 * max(width_mm, height_mm, 1.0))
    camera.SetViewUp(0.0, 1.0, 0.0)
    camera.SetParallelScale(0.5 * view_h * mm_per_px)
    view.ResetCameraClippingRange()

    # Class outlines: an RGBA layer on top, upsampled so that a boundary is about two screen pixels thick.
    target_px = max(1.5, 2.0 * scale)
    fx = max(1, min(16, int(spacing_xy[0] / mm_per_px / target_px)))
    fy = max(1, min(16, int(spacing_xy[1] / mm_per_px / target_px)))
    present = [k for k in range(1, num_classes) if np.any(labels == k)]
    if present:
        rgba = boundary_rgba(labels, colors, fy, fx)
        sub = (spacing_xy[0] / fx, spacing_xy[1] / fy)
        outline_data = _image_data(v, rgba, sub)
        outline_data.SetOrigin(-0.5 * spacing_xy[0] + 0.5 * sub[0], -0.5 * spacing_xy[1] + 0.5 * sub[1], 0.0)
        outlines = v["vtkImageSlice"]()
        outline_mapper = v["vtkImageSliceMapper"]()
        outline_mapper.SetInputData(outline_data)
        outlines.SetMapper(outline_mapper)
        outline_prop = v["vtkImageProperty"]()
        outline_prop.SetColorWindow(255.0)
        outline_prop.SetColorLevel(127.5)
        outline_prop.SetInterpolationTypeToNearest()
        outline_prop.SetLayerNumber(2)
        outlines.SetProperty(outline_prop)
        stack.AddImage(outlines)

    # Scale bar (bottom left, inside the image frame).
    image_left_px = 0.5 * view_w - 0.5 * width_mm / mm_per_px
    image_bottom_px = bottom_margin + 0.5 * avail_h - 0.5 * height_mm / mm_per_px
    bar_mm = nice_length(0.25 * width_mm)
    if bar_mm > 0:
        bar_px = bar_mm / mm_per_px
        bar_h = max(2.0, 3 * scale)
        x0 = image_left_px + 0.04 * width_mm / mm_per_px
        y0 = image_bottom_px + 0.04 * height_mm / mm_per_px
        label_y = y0 + bar_h + 0.35 * small_font
        backing = _rectangle_2d(
            v,
            x0 - 0.5 * small_font,
            y0 - 0.5 * small_font,
            x0 + bar_px + 0.5 * small_font,
            label_y + 1.4 * small_font,
            BACKGROUND,
        )
        backing.GetProperty().SetOpacity(0.6)
        view.AddViewProp(backing)
        view.AddViewProp(_rectangle_2d(v, x0, y0, x0 + bar_px, y0 + bar_h, TEXT_COLOR))
        view.AddViewProp(_text(v, f"{bar_mm:g} mm", x0 + 0.5 * bar_px, label_y, small_font, justify="center"))

    if title:
        view.AddViewProp(
            _text(
                v,
                title,
                0.5 * view_w,
                view_h - 0.8 * title_font,
                title_font,
                bold=True,
                justify="center",
                vertical="top",
            )
        )
    caption = (
        f"Axial slice {z_index + 1} / {image.shape[0]}    "
        f"voxel {spacing_xy[0]:.3g} \u00d7 {spacing_xy[1]:.3g} \u00d7 {float(spacing_zyx[0]):.3g} mm"
    )
    view.AddViewProp(_text(v, caption, 0.5 * view_w, 0.9 * small_font, small_font, MUTED_TEXT_COLOR, justify="center"))

    # ---- side panel: legend and colour bar --------------------------------------------------------------------------
    panel = v["vtkRenderer"]()
    panel.SetViewport(*PANEL_VIEWPORT)
    panel.SetBackground(*PANEL_BACKGROUND)
    window.AddRenderer(panel)
    panel_w = (PANEL_VIEWPORT[2] - PANEL_VIEWPORT[0]) * width_px
    panel_h = (PANEL_VIEWPORT[3] - PANEL_VIEWPORT[1]) * height_px
    pad = 0.09 * panel_w
    legend_top = panel_h - pad
    legend_bottom = 0.52 * panel_h if lut is not None else pad  # the colour bar takes the lower half
    panel.AddViewProp(_text(v, "Segmentation", pad, legend_top, font, bold=True, vertical="top"))

    entries = list(range(1, num_classes))
    entry_font = font
    swatch = 0.9 * entry_font
    max_chars = int((panel_w - 2 * pad - swatch * 1.8) / (0.56 * entry_font))
    wrapped = [_wrap(str(names[k]) if k < len(names) else f"Class {k}", max_chars) for k in entries]
    line_counts = [w.count("\n") + 1 for w in wrapped]
    header_h = 2.0 * font
    needed = sum(1.25 * n * entry_font + 0.55 * entry_font for n in line_counts)
    available = legend_top - header_h - legend_bottom
    if needed > available and needed > 0:  # many classes: shrink the legend font to fit
        entry_font = max(7, int(entry_font * available / needed))
        swatch = 0.9 * entry_font
        max_chars = int((panel_w - 2 * pad - swatch * 1.8) / (0.56 * entry_font))
        wrapped = [_wrap(str(names[k]) if k < len(names) else f"Class {k}", max_chars) for k in entries]
        line_counts = [w.count("\n") + 1 for w in wrapped]
    y = legend_top - header_h
    for k, text, n_lines in zip(entries, wrapped, line_counts):
        color = colors[k] if k < len(colors) else (1.0, 1.0, 1.0)
        in_slice = k in present
        sy = y - 0.15 * entry_font
        panel.AddViewProp(
            _rectangle_2d(v, pad, sy - swatch, pad + swatch, sy, color, filled=in_slice, width=max(1.5, 2.0 * scale))
        )
        text_color = TEXT_COLOR if in_slice else MUTED_TEXT_COLOR
        panel.AddViewProp(_text(v, text, pad + 1.8 * swatch, y, entry_font, text_color, vertical="top"))
        y -= 1.25 * n_lines * entry_font + 0.55 * entry_font
    if not entries:
        panel.AddViewProp(_text(v, "no foreground classes", pad, y, small_font, MUTED_TEXT_COLOR, vertical="top"))
    elif len(present) < len(entries):
        panel.AddViewProp(
            _text(
                v,
                "outlined box: not in this slice",
                pad,
                y - 0.2 * small_font,
                max(7, small_font - 1),
                MUTED_TEXT_COLOR,
                vertical="top",
            )
        )

    if lut is not None:
        bar = v["vtkScalarBarActor"]()
        bar.SetLookupTable(lut)
        bar.SetTitle("Uncertainty")
        bar.SetNumberOfLabels(6)
        bar.SetLabelFormat("%.1f")
        bar.SetOrientationToVertical()
        bar.UnconstrainedFontSizeOn()
        bar.SetBarRatio(0.28)
        bar.SetMaximumNumberOfColors(256)
        bar.DrawTickLabelsOn()
        bar.SetVerticalTitleSeparation(int(8 * scale))
        bar.SetTextPad(int(4 * scale))
        for prop, fsize, bold in (
            (bar.GetTitleTextProperty(), font, True),
            (bar.GetLabelTextProperty(), small_font, False),
        ):
            prop.SetFontFamilyToArial()
            prop.SetFontSize(int(fsize))
            prop.SetColor(*TEXT_COLOR)
            prop.SetBold(bold)
            prop.SetItalic(False)
            prop.SetShadow(False)
        bar.GetTitleTextProperty().SetJustificationToLeft()
        bar.GetPositionCoordinate().SetCoordinateSystemToViewport()
        bar.GetPosition2Coordinate().SetCoordinateSystemToViewport()
        bar.SetPosition(pad, pad)
        bar.SetPosition2(panel_w - 2 * pad, 0.42 * panel_h - pad)
        panel.AddViewProp(bar)

    window.Render()
    grab = v["vtkWindowToImageFilter"]()
    grab.SetInput(window)
    grab.SetInputBufferTypeToRGB()
    grab.ReadFrontBufferOff()
    grab.Update()
    writer = v["vtkPNGWriter"]()
    writer.SetFileName(str(out_png))
    writer.SetInputConnection(grab.GetOutputPort())
    writer.Write()
    window.Finalize()
    return out_png
