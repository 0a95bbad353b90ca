"""Live training curves as MRML plots: a table per chart, one plot series per metric, two chart nodes.

``losses`` (every epoch): ``loss_total``, ``loss_ce``, ``loss_dice``, ``loss_ldl1..3``; ``validation`` (epochs
with validation): ``dice_<region>`` and ``dice_mean``. Columns appear when a metric first shows up; a value a
row lacks is NaN.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import slicer
import vtk

PALETTE = (
    (0.90, 0.30, 0.25),
    (0.25, 0.55, 0.90),
    (0.30, 0.75, 0.35),
    (0.95, 0.70, 0.20),
    (0.60, 0.40, 0.85),
    (0.20, 0.75, 0.80),
    (0.85, 0.45, 0.70),
    (0.55, 0.55, 0.55),
)
X_COLUMN = "epoch"


def _isNumber(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class _Plot:
    """One table + chart pair whose series are the table's columns."""

    def __init__(self, scene, name: str, title: str, yTitle: str, prefixes: tuple[str, ...], logScale: bool) -> None:
        self.scene = scene
        self.prefixes = prefixes
        self.table = scene.AddNewNodeByClass("vtkMRMLTableNode", scene.GenerateUniqueName(f"{name} table"))
        self.chart = scene.AddNewNodeByClass("vtkMRMLPlotChartNode", scene.GenerateUniqueName(f"{name} chart"))
        self.chart.SetTitle(title)
        self.chart.SetXAxisTitle("epoch")
        self.chart.SetYAxisTitle(yTitle)
        self.chart.SetYAxisLogScale(logScale)
        self.chart.SetLegendVisibility(True)
        if not logScale:
            self.chart.SetYAxisRangeAuto(False)
            self.chart.SetYAxisRange(0.0, 1.0)
        self.series: dict[str, Any] = {}
        self._column(X_COLUMN)

    def wants(self, key: str) -> bool:
        return key.startswith(self.prefixes)

    def _column(self, key: str):
        table = self.table.GetTable()
        column = table.GetColumnByName(key)
        if column is None:
            column = vtk.vtkDoubleArray()
            column.SetName(key)
            column.SetNumberOfTuples(table.GetNumberOfRows())
            column.Fill(math.nan)
            table.AddColumn(column)
            if key != X_COLUMN:
                self._addSeries(key)
        return column

    def _addSeries(self, key: str) -> None:
        series = self.scene.AddNewNodeByClass("vtkMRMLPlotSeriesNode", self.scene.GenerateUniqueName(key))
        series.SetAndObserveTableNodeID(self.table.GetID())
        series.SetXColumnName(X_COLUMN)
        series.SetYColumnName(key)
        series.SetPlotType(slicer.vtkMRMLPlotSeriesNode.PlotTypeScatter)
        series.SetMarkerStyle(slicer.vtkMRMLPlotSeriesNode.MarkerStyleCircle)
        series.SetMarkerSize(5)
        series.SetLineWidth(2)
        series.SetColor(*PALETTE[len(self.series) % len(PALETTE)])
        self.chart.AddAndObservePlotSeriesNodeID(series.GetID())
        self.series[key] = series

    def addRow(self, epoch: float, values: dict[str, float]) -> None:
        for key in values:
            self._column(key)
        table = self.table.GetTable()
        for c in range(table.GetNumberOfColumns()):
            column = table.GetColumn(c)
            name = column.GetName()
            column.InsertNextValue(float(epoch) if name == X_COLUMN else float(values.get(name, math.nan)))
        table.Modified()
        self.table.Modified()

    @property
    def rows(self) -> int:
        return self.table.GetTable().GetNumberOfRows()

    def remove(self) -> None:
        for node in [*self.series.values(), self.chart, self.table]:
            self.scene.RemoveNode(node)


class TrainingCurves:
    """Loss and validation-Dice charts of one training run, updated from ``metrics`` events.

    >>> curves = TrainingCurves(slicer.mrmlScene, "run 1")
    >>> curves.addRecord({"event": "metrics", "stage": "epoch", "epoch": 1, "loss_total": 3.2, "dice_WT": 0.4})
    """

    def __init__(self, scene, name: str = "CLDL training") -> None:
        self.scene = scene
        self.name = name
        self.losses = _Plot(scene, f"{name} losses", f"{name}: training losses", "loss", ("loss_",), True)
        self.validation = _Plot(scene, f"{name} validation", f"{name}: validation Dice", "Dice", ("dice_",), False)

    @property
    def charts(self) -> list:
        """The two chart nodes (losses, validation)."""
        return [self.losses.chart, self.validation.chart]

    def addRecord(self, record: dict[str, Any]) -> None:
        """Append one epoch (a ``metrics`` event or a ``metrics.jsonl`` row)."""
        epoch = record.get("epoch")
        if not _isNumber(epoch):
            return
        for plot in (self.losses, self.validation):
            values = {k: float(v) for k, v in record.items() if plot.wants(k) and _isNumber(v)}
            if values:
                plot.addRow(float(epoch), values)

    def addRecords(self, records: Iterable[dict[str, Any]]) -> None:
        """Append several epochs."""
        for record in records:
            self.addRecord(record)

    def loadLog(self, path: str | Path) -> int:
        """Append the epochs of a run's ``metrics.jsonl`` (e.g. before resuming); returns how many."""
        path = Path(path)
        if not path.is_file():
            return 0
        records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        self.addRecords(records)
        return len(records)

    def remove(self) -> None:
        """Delete the tables, series and charts from the scene."""
        self.losses.remove()
        self.validation.remove()
