"""Render what a Slicer slice view shows after CLDL Segmentation: input, segment outlines, uncertainty overlay and
its colour legend (docs/slicer_view.png), offscreen, without the Slicer application.

The scene is a real MRML scene (the ``slicer-core`` wheel) and the display state is made by the module's own Lib
(``SegmentationLogic.segment``: the ``cldl segment`` subprocess, import, ``showMap``); the picture is drawn by
Slicer's own slice pipeline (``vtkMRMLSliceLogic`` layers) and displayable managers (segmentation outlines,
colour legend) in an offscreen VTK window.

    .venv/bin/python scripts/render_slicer_view.py [--model NAME_OR_CHECKPOINT] [--out docs/slicer_view.png]

``--region-map ambiguity`` shows an LDL stage's region map instead (``cldl segment --ldl-maps``; the first map
whose title contains the text, e.g. ``"ambiguity (mixed tissue), 2 mm"``), as the module's Map choice does.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "CLDLSegmentation"), str(ROOT / "CLDLTraining")]
os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")

import slicer  # noqa: E402
import vtk  # noqa: E402

SEED = 90_000  # the demo case: a phantom the demo model never saw


def build_scene():
    """A scene with an application logic, colour tables and segmentation converters, as Slicer sets it up."""
    factory = slicer.vtkSegmentationConverterFactory.GetInstance()
    if not factory.GetConverterRules():
        factory.RegisterConverterRule(slicer.vtkBinaryLabelmapToClosedSurfaceConversionRule())
        factory.RegisterConverterRule(slicer.vtkClosedSurfaceToBinaryLabelmapConversionRule())
    scene = slicer.vtkMRMLScene()
    app = slicer.vtkSlicerApplicationLogic()
    app.SetMRMLScene(scene)
    colors = slicer.vtkSlicerColorLogic()
    colors.SetMRMLApplicationLogic(app)
    colors.SetMRMLScene(scene)
    slicer.mrmlScene = scene
    return scene, app, colors


class OffscreenSliceView:
    """One slice view: Slicer's slice logic (layer blending) + 2D displayable managers in an offscreen window."""

    MANAGERS = ("vtkMRMLSegmentationsDisplayableManager2D", "vtkMRMLColorLegendDisplayableManager")

    def __init__(self, scene, app, size=(900, 760), name="Red") -> None:
        self.window = vtk.vtkRenderWindow()
        self.window.SetOffScreenRendering(1)
        self.window.SetSize(*size)
        self.window.SetMultiSamples(0)
        self.renderer = vtk.vtkRenderer()
        self.renderer.SetBackground(0, 0, 0)
        self.window.AddRenderer(self.renderer)
        self.interactor = vtk.vtkRenderWindowInteractor()
        self.interactor.SetRenderWindow(self.window)

        self.logic = slicer.vtkMRMLSliceLogic()
        self.logic.SetMRMLApplicationLogic(app)
        self.logic.SetMRMLScene(scene)
        self.sliceNode = self.logic.AddSliceNode(name)
        if app.GetSliceLogics() is None:
            app.SetSliceLogics(vtk.vtkCollection())
        app.GetSliceLogics().AddItem(self.logic)

        factory = slicer.vtkMRMLSliceViewDisplayableManagerFactory.GetInstance()
        factory.SetMRMLApplicationLogic(app)
        for manager in self.MANAGERS:
            if not factory.IsDisplayableManagerRegistered(manager):
                factory.RegisterDisplayableManager(manager)
        self.managers = slicer.vtkMRMLDisplayableManagerGroup()
        self.managers.Initialize(factory, self.renderer)
        self.managers.SetMRMLDisplayableNode(self.sliceNode)

        self.mapper = vtk.vtkImageMapper()  # the blended RGBA slice, already windowed by the display nodes
        self.mapper.SetColorWindow(255)
        self.mapper.SetColorLevel(127.5)
        self.actor = vtk.vtkActor2D()
        self.actor.SetMapper(self.mapper)
        self.actor.GetProperty().SetDisplayLocationToBackground()
        self.renderer.AddViewProp(self.actor)

    def show(self, rasCenter, zoom: float = 1.0) -> None:
        """Fit the background volume into the view, zoom, and centre the view on ``rasCenter``."""
        self.logic.ResizeSliceNode(*self.window.GetSize())
        self.sliceNode.SetOrientationToAxial()
        self.logic.FitSliceToBackground()
        fov = self.sliceNode.GetFieldOfView()
        self.sliceNode.SetFieldOfView(fov[0] / zoom, fov[1] / zoom, fov[2])
        self.sliceNode.JumpSliceByCentering(*rasCenter)
        self.logic.SnapSliceOffsetToIJK()
        self.mapper.SetInputConnection(self.logic.GetImageDataConnection())

    def save(self, path: Path) -> Path:
        for _ in range(2):  # the displayable managers update on the first render
            self.managers.RequestRender()
            self.window.Render()
        grab = vtk.vtkWindowToImageFilter()
        grab.SetInput(self.window)
        grab.ReadFrontBufferOff()
        grab.Update()
        writer = vtk.vtkPNGWriter()
        writer.SetFileName(str(path))
        writer.SetInputConnection(grab.GetOutputPort())
        writer.Write()
        return path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="brats-phantom-demo", help="registry name or checkpoint")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "slicer_view.png")
    parser.add_argument("--size", type=int, nargs=2, default=(900, 760), metavar=("W", "H"))
    parser.add_argument("--region-map", default=None, help="show the region map whose title contains this text")
    parser.add_argument("--zoom", type=float, default=1.5, help="magnification over fitting the whole slice")
    args = parser.parse_args(argv)

    from CLDLSegmentationLib import OverlaySettings, SegmentationLogic, showMap
    from CLDLSegmentationLib.volumes import ijkToRas

    from cldl.data.phantoms import brats_phantom

    scene, app, _colors = build_scene()
    view = OffscreenSliceView(scene, app, tuple(args.size))
    case = brats_phantom(SEED, shape=(96, 96, 96))
    volumes = []
    for name, image in zip(case.modalities, case.images):
        node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", f"{case.case_id}_{name}")
        slicer.util.updateVolumeFromArray(node, np.ascontiguousarray(image))
        matrix = vtk.vtkMatrix4x4()
        matrix.DeepCopy([-1, 0, 0, 0, 0, -1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1])  # LPS arrays as Slicer loads them
        node.SetIJKToRASMatrix(matrix)
        node.CreateDefaultDisplayNodes()
        volumes.append(node)
    flair = volumes[0]
    display = flair.GetDisplayNode()
    display.AutoWindowLevelOff()
    lo, hi = np.percentile(case.images[0][case.images[0] > 0], [1, 99.9])
    display.SetWindowLevelMinMax(float(lo), float(hi))

    logic = SegmentationLogic(scene, tempRoot=tempfile.gettempdir())
    logic.overlaySettings = OverlaySettings(opacity=0.6, transparentBelow=0.05, showLegend=True)
    result = logic.segment(volumes, model=args.model, device="cpu", ldlMaps=bool(args.region_map), wait=True)
    shown = result.uncertaintyNode
    if args.region_map:
        titles = [node.GetAttribute("CLDL.Title") for node in result.ldlMapNodes]
        matches = [n for n, t in zip(result.ldlMapNodes, titles) if args.region_map.lower() in t.lower()]
        if not matches:
            parser.error(f"no region map title contains {args.region_map!r}: {titles}")
        shown = matches[0]
        showMap(shown, flair, logic.overlaySettings, title=shown.GetAttribute("CLDL.Title"))
    legend = slicer.vtkSlicerColorLogic.GetColorLegendDisplayNode(shown)
    legend.SetTitleText(legend.GetTitleText().replace(", ", ",\n"))  # long region-map titles: two lines
    legend.SetSize(0.12, 0.6)
    legend.SetPosition(0.97, 0.5)

    tumour = case.labels > 0
    z = int(np.argmax(tumour.sum(axis=(1, 2))))  # the slice with the most tumour, centred on it
    ys, xs = np.nonzero(tumour[z])
    ijk = np.array([xs.mean(), ys.mean(), z, 1.0])
    view.show((ijkToRas(flair) @ ijk)[:3], zoom=args.zoom)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    view.save(args.out)
    print(
        f"wrote {args.out}: slice {z} of {case.case_id}, segments {sorted(result.segmentIds)}, map {shown.GetName()!r}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
