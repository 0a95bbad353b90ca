"""The VTK building blocks of a snapshot: the lazy VTK import, one-slice image data, 2D text and rectangles, the
uncertainty lookup table, and the snapshot's colours.

VTK is imported lazily (:func:`load_vtk`) so that ``cldl`` imports without it.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from .palette import inferno_rgb, uncertainty_alpha

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


def load_vtk() -> dict[str, Any]:
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


def image_data(v: dict[str, Any], plane: np.ndarray, spacing_xy: tuple[float, float], z: float = 0.0) -> Any:
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


def text_actor(
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


def rectangle_actor(
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


def uncertainty_lut(v: dict[str, Any], entries: int = 256) -> Any:
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
