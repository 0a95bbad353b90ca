"""Regenerate ``Testing/fixtures/brats_lesionwise_reference.json`` with the official BraTS evaluation (not run in CI).

The official package (``brats-evaluation`` on PyPI, AGPL per its metadata) is a test-time reference only, never a
dependency: install it into a throwaway environment and give its Python::

    python -m venv /tmp/bratsref && /tmp/bratsref/bin/pip install brats-evaluation==0.0.10
    .venv/bin/python Testing/tools/make_brats_lesionwise_fixture.py /tmp/bratsref/bin/python

The synthetic cases (:func:`cases`) are written as NIfTI with the BraTS 2023+ label numbers the package expects
(1 necrosis, 2 oedema, 3 enhancing tumour), scored with ``brats-evaluate --config gli``, and only the numbers are
kept (no code of the package). ``Testing/test_lesion_wise.py`` scores the same cases with ``cldl`` and compares.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parents[1] / "fixtures" / "brats_lesionwise_reference.json"
SHAPE = (40, 40, 40)
REGIONS = ("wt", "tc", "et")
KEYS = {"sq_dsc": "lw_dice", "sq_hd95": "lw_hd95", "tp": "lesions_tp", "fp": "lesions_fp", "fn": "lesions_fn"}
KEYS["rq"] = "lesions_f1"


def _ball(center: tuple[int, int, int], radius: float) -> np.ndarray:
    """A ball mask on the case grid."""
    z, y, x = np.ogrid[: SHAPE[0], : SHAPE[1], : SHAPE[2]]
    return (z - center[0]) ** 2 + (y - center[1]) ** 2 + (x - center[2]) ** 2 <= radius**2


def _tumour(center: tuple[int, int, int], scale: float = 1.0, et: bool = True) -> np.ndarray:
    """Oedema around necrosis, with an enhancing rim when ``et`` (BraTS 2023 labels)."""
    labels = np.zeros(SHAPE, np.uint8)
    labels[_ball(center, 7 * scale)] = 2
    if et:
        labels[_ball(center, 4.5 * scale)] = 3
    labels[_ball(center, 2.5 * scale)] = 1
    return labels


def _union(*parts: np.ndarray) -> np.ndarray:
    """Label maps overlaid in order (later non-zero labels win)."""
    out = np.zeros(SHAPE, np.uint8)
    for part in parts:
        out = np.where(part > 0, part, out)
    return out


def cases() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The synthetic cases: {name: (prediction, reference)} in BraTS 2023 labels, names as the package expects."""
    shifted = np.roll(_tumour((20, 20, 20)), 2, axis=2)
    corner_ref = np.zeros(SHAPE, np.uint8)
    corner_ref[10:16, 10:16, 10:16] = 3
    corner_ref[16:22, 16:22, 16:22] = 3  # touches the first cube at one corner only: one lesion with 26-connectivity
    corner_pred = corner_ref.copy()
    corner_pred[16:22, 16:22, 16:22] = 0
    split = _tumour((20, 20, 20))
    split[:, :, 19:21] = 0  # one reference lesion predicted as two halves
    bridge_ref = _union(_tumour((12, 20, 10), 0.8), _tumour((28, 20, 30), 0.8))
    bridge_pred = bridge_ref.copy()
    bridge_pred[18:22, 18:22, 10:31] = 2  # a band of oedema joins the two tumours: one predicted lesion for two
    return {
        "BraTS-GLI-00001-000": (_tumour((20, 20, 20)), _tumour((20, 20, 20))),
        "BraTS-GLI-00002-000": (
            _union(np.roll(_tumour((12, 12, 12), 0.8), 1, axis=0), _tumour((30, 30, 10), 0.5)),
            _union(_tumour((12, 12, 12), 0.8), _tumour((28, 28, 28), 0.7)),
        ),
        "BraTS-GLI-00003-000": (_tumour((20, 20, 20), et=False), _tumour((20, 20, 20))),
        "BraTS-GLI-00004-000": (_union(shifted, _tumour((6, 6, 34), 0.4)), _tumour((20, 20, 20), et=False)),
        "BraTS-GLI-00005-000": (_tumour((20, 21, 20), 0.9, et=False), _tumour((20, 20, 20), et=False)),
        "BraTS-GLI-00006-000": (corner_pred, corner_ref),
        "BraTS-GLI-00007-000": (split, _tumour((20, 20, 20))),
        "BraTS-GLI-00008-000": (bridge_pred, bridge_ref),
        "BraTS-GLI-00009-000": (np.zeros(SHAPE, np.uint8), _tumour((20, 20, 20), 0.6)),
    }


def write_case(labels: np.ndarray, path: Path) -> None:
    """A label map as NIfTI at 1 mm spacing."""
    import SimpleITK as sitk

    sitk.WriteImage(sitk.GetImageFromArray(labels.astype(np.uint8)), str(path))


def _number(value: float | None) -> float | str | None:
    """A JSON-safe number (infinity and NaN as strings)."""
    if value is None:
        return None
    value = float(value)
    return value if np.isfinite(value) else str(value)


def main(python: str) -> None:
    """Write the fixture."""
    with tempfile.TemporaryDirectory() as tmp:
        pred_dir, ref_dir = Path(tmp, "pred"), Path(tmp, "ref")
        pred_dir.mkdir()
        ref_dir.mkdir()
        for name, (pred, ref) in cases().items():
            write_case(pred, pred_dir / f"{name}.nii.gz")
            write_case(ref, ref_dir / f"{name}.nii.gz")
        summary = Path(tmp, "summary.json")
        command = [python, "-m", "brats_evaluation.evaluation", "--ref_path", str(ref_dir), "--pred_path"]
        command += [str(pred_dir), "--config", "gli", "--summary_json", str(summary)]
        subprocess.run(command, check=True, capture_output=True)
        versions = "import importlib.metadata as m; print(m.version('brats-evaluation'), m.version('panoptica'))"
        version = subprocess.run(
            [python, "-c", versions],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.split()
        data = json.loads(summary.read_text())
    if data["missings"] or any("error" in m for m in data["metrics"]):
        raise SystemExit(f"the reference failed: {data}")
    results = {}
    for metrics in data["metrics"]:
        name = metrics["subject_name"].removesuffix(".nii.gz")
        results[name] = {
            region: {ours: _number(metrics[region].get(theirs)) for theirs, ours in KEYS.items()} for region in REGIONS
        }
    fixture = {
        "reference": f"brats-evaluation {version[0]} (panoptica {version[1]}), PyPI; numbers only",
        "command": "brats-evaluate --ref_path REF --pred_path PRED --config gli --summary_json SUMMARY "
        "(cases from Testing/tools/make_brats_lesionwise_fixture.py, 1 mm NIfTI, BraTS 2023 labels)",
        "fields": {ours: theirs for theirs, ours in KEYS.items()},
        "cases": results,
    }
    OUT.write_text(json.dumps(fixture, indent=2) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "/tmp/bratsref/bin/python")
