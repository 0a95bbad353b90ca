"""Decisions of the CLDL Segmentation panel as plain functions (no Qt), so that they are tested on a real MRML
scene: which volume fits which input, and what an overlay setting change must touch in the slice views.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import slicer

from .overlay import MAP_ATTRIBUTE, OverlaySettings, colorLegend, configureMapDisplay, setOverlayOpacity, showMap
from .overlay import sliceCompositeNodes as _compositeNodes

INPUT_ROLE = "CLDLInput_"  # parameter-node reference role of each modality's input volume


def guessInput(modality: str, volumes: Sequence):
    """The first volume whose name has ``modality`` as a word (``BraTS_001_t1ce`` fits ``t1ce``, not ``t1``)."""
    wanted = modality.lower()
    for volume in volumes:
        if wanted in re.split(r"[^a-z0-9]+", volume.GetName().lower()):
            return volume
    return None


@dataclass(frozen=True)
class OverlayState:
    """What the panel last showed: the map volume's id and its display settings."""

    volumeId: str | None
    settings: OverlaySettings


def updateOverlay(previous: OverlayState | None, volume, settings: OverlaySettings, scene=None) -> OverlayState:
    """Apply a change of the overlay settings, touching only what changed; returns the new state.

    A newly chosen map is shown over its input (:func:`~CLDLSegmentationLib.overlay.showMap`); "None" takes the
    previous map out of the views that show it; opacity, transparency and legend changes touch only that.
    """
    scene = scene or (volume.GetScene() if volume is not None else slicer.mrmlScene)
    current = OverlayState(volume.GetID() if volume is not None else None, settings)
    if previous == current:
        return current
    if volume is None:
        if previous is not None and previous.volumeId:
            for composite in _compositeNodes(scene):
                if composite.GetForegroundVolumeID() == previous.volumeId:
                    composite.SetForegroundVolumeID(None)
        return current
    if previous is None or previous.volumeId != current.volumeId:
        background = scene.GetNodeByID(volume.GetAttribute("CLDL.Input") or "")
        showMap(volume, background, settings, title=volume.GetAttribute("CLDL.Title"))
        return current
    old = previous.settings
    if settings.transparentBelow != old.transparentBelow:
        configureMapDisplay(volume, settings)
    if settings.showLegend != old.showLegend:
        colorLegend(volume, volume.GetAttribute("CLDL.Title") or volume.GetName(), settings.showLegend)
    if settings.opacity != old.opacity:
        setOverlayOpacity(settings.opacity, scene)
    return current


def isMapVolume(node) -> bool:
    """Whether a volume is an uncertainty or probability map made by the module."""
    return bool(node is not None and node.GetAttribute(MAP_ATTRIBUTE))


#: What each kind of map shows, for the line under the Map choice (``CLDL.Map``, or ``CLDL.Kind`` of region maps).
MAP_EXPLANATIONS = {
    "uncertainty": "how unsure the model is about each voxel's label (0 sure, 1 as unsure as can be)",
    "probability": "the model's probability that each voxel belongs to this class (0..1)",
    "ambiguity": "how mixed the tissue is in each region, from the network's own label distribution at this "
    "region size (0 one tissue, 1 all classes equally mixed; high on boundaries)",
    "proportion": "the fraction of each region that the network gives to this class (0..1)",
}


def describeMap(node) -> str:
    """The line under the Map choice: the legend's title and what the values mean ("" for no map)."""
    if not isMapVolume(node):
        return ""
    kind = node.GetAttribute(MAP_ATTRIBUTE)
    if kind == "ldl":
        kind = node.GetAttribute("CLDL.Kind") or ""
    title = node.GetAttribute("CLDL.Title") or node.GetName()
    explanation = MAP_EXPLANATIONS.get(kind)
    return f"{title}: {explanation}" if explanation else title


def markedRegionName(node, threshold: float) -> str | None:
    """Name of the segment that "Mark uncertain region" makes from ``node`` (None: the uncertainty's default)."""
    if not isMapVolume(node) or node.GetAttribute(MAP_ATTRIBUTE) == "uncertainty":
        return None
    return f"{node.GetAttribute('CLDL.Title') or node.GetName()} > {threshold:.2f}"
