"""Standard terminology (DICOM / SNOMED CT codes) for the segments of the built-in tasks.

A Slicer terminology entry is one string of seven ``~``-separated fields: context name, category, type, type
modifier, anatomic context name, anatomic region, region modifier; each code is ``scheme^value^meaning``.
Custom tasks (from a ``dataset.json``) get no terminology: their segments keep the dataset's names and colours.
Every code is in Slicer's DICOM master lists (5.10 and 5.12) except Myocardium, which the module ships in its own
context (``Resources/Terminology/*.term.json``, loaded at startup); ``Testing/test_slicer_terminology.py`` checks.
"""

from __future__ import annotations

from pathlib import Path

CONTEXT = "Segmentation category and type - DICOM master list"
#: The module's own terminology context, for types missing from the DICOM master list.
CLDL_CONTEXT = "Segmentation category and type - CLDL"
CLDL_TERMINOLOGY_FILE = (
    Path(__file__).resolve().parents[1]
    / "Resources"
    / "Terminology"
    / "SegmentationCategoryTypeModifier-CLDL.term.json"
)
ANATOMIC_CONTEXT = "Anatomic codes - DICOM master list"

ANATOMICAL_STRUCTURE = ("SCT", "123037004", "Anatomical Structure")
ALTERED_STRUCTURE = ("SCT", "49755003", "Morphologically Altered Structure")
BRAIN = ("SCT", "12738006", "Brain")
HEART = ("SCT", "80891009", "Heart")
#: Not in Slicer's DICOM master list (5.10, 5.12): shipped in :data:`CLDL_TERMINOLOGY_FILE`.
MYOCARDIUM = ("SCT", "74281007", "Myocardium")

# (category, type, anatomic region) per class abbreviation of each built-in task; background has none.
CODES: dict[str, dict[str, tuple[tuple[str, str, str], tuple[str, str, str], tuple[str, str, str] | None]]] = {
    "brats": {
        "NCR": (ALTERED_STRUCTURE, ("SCT", "6574001", "Necrosis"), BRAIN),
        "ED": (ALTERED_STRUCTURE, ("SCT", "79654002", "Edema"), BRAIN),
        "ET": (ALTERED_STRUCTURE, ("SCT", "4147007", "Mass"), BRAIN),
    },
    "mmwhs": {
        "Myo": (ANATOMICAL_STRUCTURE, MYOCARDIUM, HEART),
        "LA": (ANATOMICAL_STRUCTURE, ("SCT", "82471001", "Left atrium"), None),
        "LV": (ANATOMICAL_STRUCTURE, ("SCT", "87878005", "Left ventricle"), None),
        "RA": (ANATOMICAL_STRUCTURE, ("SCT", "73829009", "Right atrium"), None),
        "RV": (ANATOMICAL_STRUCTURE, ("SCT", "53085002", "Right ventricle"), None),
        "AA": (ANATOMICAL_STRUCTURE, ("SCT", "54247002", "Ascending aorta"), None),
        "PA": (ANATOMICAL_STRUCTURE, ("SCT", "81040000", "Pulmonary artery"), None),
    },
}

#: Category and type of the "uncertain region" segment.
UNCERTAIN_REGION = (ALTERED_STRUCTURE, ("SCT", "4147007", "Mass"), None)


def _code(code: tuple[str, str, str] | None) -> str:
    return "^".join(code) if code else "^^"


def entryString(
    category: tuple[str, str, str], type_: tuple[str, str, str], region: tuple[str, str, str] | None = None
) -> str:
    """A terminology entry string as stored in a segment's ``TerminologyEntry`` tag."""
    context = CLDL_CONTEXT if type_ == MYOCARDIUM else CONTEXT
    return "~".join([context, _code(category), _code(type_), "^^", ANATOMIC_CONTEXT, _code(region), "^^"])


def loadTerminology(terminologiesLogic) -> str:
    """Load the module's own context into a ``vtkSlicerTerminologiesModuleLogic``; returns the context name."""
    return terminologiesLogic.LoadTerminologyFromFile(str(CLDL_TERMINOLOGY_FILE))


def _taskFamily(taskName: str) -> str:
    return "mmwhs" if taskName.startswith("mmwhs") else taskName


def terminologyFor(taskName: str, abbreviation: str) -> str | None:
    """The entry string of one class of a built-in task, or None for custom tasks and unknown classes."""
    codes = CODES.get(_taskFamily(taskName), {}).get(abbreviation)
    return entryString(*codes) if codes else None


def typeMeaning(entry: str) -> str:
    """The code meaning of an entry's type field (e.g. ``Edema``)."""
    fields = entry.split("~")
    return fields[2].split("^")[2] if len(fields) > 2 and fields[2].count("^") == 2 else ""
