"""``cldl info``: engine, torch and device facts (the Slicer modules run it in a subprocess)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .. import __version__
from ..events import Reporter
from .common import clean_json


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """The ``cldl info`` command and its flags."""
    info = subparsers.add_parser(
        "info",
        help="engine, torch and device facts (and checkpoint descriptions)",
        description="Report the engine version, whether torch is installed and new enough, the device 'auto' "
        "picks, and what each given checkpoint holds; --json prints one JSON object (for the Slicer modules).",
    )
    info.add_argument("--checkpoint", type=Path, action="append", default=[], help="checkpoint to describe")
    info.add_argument("--json", action="store_true", help="print one JSON object")


def run(args: argparse.Namespace, reporter: Reporter) -> int:
    """``cldl info``: run in a subprocess by the Slicer modules, so that torch never loads inside Slicer."""
    import importlib.metadata

    from ..defaults import TORCH_REQUIREMENT, torch_supported

    facts: dict = {"event": "info", "cldl": __version__, "torch_requirement": TORCH_REQUIREMENT, "checkpoints": []}
    try:
        version = importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        version = None
    facts["torch"] = {"installed": version is not None, "version": version, "cuda": False, "device": "cpu"}
    if version is not None:
        import torch

        cuda = bool(torch.cuda.is_available())
        facts["torch"].update(
            supported=torch_supported(version),
            cudaVersion=torch.version.cuda,
            cuda=cuda,
            device="cuda" if cuda else "cpu",
            deviceName=torch.cuda.get_device_name(0) if cuda else "CPU",
        )
    for path in args.checkpoint:
        entry: dict = {"path": str(path.resolve())}
        try:
            entry.update(_describe_checkpoint(path, torch_installed=version is not None))
        except (ValueError, OSError, RuntimeError) as exc:
            entry["error"] = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        facts["checkpoints"].append(entry)
    if args.json:
        print(json.dumps(clean_json(facts)))
    else:
        torch_line = f"torch {version} on {facts['torch']['device']}" if version else "torch: not installed"
        print(f"cldl {__version__}; {torch_line} (needs {TORCH_REQUIREMENT})")
        for entry in facts["checkpoints"]:
            print(f"{entry['path']}: {entry.get('error') or entry['task']['name']}")
    return 0


def _describe_checkpoint(path: Path, torch_installed: bool) -> dict:
    """Task, patch size and epoch of a checkpoint: fully loaded (weights_only) with torch, else from its header."""
    if not torch_installed:
        from ..checkpoint_header import describe_checkpoint

        return describe_checkpoint(path)
    from ..checkpoint import load_checkpoint

    checkpoint = load_checkpoint(path)
    return {
        "task": checkpoint.task.to_dict(),
        "patch_size": list(checkpoint.patch_size),
        "epoch": checkpoint.provenance.get("epoch"),
    }
