"""Accuracy of the bundled demo model on 20 fresh BraTS-like phantoms (seeds 20000-20019, never trained on).

Run: .venv/bin/python benchmarks/demo_model_accuracy.py [--model NAME_OR_PATH] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from cldl.commands.demo import evaluate_on_phantoms


def main() -> int:
    """Print mean +- std Dice and HD95 per region."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="model name or checkpoint (default: the bundled demo model)")
    parser.add_argument("--first-seed", type=int, default=20_000)
    parser.add_argument("--cases", type=int, default=20)
    parser.add_argument("--json", help="also write the per-case results here")
    args = parser.parse_args()
    started = time.perf_counter()
    result = evaluate_on_phantoms(args.model, range(args.first_seed, args.first_seed + args.cases), device="cpu")
    print(f"command: {' '.join(sys.argv)}")
    last = args.first_seed + args.cases - 1
    print(f"model: {result['model']}; {args.cases} phantoms, seeds {args.first_seed}..{last}")
    for region, values in result["summary"].items():
        dice, hd = values["dice"], values["hd95"]
        print(f"  {region}: Dice {dice['mean']:.3f} +- {dice['std']:.3f}   HD95 {hd['mean']:.2f} +- {hd['std']:.2f} mm")
    print(f"({time.perf_counter() - started:.0f} s on CPU)")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(result, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
