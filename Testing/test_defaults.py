"""Defaults have one home: the trainer's and the CLI's defaults are read from cldl.defaults."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
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
