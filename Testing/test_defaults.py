"""Defaults have one home: the trainer's, the CLI's and the Slicer panels' defaults and choice lists are
cldl.defaults'."""

from __future__ import annotations

import argparse
import ast
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from slicer_testing import ROOT  # also puts the module folders on sys.path

# isort: split
from CLDLSegmentationLib.logic import DeviceChoice, PrecisionChoice, UncertaintyMapChoice
from CLDLSegmentationLib.overlay import OverlaySettings

from cldl import defaults

TRAIN_FIELDS = ("epochs", "iters_per_epoch", "lr", "patch_size", "curriculum", "val_overlap")


def _mentions_defaults(node: ast.AST) -> bool:
    """Whether an expression reads a name of ``cldl.defaults`` (``defaults.X``)."""
    return any(
        isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name) and n.value.id == "defaults"
        for n in ast.walk(node)
    )


def test_train_config_defaults_are_imported() -> None:
    tree = ast.parse((ROOT / "cldl" / "training" / "config.py").read_text())
    config = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "TrainConfig")
    fields = {
        n.target.id: n.value for n in config.body if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)
    }
    assert not [name for name in TRAIN_FIELDS if not _mentions_defaults(fields[name])]


def test_cli_overlap_default_is_imported() -> None:
    tree = ast.parse((ROOT / "cldl" / "commands" / "segment.py").read_text())
    overlap = [
        call
        for call in ast.walk(tree)
        if isinstance(call, ast.Call)
        and isinstance(call.func, ast.Attribute)
        and call.func.attr == "add_argument"
        and any(isinstance(a, ast.Constant) and a.value == "--overlap" for a in call.args)
    ]
    assert overlap
    for call in overlap:
        default = next(k.value for k in call.keywords if k.arg == "default")
        assert _mentions_defaults(default)


def _ui_values(path: Path) -> dict[str, ET.Element]:
    """The ``value`` property of every widget of a Qt Designer file that a parameter node drives, by parameter."""
    values = {}
    for widget in ET.parse(path).iter("widget"):
        properties = {p.get("name"): p[0] for p in widget.findall("property")}
        if "SlicerParameterName" in properties and "value" in properties:
            values[properties["SlicerParameterName"].text] = properties
    return values


def test_the_ui_files_show_the_engine_defaults() -> None:
    """The numbers a user sees first in the panels (.ui files) are cldl.defaults' (and the overlay's)."""
    training = _ui_values(ROOT / "CLDLTraining" / "Resources" / "UI" / "CLDLTraining.ui")
    segmentation = _ui_values(ROOT / "CLDLSegmentation" / "Resources" / "UI" / "CLDLSegmentation.ui")
    expected = {
        "epochs": defaults.EPOCHS,
        "itersPerEpoch": defaults.ITERS_PER_EPOCH,
        "patchSize": defaults.PATCH_SIZE,
        "learningRate": defaults.LEARNING_RATE,
        "overlap": defaults.OVERLAP,
        "overlayOpacity": OverlaySettings().opacity,
        "transparentBelow": OverlaySettings().transparentBelow,
    }
    shown = {**training, **segmentation}
    not_engine_defaults = {"gpus", "uncertainThreshold"}  # the panel's own: one GPU, the review threshold
    assert set(shown) == set(expected) | not_engine_defaults
    for name, value in expected.items():
        assert float(shown[name]["value"].text) == pytest.approx(value, rel=1e-12), name
    patch = training["patchSize"]
    assert int(patch["minimum"].text) == int(patch["singleStep"].text) == defaults.PATCH_MULTIPLE


def test_choice_lists_have_one_home() -> None:
    """Devices, precisions, uncertainty maps and skull stripping: the command line, the engine and the Slicer
    combo boxes all offer cldl.defaults' lists."""
    from cldl.commands.main import build_parser
    from cldl.inference.precision import PRECISIONS
    from cldl.method.distributions import UNCERTAINTY_MAPS

    assert [c.value for c in DeviceChoice] == list(defaults.DEVICES) and DeviceChoice.CPU.label() == "CPU"
    assert [c.value for c in PrecisionChoice] == list(defaults.PRECISIONS) == list(PRECISIONS)
    assert [c.value for c in UncertaintyMapChoice] == list(defaults.UNCERTAINTY_MAPS) == list(UNCERTAINTY_MAPS)
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    choices = {
        (name, action.dest): tuple(action.choices)
        for name, command in commands.items()
        for action in command._actions
        if action.choices and action.dest in ("device", "precision", "uncertainty_map", "skull_strip")
    }
    expected = {
        "device": defaults.DEVICES,
        "precision": defaults.PRECISIONS,
        "uncertainty_map": defaults.UNCERTAINTY_MAPS,
        "skull_strip": defaults.SKULL_STRIP_CHOICES,
    }
    assert {dest for _, dest in choices} == set(expected)
    for (name, dest), offered in choices.items():
        assert offered == expected[dest], (name, dest)
