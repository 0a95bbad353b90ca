"""``cldl sample`` (issue 9): the Sample Data case, written once; a clear error without nilearn."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import slicer_testing  # noqa: F401  (puts the module folders on sys.path)
from CLDLSegmentationLib.sampledata import SAMPLE_SEED, findSampleFiles, sampleCommand

import cldl.data.anatomy
from cldl.cli import build_parser, main
from cldl.data.phantoms import brats_phantom


def _small(seed: int):
    """A fast stand-in for ``anatomy_case`` with its case id."""
    case = brats_phantom(seed, shape=(16, 16, 16))
    case.case_id = f"anatomy_{seed:05d}"
    return case


def test_sample_writes_the_case_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    made = []
    monkeypatch.setattr(cldl.data.anatomy, "anatomy_case", lambda seed: made.append(seed) or _small(seed))
    assert main(["sample", "--out", str(tmp_path), "--seed", "3", "--progress", "none"]) == 0
    files = findSampleFiles(tmp_path)
    assert files and files["flair"].parent.name == "anatomy_00003"
    assert main(["sample", "--out", str(tmp_path), "--seed", "3", "--progress", "none"]) == 0
    assert made == [3], "a complete case is skipped"


def test_sample_without_nilearn_is_a_clear_error(tmp_path: Path, monkeypatch, capsys) -> None:
    findSpec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "nilearn" else findSpec(name, *a))
    assert main(["sample", "--out", str(tmp_path), "--progress", "none"]) == 1
    assert "pip install 'cldl[anatomy]'" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_the_module_command_parses() -> None:
    args = build_parser().parse_args(sampleCommand("/tmp/x", python="python")[3:])
    assert (args.command, args.out, args.seed, args.progress) == ("sample", Path("/tmp/x"), SAMPLE_SEED, "none")
