"""The uncertainty (or class probability) overlay: colour map, fixed 0..1 range, transparent low values, opacity
and a colour legend, in the foreground layer of the slice views over the input.

Colour map: Slicer's Inferno, else Viridis, else a built-in inferno table (the same colours as the engine's
snapshots, ``cldl.render.palette.inferno_rgb``). Values below the transparency threshold are hidden with the display
node's lower threshold (thresholded voxels are transparent in the slice views); the opacity is the slice views'
foreground opacity.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import slicer

MAP_ATTRIBUTE = "CLDL.Map"  # "uncertainty" or "probability" on every map volume the module creates
OVERLAY_ATTRIBUTE = "CLDL.Overlay"  # "1" on the same volumes: the overlay selector lists these
PREFERRED_COLOR_NODE_IDS = (
    "vtkMRMLColorTableNodeFileInferno.txt",
    "vtkMRMLColorTableNodeFileViridis.txt",
)
FALLBACK_COLOR_NODE_NAME = "CLDL Inferno"
FALLBACK_ATTRIBUTE = "CLDL.ColorMap"


@dataclass(frozen=True)
class OverlaySettings:
    """How a 0..1 map is shown."""

    opacity: float = 0.6
    transparentBelow: float = 0.05
    showLegend: bool = True

    def __post_init__(self) -> None:
        if not 0.0 <= self.opacity <= 1.0:
            raise ValueError(f"opacity must be in 0..1, got {self.opacity}")
        if not 0.0 <= self.transparentBelow < 1.0:
            raise ValueError(f"transparentBelow must be in [0, 1), got {self.transparentBelow}")


def fallbackColors(entries: int = 256) -> np.ndarray:
    """RGB rows of the built-in inferno table (the engine's colour map, or a grey ramp without the engine)."""
    values = (np.arange(entries) + 0.5) / entries
    try:
        from cldl.render.palette import inferno_rgb

        return inferno_rgb(values)
    except ImportError:  # pragma: no cover - the engine ships with the extension
        return np.stack([values, values, values], axis=-1)


def uncertaintyColorNode(scene, preferred: tuple[str, ...] = PREFERRED_COLOR_NODE_IDS):
    """Inferno (or Viridis) from Slicer's colour tables, else the module's own inferno table (created once)."""
    for nodeId in preferred:
        node = scene.GetNodeByID(nodeId)
        if node is not None:
            return node
    for n in range(scene.GetNumberOfNodesByClass("vtkMRMLColorTableNode")):
        node = scene.GetNthNodeByClass(n, "vtkMRMLColorTableNode")
        if node.GetAttribute(FALLBACK_ATTRIBUTE) == "inferno":
            return node
    colors = fallbackColors()
    node = scene.AddNewNodeByClass("vtkMRMLColorTableNode", FALLBACK_COLOR_NODE_NAME)
    node.SetTypeToUser()
    node.SetNumberOfColors(len(colors))
    for index, rgb in enumerate(colors):
        node.SetColor(index, f"{(index + 0.5) / len(colors):.3f}", *[float(c) for c in rgb], 1.0)
    node.SetAttribute(FALLBACK_ATTRIBUTE, "inferno")
    node.SetAttribute("Category", "CLDL")
    return node


def configureMapDisplay(volumeNode, settings: OverlaySettings = OverlaySettings(), colorNode=None):
    """Colour map, fixed 0..1 window, lower threshold for transparency; returns the display node."""
    scene = volumeNode.GetScene()
    display = volumeNode.GetDisplayNode()
    if display is None:
        volumeNode.CreateDefaultDisplayNodes()
        display = volumeNode.GetDisplayNode()
    colorNode = colorNode or uncertaintyColorNode(scene)
    display.SetAndObserveColorNodeID(colorNode.GetID())
    display.AutoWindowLevelOff()
    display.SetWindowLevelMinMax(0.0, 1.0)
    display.AutoThresholdOff()
    display.SetApplyThreshold(1)
    display.SetThreshold(settings.transparentBelow, 1.0 + 1e-3)  # above-range values must stay visible
    display.SetInterpolate(0)
    volumeNode.SetAttribute("CLDL.OverlayOpacity", f"{settings.opacity:.3f}")
    return display


def sliceCompositeNodes(scene) -> list:
    """Every slice composite node of the scene (one per slice view)."""
    return [
        scene.GetNthNodeByClass(n, "vtkMRMLSliceCompositeNode")
        for n in range(scene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode"))
    ]


def showInSliceViews(background, foreground, opacity: float, scene=None, fit: bool = False) -> None:
    """Map in the foreground at ``opacity`` in every slice view; the input as background where a view has none
    (a background or label layer the user chose stays)."""
    scene = scene or (background or foreground).GetScene()
    for composite in sliceCompositeNodes(scene):
        if background is not None and not composite.GetBackgroundVolumeID():
            composite.SetBackgroundVolumeID(background.GetID())
        composite.SetForegroundVolumeID(foreground.GetID() if foreground is not None else None)
        composite.SetForegroundOpacity(opacity)
    if fit and hasattr(slicer, "app") and slicer.app.layoutManager() is not None:  # pragma: no cover - GUI only
        slicer.util.resetSliceViews()


def setOverlayOpacity(opacity: float, scene) -> None:
    """Foreground opacity of every slice view."""
    if not 0.0 <= opacity <= 1.0:
        raise ValueError(f"opacity must be in 0..1, got {opacity}")
    for composite in sliceCompositeNodes(scene):
        composite.SetForegroundOpacity(opacity)


def colorLegend(volumeNode, title: str, visible: bool = True):
    """The volume's colour legend (created once): title, 0..1 labels with one decimal; returns it."""
    legend = slicer.vtkSlicerColorLogic.GetColorLegendDisplayNode(volumeNode)
    if legend is None:
        legend = slicer.vtkSlicerColorLogic.AddDefaultColorLegendDisplayNode(volumeNode)
    legend.SetTitleText(title)
    legend.SetLabelFormat("%.1f")
    legend.SetNumberOfLabels(6)
    legend.SetMaxNumberOfColors(256)
    legend.SetVisibility(visible)
    return legend


def showMap(
    volumeNode, background=None, settings: OverlaySettings = OverlaySettings(), title: str | None = None
) -> None:
    """Everything at once: display settings, slice view layers, opacity and legend (others' legends hidden)."""
    scene = volumeNode.GetScene()
    configureMapDisplay(volumeNode, settings)
    showInSliceViews(background, volumeNode, settings.opacity, scene)
    for n in range(scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode")):
        other = scene.GetNthNodeByClass(n, "vtkMRMLScalarVolumeNode")
        if other is not volumeNode and other.GetAttribute(MAP_ATTRIBUTE):
            legend = slicer.vtkSlicerColorLogic.GetColorLegendDisplayNode(other)
            if legend is not None:
                legend.SetVisibility(False)
    colorLegend(volumeNode, title or volumeNode.GetName(), settings.showLegend)
