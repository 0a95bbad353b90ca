"""Export a run's checkpoint as a model file to ship: the weights and provenance, without the training state.

Usage: .venv/bin/python scripts/export_model.py RUN/last.pt OUT.pt [--note TEXT]
(the bundled ``brats-anatomy`` was exported this way; docs/default_model.md)
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from cldl.checkpoint import load_checkpoint, save_checkpoint
from cldl.registry import sha256_of


def export(source: Path, target: Path, note: str | None = None) -> str:
    """Write ``source`` without its training state to ``target`` (never over an existing file); returns its sha256."""
    if target.exists():
        raise FileExistsError(f"{target} exists; choose another name")
    checkpoint = load_checkpoint(source)
    provenance = dict(checkpoint.provenance)
    provenance["exported_from"] = {"path": str(source), "sha256": sha256_of(source)}
    if note:
        provenance["note"] = note
    save_checkpoint(dataclasses.replace(checkpoint, training_state=None, provenance=provenance), target)
    return sha256_of(target)


def main() -> int:
    """Command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path)
    parser.add_argument("target", type=Path)
    parser.add_argument("--note", help="a sentence kept in the provenance (how the run was made)")
    args = parser.parse_args()
    try:
        digest = export(args.source, args.target, args.note)
    except (OSError, ValueError) as exc:
        print(f"export_model: error: {exc}", file=sys.stderr)
        return 1
    print(f"{args.target}: {args.target.stat().st_size / 1e6:.1f} MB, sha256 {digest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
