"""Export a run's checkpoint as a model file to ship: the weights and provenance, without the training state.

Usage: .venv/bin/python scripts/export_model.py RUN/last.pt [MORE.pt ...] OUT.pt [--note TEXT]
With several checkpoints of one run (states along its last, low learning-rate stretch), the exported weights are
their mean (stochastic weight averaging; Izmailov et al., 2018), the provenance that of the last one plus the list
``averaged_from`` (path, sha256, epoch of each). The bundled ``brats-anatomy`` was exported this way
(docs/default_model.md).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import torch

from cldl.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from cldl.registry import sha256_of


def averaged_weights(checkpoints: list[Checkpoint]) -> dict[str, torch.Tensor]:
    """The mean of the checkpoints' floating-point tensors (integer buffers from the last); they must be one network."""
    last = checkpoints[-1]

    def network(c: Checkpoint) -> tuple:
        return c.model_config, c.task, c.preprocess, c.patch_size, set(c.state_dict)

    for checkpoint in checkpoints[:-1]:
        if network(checkpoint) != network(last):
            raise ValueError(f"{checkpoint.path} and {last.path} are not the same network; average states of one run")
    weights = {}
    for key, value in last.state_dict.items():
        if value.is_floating_point():
            total = sum(checkpoint.state_dict[key].double() for checkpoint in checkpoints)
            weights[key] = (total / len(checkpoints)).to(value.dtype)
        else:
            weights[key] = value.clone()
    return weights


def export(sources: list[Path], target: Path, note: str | None = None) -> str:
    """Write the last of ``sources`` (weights averaged over all of them) without its training state to ``target``
    (never over an existing file); returns its sha256."""
    if target.exists():
        raise FileExistsError(f"{target} exists; choose another name")
    checkpoints = [load_checkpoint(source) for source in sources]
    digests = [sha256_of(source) for source in sources]
    checkpoint = checkpoints[-1]
    provenance = dict(checkpoint.provenance)
    provenance["exported_from"] = {"path": str(sources[-1]), "sha256": digests[-1]}
    weights = checkpoint.state_dict
    if len(checkpoints) > 1:
        weights = averaged_weights(checkpoints)
        provenance["averaged_from"] = [
            {"path": str(source), "sha256": digest, "epoch": c.provenance.get("epoch")}
            for source, digest, c in zip(sources, digests, checkpoints)
        ]
    if note:
        provenance["note"] = note
    exported = dataclasses.replace(checkpoint, state_dict=weights, training_state=None, provenance=provenance)
    save_checkpoint(exported, target)
    return sha256_of(target)


def main() -> int:
    """Command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sources", type=Path, nargs="+", metavar="source", help="checkpoint(s) of one run")
    parser.add_argument("target", type=Path)
    parser.add_argument("--note", help="a sentence kept in the provenance (how the run was made)")
    args = parser.parse_args()
    try:
        digest = export(args.sources, args.target, args.note)
    except (OSError, ValueError) as exc:
        print(f"export_model: error: {exc}", file=sys.stderr)
        return 1
    print(f"{args.target}: {args.target.stat().st_size / 1e6:.1f} MB, sha256 {digest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
