"""Tables and figures of the evidence study over the finished runs of an ``cldl ablate`` output folder.

* ``cases.csv``: one row per variant, seed and test case with every metric;
* ``results.csv`` / ``results.json``: per variant and metric the mean +- sd over seeds (of the per-seed means over
  the test cases) and, against the baseline, the paired per-case comparison (:mod:`cldl.study.statistics`);
* ``figures/metrics.png`` (bars: mean over seeds, error bars: sd), ``figures/reliability.png`` (accuracy against
  confidence over the brain voxels of all test cases and seeds), ``figures/qualitative.png`` (one axial slice of the
  first test case: image, reference and each variant's first-seed prediction).
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from ..files.atomic_writes import atomic_path
from .statistics import paired_comparison, seed_summary

TABLE_FIELDS = ("variant", "metric", "mean", "std", "n_seeds", "mean_diff", "p_value", "rank_biserial", "n_pairs")


def load_results(out: Path) -> list[dict[str, Any]]:
    """Every finished run's ``result.json`` under ``out/runs``, in variant then seed order."""
    return [json.loads(p.read_text()) for p in sorted((out / "runs").glob("*/seed*/result.json"))]


def _metric_names(results: list[dict[str, Any]]) -> list[str]:
    """Metric names in first-seen order."""
    names: dict[str, None] = {}
    for result in results:
        for row in result["cases"]:
            names.update(dict.fromkeys(k for k in row if k != "case_id"))
    return list(names)


def _value(row: dict[str, Any], metric: str) -> float:
    """A metric of a case row as float (missing or null: NaN)."""
    value = row.get(metric)
    return math.nan if value is None else float(value)


def _case_means(results: list[dict[str, Any]], variant: str, metric: str, seeds: set[int]) -> dict[str, float]:
    """Per test case, the metric averaged over ``seeds`` (NaNs ignored)."""
    values: dict[str, list[float]] = {}
    for result in results:
        if result["variant"] == variant and result["seed"] in seeds:
            for row in result["cases"]:
                values.setdefault(row["case_id"], []).append(_value(row, metric))
    return {case: _nanmean(v) for case, v in values.items()}


def _nanmean(values: list[float]) -> float:
    """Mean ignoring NaNs (NaN when none is finite)."""
    finite = [v for v in values if math.isfinite(v)]
    return float(np.mean(finite)) if finite else math.nan


def summary_table(results: list[dict[str, Any]], baseline: str) -> list[dict[str, Any]]:
    """One row per variant and metric: mean +- sd over seeds and the paired comparison with ``baseline``."""
    variants = list(dict.fromkeys(r["variant"] for r in results))
    rows = []
    for variant in variants:
        mine = [r for r in results if r["variant"] == variant]
        shared = {r["seed"] for r in mine} & {r["seed"] for r in results if r["variant"] == baseline}
        for metric in _metric_names(results):
            row = {"variant": variant, "metric": metric}
            row.update(seed_summary([_nanmean([_value(c, metric) for c in r["cases"]]) for r in mine]))
            if variant != baseline and shared:
                ours, theirs = (
                    _case_means(results, variant, metric, shared),
                    _case_means(results, baseline, metric, shared),
                )
                cases = sorted(set(ours) & set(theirs))
                row.update(paired_comparison([ours[c] for c in cases], [theirs[c] for c in cases]))
            rows.append(row)
    return rows


def _json_safe(value: Any) -> Any:
    """NaN becomes None (strict JSON)."""
    return None if isinstance(value, float) and not math.isfinite(value) else value


def write_report(out: Path, baseline: str) -> dict[str, Any]:
    """Write the tables and figures of every finished run in ``out``; returns their paths."""
    results = load_results(out)
    if not results:
        return {"tables": [], "figures": []}
    table = summary_table(results, baseline)
    metrics = _metric_names(results)
    with atomic_path(out / "cases.csv") as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["variant", "seed", "case_id", *metrics])
        for result in results:
            for row in result["cases"]:
                values = [_value(row, m) for m in metrics]
                writer.writerow([result["variant"], result["seed"], row["case_id"], *values])
    with atomic_path(out / "results.csv") as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=TABLE_FIELDS)
        writer.writeheader()
        writer.writerows(table)
    runs = [{k: r[k] for k in ("variant", "seed", "train_seconds", "eval_seconds")} for r in results]
    document = {"baseline": baseline, "runs": runs, "table": [{k: _json_safe(v) for k, v in r.items()} for r in table]}
    with atomic_path(out / "results.json") as tmp:
        tmp.write_text(json.dumps(document, indent=1))
    figures = write_figures(out, results, table)
    return {"tables": [str(out / n) for n in ("results.csv", "results.json", "cases.csv")], "figures": figures}


def write_figures(out: Path, results: list[dict[str, Any]], table: list[dict[str, Any]]) -> list[str]:
    """The bar chart, the reliability diagrams and the qualitative slices (PNG) in ``out/figures``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder = out / "figures"
    folder.mkdir(exist_ok=True)
    variants = list(dict.fromkeys(r["variant"] for r in results))
    paths = []
    for name, draw in (("metrics", _bars), ("reliability", _reliability), ("qualitative", _qualitative)):
        figure = draw(plt, out, variants, results, table)
        with atomic_path(folder / f"{name}.png") as tmp:
            figure.savefig(tmp, dpi=80, format="png")
        plt.close(figure)
        paths.append(str(folder / f"{name}.png"))
    return paths


def _bars(plt: Any, out: Path, variants: list[str], results: list[dict[str, Any]], table: list[dict[str, Any]]):
    """One panel per metric: a bar per variant (mean over seeds) with the sd as error bar."""
    metrics = list(dict.fromkeys(r["metric"] for r in table))
    columns = 6
    rows = math.ceil(len(metrics) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(3 * columns, 2.6 * rows), squeeze=False)
    for ax, metric in zip(axes.ravel(), metrics):
        entries = {r["variant"]: r for r in table if r["metric"] == metric}
        means = [entries[v]["mean"] for v in variants]
        stds = [entries[v]["std"] for v in variants]
        ax.bar(range(len(variants)), means, yerr=stds, capsize=3, color=[f"C{i}" for i in range(len(variants))])
        ax.set_xticks(range(len(variants)), variants, rotation=45, ha="right", fontsize=7)
        ax.set_title(metric, fontsize=9)
    for ax in axes.ravel()[len(metrics) :]:
        ax.axis("off")
    figure.tight_layout()
    return figure


def _reliability(plt: Any, out: Path, variants: list[str], results: list[dict[str, Any]], table: list[dict[str, Any]]):
    """Accuracy against mean confidence per confidence bin, pooled over test cases and seeds, per variant."""
    figure, axes = plt.subplots(1, len(variants), figsize=(3 * len(variants), 3), squeeze=False)
    for ax, variant in zip(axes[0], variants):
        bins = sum(np.asarray(r["reliability"], dtype=np.float64) for r in results if r["variant"] == variant)
        filled = bins[2] > 0
        confidence, accuracy = bins[0][filled] / bins[2][filled], bins[1][filled] / bins[2][filled]
        ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1)
        ax.plot(confidence, accuracy, marker="o", markersize=3)
        ece = next((r["mean"] for r in table if r["variant"] == variant and r["metric"] == "ece"), math.nan)
        ax.set_title(f"{variant} (ECE {ece:.3f})", fontsize=9)
        ax.set_xlabel("confidence")
        ax.set_ylabel("accuracy")
    figure.tight_layout()
    return figure


def _qualitative(plt: Any, out: Path, variants: list[str], results: list[dict[str, Any]], table: list[dict[str, Any]]):
    """Image, reference and each variant's prediction (its lowest seed) on one axial slice of the first test case."""
    slices = {}
    for variant in variants:
        seed = min(r["seed"] for r in results if r["variant"] == variant)
        with np.load(out / "runs" / variant / f"seed{seed}" / "qualitative.npz") as data:
            slices[variant] = {k: data[k] for k in data.files}
    first = slices[variants[0]]
    panels = [("image", first["image"], "gray"), ("reference", first["reference"], "viridis")]
    panels += [(v, slices[v]["prediction"], "viridis") for v in variants]
    figure, axes = plt.subplots(1, len(panels), figsize=(2.4 * len(panels), 2.6), squeeze=False)
    for ax, (title, image, cmap) in zip(axes[0], panels):
        ax.imshow(image, cmap=cmap, vmin=None if cmap == "gray" else 0, vmax=None if cmap == "gray" else 3)
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    figure.tight_layout()
    return figure
