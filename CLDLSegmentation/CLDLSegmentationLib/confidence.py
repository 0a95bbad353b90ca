"""The confidence table: one row per segment from the engine's summary, and jumping to a segment's most uncertain
region (the engine reports its centre in LPS millimetres; the slice views take RAS)."""

from __future__ import annotations

from typing import Any

import slicer

CONFIDENCE_COLUMNS = ("Segment", "Volume (ml)", "Mean uncertainty", "Uncertain (ml)", "Could flip (ml)")


def confidenceRows(summary: dict[str, Any]) -> list[tuple[str, ...]]:
    """Table rows (texts in ``CONFIDENCE_COLUMNS`` order) of a result event's ``confidence`` summary."""
    rows = []
    for row in (summary.get("confidence") or {}).get("segments", []):
        mean = row.get("mean_uncertainty")
        rows.append(
            (
                str(row["name"]),
                f"{row['volume_ml']:.1f}",
                "-" if mean is None else f"{mean:.2f}",
                f"{row['uncertain_ml']:.1f}",
                f"{row['near_tie_ml']:.1f}",
            )
        )
    return rows


def confidenceHeaderToolTips(summary: dict[str, Any]) -> dict[str, str]:
    """What the uncertain and could-flip columns count, with the thresholds the engine used."""
    confidence = summary.get("confidence") or {}
    threshold = confidence.get("uncertain_threshold")
    return {
        "Uncertain (ml)": f"volume of the segment's voxels with uncertainty above {threshold}",
        "Could flip (ml)": "volume of the segment's voxels whose two most likely classes are within "
        f"{confidence.get('near_tie_margin')} of each other",
    }


def focusRas(summary: dict[str, Any], row: int) -> tuple[float, float, float] | None:
    """The RAS point at the centre of segment ``row``'s most uncertain region (None for an empty segment)."""
    segments = (summary.get("confidence") or {}).get("segments", [])
    if not 0 <= row < len(segments) or segments[row].get("focus_lps") is None:
        return None
    x, y, z = segments[row]["focus_lps"]
    return (-float(x), -float(y), float(z))


def jumpToFocus(summary: dict[str, Any], row: int, scene) -> tuple[float, float, float] | None:
    """Centre every slice view on segment ``row``'s most uncertain region; returns the RAS point (None: nothing)."""
    point = focusRas(summary, row)
    if point is not None:
        slicer.vtkMRMLSliceNode.JumpAllSlices(scene, *point, slicer.vtkMRMLSliceNode.CenteredJumpSlice)
    return point
