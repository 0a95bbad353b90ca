"""Every terminology code the extension writes is in Slicer's DICOM master lists (v5.10.0, v5.12.0) or in the
module's own ``.term.json``, which Slicer's real terminology logic (slicer-core) loads (issue 9)."""

from __future__ import annotations

import json
from pathlib import Path

import slicer
import slicer_testing  # noqa: F401  (puts the module folders on sys.path)
from CLDLSegmentationLib.terminology import (
    ANATOMIC_CONTEXT,
    CLDL_CONTEXT,
    CODES,
    CONTEXT,
    UNCERTAIN_REGION,
    loadTerminology,
    terminologyFor,
)

FIXTURE = json.loads(Path(__file__).with_name("slicer_terminology_codes.json").read_text())


def _used() -> list[tuple[str, tuple, tuple, tuple | None]]:
    """(context, category, type, region) of every entry the extension writes."""
    entries = [(task, key) for task, classes in CODES.items() for key in classes]
    used = []
    for task, key in entries:
        context, category, type_, _modifier, _anatomy, region, _ = terminologyFor(task, key).split("~")
        used.append((context, tuple(category.split("^")), tuple(type_.split("^")), _region(region)))
    return [*used, (CONTEXT, *UNCERTAIN_REGION)]


def _region(field: str) -> tuple | None:
    """A region code field, or None when empty."""
    return tuple(field.split("^")) if field != "^^" else None


def _id(code: tuple) -> str:
    return f"{code[0]}^{code[1]}"


def _own_types() -> set[tuple[str, str]]:
    """(category, type) pairs in the module's .term.json, as Slicer's terminology logic loads them."""
    logic = slicer.vtkSlicerTerminologiesModuleLogic()
    name = loadTerminology(logic)
    assert name == CLDL_CONTEXT
    pairs = set()
    for c in range(logic.GetNumberOfCategoriesInTerminology(name)):
        category = slicer.vtkSlicerTerminologyCategory()
        assert logic.GetNthCategoryInTerminology(name, c, category)
        for t in range(logic.GetNumberOfTypesInTerminologyCategory(name, category)):
            type_ = slicer.vtkSlicerTerminologyType()
            assert logic.GetNthTypeInTerminologyCategory(name, category, t, type_)
            pairs.add((f"SCT^{category.GetCodeValue()}", f"{type_.GetCodingSchemeDesignator()}^{type_.GetCodeValue()}"))
    return pairs


def test_every_code_is_in_the_master_list_or_our_own_context() -> None:
    own = _own_types()
    missing = []
    for tag, facts in FIXTURE["tags"].items():
        assert (facts["context"], facts["anatomic_context"]) == (CONTEXT, ANATOMIC_CONTEXT)
        for context, category, type_, region in _used():
            pair = (_id(category), _id(type_))
            if context == CONTEXT and pair[1] not in facts["categories"].get(pair[0], []):
                missing.append(f"{tag}: {type_[2]} not in the DICOM master list")
            if context == CLDL_CONTEXT and pair not in own:
                missing.append(f"{type_[2]} not in the module's .term.json")
            if region is not None and _id(region) not in facts["regions"]:
                missing.append(f"{tag}: region {region[2]}")
    assert not missing


def test_myocardium_uses_the_modules_own_context() -> None:
    """Slicer 5.10/5.12's master list has no Myocardium (SCT 74281007): it is ours, and only it."""
    contexts = {type_[2]: context for context, _c, type_, _r in _used()}
    assert contexts["Myocardium"] == CLDL_CONTEXT
    assert {t for t, c in contexts.items() if c == CLDL_CONTEXT} == {"Myocardium"}
    for facts in FIXTURE["tags"].values():
        assert "SCT^74281007" not in facts["categories"]["SCT^123037004"]
