"""Offscreen VTK snapshots of one axial slice: image, uncertainty overlay, class outlines, colour bar and legend.

VTK is imported lazily inside the functions (:mod:`.vtk_primitives`) so that ``cldl`` imports without it.

Orientation: arrays are (z, y, x) as returned by ``SimpleITK.GetArrayFromImage``. The axial slice ``image[z]`` is
drawn like a picture (``imshow``): array row 0 at the top, column 0 at the left. For the usual LPS arrays (identity
direction: x towards the patient's left, y towards posterior) this is the radiological axial view, anterior up and the
patient's right on the left of the screen. Pixels are drawn with their physical size (``spacing_zyx``), so anisotropic
in-plane spacing keeps the true aspect ratio.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .palette import (
    as_unit_uncertainty,
    boundary_rgba,
    grey_window,
    nice_length,
    pick_tumour_slice,
)
from .vtk_primitives import (
    BACKGROUND,
    MUTED_TEXT_COLOR,
    PANEL_BACKGROUND,
    TEXT_COLOR,
    image_data,
    load_vtk,
    rectangle_actor,
    text_actor,
    uncertainty_lut,
)

# Fraction of the window (x0, y0, x1, y1) that shows the slice; the rest on the right is the legend / colour-bar panel.
IMAGE_VIEWPORT = (0.0, 0.0, 0.72, 1.0)
PANEL_VIEWPORT = (0.72, 0.0, 1.0, 1.0)


def _wrap(name: str, width: int) -> str:
    """Wrap a legend entry over at most three lines."""
    lines = textwrap.wrap(name, max(width, 8)) or [""]
    if len(lines) > 3:
        lines = lines[:2] + [textwrap.shorten(" ".join(lines[2:]), max(width, 8), placeholder="...")]
    return "\n".join(lines)


@dataclass(frozen=True)
class _Fonts:
    """Font and line sizes, which follow the window size."""

    scale: float
    font: int
    small: int
    title: int

    @classmethod
    def for_window(cls, width_px: int, height_px: int) -> _Fonts:
        """The sizes for a window of ``width_px`` x ``height_px`` pixels."""
        scale = min(width_px, height_px) / 700.0
        return cls(scale, max(9, round(15 * scale)), max(8, round(12.5 * scale)), max(10, round(19 * scale)))


@dataclass(frozen=True)
class _Frame:
    """Where the slice sits in the image viewport (viewport pixels, slice millimetres)."""

    view_w: float
    view_h: float
    width_mm: float
    height_mm: float
    mm_per_px: float
    bottom_margin: float
    avail_h: float


def _checked_slice(
    image: np.ndarray,
    classes: np.ndarray,
    uncertainty: np.ndarray | None,
    spacing_zyx: tuple[float, float, float],
    size: tuple[int, int],
    slice_index: int | None,
) -> tuple[int, int, int]:
    """Validate the arguments of :func:`snapshot`; the window width, height and the index of the slice to draw."""
    if image.ndim != 3 or classes.shape != image.shape:
        raise ValueError(f"image and classes must be 3D with the same shape, got {image.shape} and {classes.shape}")
    if uncertainty is not None and np.shape(uncertainty) != image.shape:
        raise ValueError(f"uncertainty shape {np.shape(uncertainty)} differs from the image shape {image.shape}")
    if len(spacing_zyx) != 3 or not all(float(s) > 0 for s in spacing_zyx):
        raise ValueError(f"spacing_zyx must be three positive numbers, got {spacing_zyx}")
    width_px, height_px = (int(size[0]), int(size[1]))
    if width_px < 64 or height_px < 64:
        raise ValueError(f"size must be at least 64 x 64 pixels, got {size}")
    z_index = pick_tumour_slice(classes) if slice_index is None else int(slice_index)
    if not 0 <= z_index < image.shape[0]:
        raise IndexError(f"slice_index {slice_index} is outside 0..{image.shape[0] - 1}")
    return width_px, height_px, z_index


def _add_renderer(v: dict[str, Any], window: Any, viewport: tuple[float, ...], background: tuple[float, ...]) -> Any:
    """A renderer on ``viewport`` of ``window`` with a plain background."""
    renderer = v["vtkRenderer"]()
    renderer.SetViewport(*viewport)
    renderer.SetBackground(*background)
    window.AddRenderer(renderer)
    return renderer


def _image_slice(v: dict[str, Any], data: Any) -> tuple[Any, Any]:
    """A vtkImageSlice showing ``data`` (vtkImageData) and its fresh vtkImageProperty (set by the caller)."""
    actor = v["vtkImageSlice"]()
    mapper = v["vtkImageSliceMapper"]()
    mapper.SetInputData(data)
    actor.SetMapper(mapper)
    prop = v["vtkImageProperty"]()
    return actor, prop


def _image_stack(
    v: dict[str, Any], image: np.ndarray, plane: np.ndarray, u_plane: np.ndarray | None, spacing_xy: tuple[float, float]
) -> tuple[Any, Any]:
    """The image stack (grey slice, then the uncertainty overlay if any) and the overlay's lookup table (or None)."""
    lo, hi = grey_window(image)
    grey, grey_prop = _image_slice(v, image_data(v, plane, spacing_xy))
    grey_prop.SetColorWindow(hi - lo)
    grey_prop.SetColorLevel(0.5 * (hi + lo))
    grey_prop.SetInterpolationTypeToLinear()
    grey_prop.SetLayerNumber(0)
    grey.SetProperty(grey_prop)
    stack = v["vtkImageStack"]()
    stack.AddImage(grey)
    if u_plane is None:
        return stack, None
    lut = uncertainty_lut(v)
    overlay, overlay_prop = _image_slice(v, image_data(v, as_unit_uncertainty(u_plane), spacing_xy))
    overlay_prop.SetLookupTable(lut)
    overlay_prop.UseLookupTableScalarRangeOn()
    overlay_prop.SetInterpolationTypeToLinear()
    overlay_prop.SetLayerNumber(1)
    overlay.SetProperty(overlay_prop)
    stack.AddImage(overlay)
    return stack, lut


def _fit_camera(
    view: Any,
    plane_shape: tuple[int, int],
    spacing_xy: tuple[float, float],
    viewport_px: tuple[float, float],
    fonts: _Fonts,
    has_title: bool,
) -> _Frame:
    """Fit the slice into the viewport, leaving room for the title above and the caption below; where it sits."""
    rows, cols = plane_shape
    view_w, view_h = viewport_px
    width_mm, height_mm = cols * spacing_xy[0], rows * spacing_xy[1]
    top_margin = (2.6 * fonts.title if has_title else 1.2 * fonts.font) + 6 * fonts.scale
    bottom_margin = 2.4 * fonts.small + 6 * fonts.scale
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
    return _Frame(view_w, view_h, width_mm, height_mm, mm_per_px, bottom_margin, avail_h)


def _add_outlines(
    v: dict[str, Any],
    stack: Any,
    labels: np.ndarray,
    colors: Sequence[tuple[float, float, float]],
    spacing_xy: tuple[float, float],
    frame: _Frame,
    scale: float,
) -> None:
    """Class outlines: an RGBA layer on top, upsampled so that a boundary is about two screen pixels thick."""
    target_px = max(1.5, 2.0 * scale)
    fx = max(1, min(16, int(spacing_xy[0] / frame.mm_per_px / target_px)))
    fy = max(1, min(16, int(spacing_xy[1] / frame.mm_per_px / target_px)))
    rgba = boundary_rgba(labels, colors, fy, fx)
    sub = (spacing_xy[0] / fx, spacing_xy[1] / fy)
    outline_data = image_data(v, rgba, sub)
    outline_data.SetOrigin(-0.5 * spacing_xy[0] + 0.5 * sub[0], -0.5 * spacing_xy[1] + 0.5 * sub[1], 0.0)
    outlines, outline_prop = _image_slice(v, outline_data)
    outline_prop.SetColorWindow(255.0)
    outline_prop.SetColorLevel(127.5)
    outline_prop.SetInterpolationTypeToNearest()
    outline_prop.SetLayerNumber(2)
    outlines.SetProperty(outline_prop)
    stack.AddImage(outlines)


def _add_scale_bar(v: dict[str, Any], view: Any, frame: _Frame, fonts: _Fonts) -> None:
    """A scale bar at the bottom left, inside the image frame."""
    mm_per_px, small_font = frame.mm_per_px, fonts.small
    image_left_px = 0.5 * frame.view_w - 0.5 * frame.width_mm / mm_per_px
    image_bottom_px = frame.bottom_margin + 0.5 * frame.avail_h - 0.5 * frame.height_mm / mm_per_px
    bar_mm = nice_length(0.25 * frame.width_mm)
    if bar_mm <= 0:
        return
    bar_px = bar_mm / mm_per_px
    bar_h = max(2.0, 3 * fonts.scale)
    x0 = image_left_px + 0.04 * frame.width_mm / mm_per_px
    y0 = image_bottom_px + 0.04 * frame.height_mm / mm_per_px
    label_y = y0 + bar_h + 0.35 * small_font
    backing = rectangle_actor(
        v,
        x0 - 0.5 * small_font,
        y0 - 0.5 * small_font,
        x0 + bar_px + 0.5 * small_font,
        label_y + 1.4 * small_font,
        BACKGROUND,
    )
    backing.GetProperty().SetOpacity(0.6)
    view.AddViewProp(backing)
    view.AddViewProp(rectangle_actor(v, x0, y0, x0 + bar_px, y0 + bar_h, TEXT_COLOR))
    view.AddViewProp(text_actor(v, f"{bar_mm:g} mm", x0 + 0.5 * bar_px, label_y, small_font, justify="center"))


def _add_title_and_caption(
    v: dict[str, Any], view: Any, frame: _Frame, fonts: _Fonts, title: str, caption: str
) -> None:
    """The title (if any) centred at the top of the image viewport and the caption centred at its bottom."""
    if title:
        view.AddViewProp(
            text_actor(
                v,
                title,
                0.5 * frame.view_w,
                frame.view_h - 0.8 * fonts.title,
                fonts.title,
                bold=True,
                justify="center",
                vertical="top",
            )
        )
    view.AddViewProp(
        text_actor(v, caption, 0.5 * frame.view_w, 0.9 * fonts.small, fonts.small, MUTED_TEXT_COLOR, justify="center")
    )


def _legend_entries(
    names: Sequence[str], entries: list[int], panel_w: float, pad: float, entry_font: float
) -> tuple[float, list[str], list[int]]:
    """Swatch size, wrapped legend texts and their line counts for one legend font size."""
    swatch = 0.9 * entry_font
    max_chars = int((panel_w - 2 * pad - swatch * 1.8) / (0.56 * entry_font))
    wrapped = [_wrap(str(names[k]) if k < len(names) else f"Class {k}", max_chars) for k in entries]
    return swatch, wrapped, [w.count("\n") + 1 for w in wrapped]


def _add_legend(
    v: dict[str, Any],
    panel: Any,
    panel_size: tuple[float, float],
    legend_bottom: float,
    fonts: _Fonts,
    names: Sequence[str],
    colors: Sequence[tuple[float, float, float]],
    num_classes: int,
    present: list[int],
) -> None:
    """The legend: a header, one swatch (filled when the class is in the slice) and name per class, a note."""
    panel_w, panel_h = panel_size
    font, small_font = fonts.font, fonts.small
    pad = 0.09 * panel_w
    legend_top = panel_h - pad
    panel.AddViewProp(text_actor(v, "Segmentation", pad, legend_top, font, bold=True, vertical="top"))

    entries = list(range(1, num_classes))
    entry_font = font
    swatch, wrapped, line_counts = _legend_entries(names, entries, panel_w, pad, entry_font)
    header_h = 2.0 * font
    needed = sum(1.25 * n * entry_font + 0.55 * entry_font for n in line_counts)
    available = legend_top - header_h - legend_bottom
    if needed > available and needed > 0:  # many classes: shrink the legend font to fit
        entry_font = max(7, int(entry_font * available / needed))
        swatch, wrapped, line_counts = _legend_entries(names, entries, panel_w, pad, entry_font)
    y = legend_top - header_h
    for k, text, n_lines in zip(entries, wrapped, line_counts):
        color = colors[k] if k < len(colors) else (1.0, 1.0, 1.0)
        in_slice = k in present
        sy = y - 0.15 * entry_font
        panel.AddViewProp(
            rectangle_actor(
                v, pad, sy - swatch, pad + swatch, sy, color, filled=in_slice, width=max(1.5, 2.0 * fonts.scale)
            )
        )
        text_color = TEXT_COLOR if in_slice else MUTED_TEXT_COLOR
        panel.AddViewProp(text_actor(v, text, pad + 1.8 * swatch, y, entry_font, text_color, vertical="top"))
        y -= 1.25 * n_lines * entry_font + 0.55 * entry_font
    if not entries:
        panel.AddViewProp(text_actor(v, "no foreground classes", pad, y, small_font, MUTED_TEXT_COLOR, vertical="top"))
    elif len(present) < len(entries):
        panel.AddViewProp(
            text_actor(
                v,
                "outlined box: not in this slice",
                pad,
                y - 0.2 * small_font,
                max(7, small_font - 1),
                MUTED_TEXT_COLOR,
                vertical="top",
            )
        )


def _add_colour_bar(v: dict[str, Any], panel: Any, lut: Any, panel_size: tuple[float, float], fonts: _Fonts) -> None:
    """The uncertainty colour bar in the lower part of the side panel."""
    panel_w, panel_h = panel_size
    pad = 0.09 * panel_w
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
    bar.SetVerticalTitleSeparation(int(8 * fonts.scale))
    bar.SetTextPad(int(4 * fonts.scale))
    for prop, fsize, bold in (
        (bar.GetTitleTextProperty(), fonts.font, True),
        (bar.GetLabelTextProperty(), fonts.small, False),
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


def _write_png(v: dict[str, Any], window: Any, out_png: Path) -> None:
    """Render ``window`` and write its RGB back buffer to ``out_png``; release the window."""
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


def _viewport_px(viewport: tuple[float, float, float, float], width_px: int, height_px: int) -> tuple[float, float]:
    """Width and height in pixels of a normalised viewport of the window."""
    return (viewport[2] - viewport[0]) * width_px, (viewport[3] - viewport[1]) * height_px


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
    width_px, height_px, z_index = _checked_slice(image, classes, uncertainty, spacing_zyx, size, slice_index)
    num_classes = max(len(colors), int(classes.max(initial=0)) + 1)
    if names is None:
        names = ["Background"] + [f"Class {k}" for k in range(1, num_classes)]

    v = load_vtk()
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)

    spacing_xy = (float(spacing_zyx[2]), float(spacing_zyx[1]))
    plane = np.nan_to_num(image[z_index].astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    labels = classes[z_index]
    fonts = _Fonts.for_window(width_px, height_px)

    window = v["vtkRenderWindow"]()
    window.SetOffScreenRendering(1)
    window.SetSize(width_px, height_px)
    window.SetMultiSamples(0)

    # ---- image viewport ---------------------------------------------------------------------------------------------
    view = _add_renderer(v, window, IMAGE_VIEWPORT, BACKGROUND)
    u_plane = None if uncertainty is None else np.asarray(uncertainty)[z_index]
    stack, lut = _image_stack(v, image, plane, u_plane, spacing_xy)
    view.AddViewProp(stack)
    viewport_px = _viewport_px(IMAGE_VIEWPORT, width_px, height_px)
    frame = _fit_camera(view, plane.shape, spacing_xy, viewport_px, fonts, bool(title))
    present = [k for k in range(1, num_classes) if np.any(labels == k)]
    if present:
        _add_outlines(v, stack, labels, colors, spacing_xy, frame, fonts.scale)
    _add_scale_bar(v, view, frame, fonts)
    caption = (
        f"Axial slice {z_index + 1} / {image.shape[0]}    "
        f"voxel {spacing_xy[0]:.3g} \u00d7 {spacing_xy[1]:.3g} \u00d7 {float(spacing_zyx[0]):.3g} mm"
    )
    _add_title_and_caption(v, view, frame, fonts, title, caption)

    # ---- side panel: legend and colour bar --------------------------------------------------------------------------
    panel = _add_renderer(v, window, PANEL_VIEWPORT, PANEL_BACKGROUND)
    panel_size = _viewport_px(PANEL_VIEWPORT, width_px, height_px)
    legend_bottom = 0.52 * panel_size[1] if lut is not None else 0.09 * panel_size[0]  # the bar takes the lower half
    _add_legend(v, panel, panel_size, legend_bottom, fonts, names, colors, num_classes, present)
    if lut is not None:
        _add_colour_bar(v, panel, lut, panel_size, fonts)

    _write_png(v, window, out_png)
    return out_png
