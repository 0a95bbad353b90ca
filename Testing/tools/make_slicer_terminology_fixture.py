"""Regenerate ``Testing/slicer_terminology_codes.json`` from a Slicer git dir (not run in CI).

Usage: ``python Testing/tools/make_slicer_terminology_fixture.py /work/.mirror/Slicer+Slicer/repo``. Reads the DICOM
master lists at each tag and keeps only code identifiers (``scheme^value``) of the categories the extension uses.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

TAGS = ("v5.10.0", "v5.12.0")
FOLDER = "Modules/Loadable/Terminologies/Resources/"
SEGMENTATION = FOLDER + "SegmentationCategoryTypeModifier-DICOM-Master.json"
ANATOMY = FOLDER + "AnatomicRegionAndModifier-DICOM-Master.json"
CATEGORIES = ("SCT^123037004", "SCT^49755003")  # Anatomical Structure, Morphologically Altered Structure
OUT = Path(__file__).resolve().parents[1] / "slicer_terminology_codes.json"


def _code(entry: dict) -> str:
    """``scheme^value`` of a coded entry."""
    return f"{entry['CodingSchemeDesignator']}^{entry['CodeValue']}"


def _show(git_dir: str, tag: str, path: str) -> dict:
    """A JSON file of the repository at a tag."""
    return json.loads(
        subprocess.run(["git", "-C", git_dir, "show", f"{tag}:{path}"], capture_output=True, check=True).stdout
    )


def main(git_dir: str) -> None:
    """Write the fixture."""
    facts = {"source": "github:Slicer/Slicer", "files": [SEGMENTATION, ANATOMY], "tags": {}}
    for tag in TAGS:
        segmentation, anatomy = _show(git_dir, tag, SEGMENTATION), _show(git_dir, tag, ANATOMY)
        categories = {
            _code(c): sorted(_code(t) for t in c["Type"])
            for c in segmentation["SegmentationCodes"]["Category"]
            if _code(c) in CATEGORIES
        }
        facts["tags"][tag] = {
            "context": segmentation["SegmentationCategoryTypeContextName"],
            "anatomic_context": anatomy["AnatomicContextName"],
            "categories": categories,
            "regions": sorted({_code(r) for r in anatomy["AnatomicCodes"]["AnatomicRegion"]}),
        }
    OUT.write_text(json.dumps(facts, indent=1) + "\n")


if __name__ == "__main__":
    main(sys.argv[1])
