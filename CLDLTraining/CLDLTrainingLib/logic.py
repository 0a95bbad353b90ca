"""Companion training: ``cldl train`` (or ``torchrun ... -m cldl train`` for several GPUs) in a subprocess.

The same JSON-lines events as segmentation drive a :class:`TrainingHandle` (progress, per-epoch metrics, stop);
with a scene, the metrics also feed live plot charts (:class:`~CLDLTrainingLib.charts.TrainingCurves`).
Qt-free: the module passes ``qt.QTimer.singleShot`` so that handles advance by themselves in Slicer; in a
plain Python (``PythonSlicer``) call ``handle.wait()`` or ``handle.poll()``.

>>> handle = TrainingLogic().train("/data/BraTS2018/Training", "brats", "/runs/brats", overrides={"epochs": 50})
>>> handle.progress, handle.metrics[-1]["dice_mean"]
>>> handle.stop()
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from CLDLSegmentationLib.process import (
    JsonLinesProcess,
    ProcessError,
    engineCommand,
    engineEnvironment,
    pythonExecutable,
    schedulePolling,
)
from CLDLSegmentationLib.run import EngineRun

from cldl.config_files import load_config, resolve_extends
from cldl.defaults import CURRICULUM_MODES, CUSTOM_TASK, check_patch_size

from .charts import TrainingCurves

#: The file in a run folder whose appearance stops the run gracefully (``cldl train --stop-file``).
STOP_FILE = ".cldl-stop"
#: Override keys a resumed run accepts (the engine keeps the rest of the saved config).
RESUME_OVERRIDES = ("epochs", "device")


def buildConfig(
    dataDir: str | Path | None,
    task: str | None,
    config: str | Path | Mapping[str, Any] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A ``cldl train`` config: the base ``config`` (file, preset name or dict; engine defaults if None; its
    ``extends`` chain resolved as the engine does, so the result stands alone) with ``overrides`` keyed by
    ``TrainConfig`` field names (``epochs``, ``iters_per_epoch``, ``patch_size``, ``lr``, ...).

    ``dataDir`` replaces any synthetic-phantom setting of the base config; without it the base must define
    ``phantoms``. Values are checked again by the engine (``TrainConfig``), which names any bad key.
    """
    values: dict[str, Any] = {}
    if isinstance(config, Mapping):
        values.update(resolve_extends(config))
    elif config is not None:
        values.update(load_config(config))
    if task:
        values["task"] = str(task)
    if dataDir:
        values["data"] = str(Path(dataDir).resolve())
        values["phantoms"] = None
    elif not values.get("data") and not values.get("phantoms"):
        raise ValueError("choose a dataset folder (or a config that trains on synthetic phantoms)")
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    if "patch_size" in overrides:
        overrides["patch_size"] = check_patch_size(overrides["patch_size"])
    if "lr" in overrides and float(overrides["lr"]) <= 0:
        raise ValueError(f"the learning rate must be positive, got {overrides['lr']}")
    if overrides.get("curriculum", CURRICULUM_MODES[0]) not in CURRICULUM_MODES:
        raise ValueError(f"curriculum must be one of {CURRICULUM_MODES}, got {overrides['curriculum']!r}")
    values.update(overrides)
    return values


def trainingOverrides(parameters: Any, resume: bool = False) -> dict[str, Any]:
    """The panel's settings as ``TrainConfig`` overrides: a resumed run takes only its epochs and device; the device
    is left to ``torchrun`` (CUDA, one rank per GPU) when several GPUs are asked for."""
    device = None if parameters.gpus > 1 else getattr(parameters.device, "value", parameters.device)
    if resume:
        return {"epochs": parameters.epochs, "device": device}
    return {
        "epochs": parameters.epochs,
        "iters_per_epoch": parameters.itersPerEpoch,
        "patch_size": parameters.patchSize,
        "lr": parameters.learningRate,
        "curriculum": parameters.curriculum,
        "device": device,
    }


def isSet(path: str | Path | None) -> bool:
    """Whether a path setting holds a path (not empty, not the ``.`` an empty ``Path()`` prints as)."""
    return path is not None and str(path) not in ("", ".")


def runExists(outDir: str | Path | None) -> bool:
    """Whether a run folder holds a run to resume (its ``last.pt``)."""
    return isSet(outDir) and (Path(outDir) / "last.pt").is_file()


def resolveTask(task: str, dataDir: str | Path) -> str:
    """The engine's task argument: a built-in name, or for ``custom`` the dataset folder's ``dataset.json``."""
    return str(Path(dataDir) / "dataset.json") if task == CUSTOM_TASK else task


def trainCommand(
    configPath: str | Path | None,
    outDir: str | Path,
    gpus: int = 1,
    resume: bool = False,
    epochs: int | None = None,
    device: str | None = None,
    python: str | None = None,
    stopFile: str | Path | None = None,
) -> list[str]:
    """The argument list of a run: ``python -m cldl train ...`` or, for ``gpus > 1``, ``torchrun`` with N ranks;
    ``stopFile``: the engine stops gracefully once it exists (how Stop works on Windows)."""
    python = python or pythonExecutable()
    if gpus < 1:
        raise ValueError(f"gpus must be >= 1, got {gpus}")
    launcher = [python, "-m"]
    if gpus > 1:
        launcher += ["torch.distributed.run", "--standalone", f"--nproc_per_node={gpus}", "-m"]
    args = launcher + ["cldl", "train", "--out", str(outDir)]
    if resume:
        args.append("--resume")
    elif configPath is None:
        raise ValueError("a new run needs a config file")
    else:
        args += ["--config", str(configPath)]
    if resume and epochs is not None:
        args += ["--epochs", str(int(epochs))]
    if resume and device is not None:
        args += ["--device", device]
    if stopFile is not None:
        args += ["--stop-file", str(stopFile)]
    return args + ["--progress", "jsonl"]


class TrainingHandle(EngineRun):
    """A running (or finished) training run.

    ``progress`` (0..1), ``epoch``, ``totalEpochs``, ``metrics`` (one dict per finished epoch), ``status``
    (``running``, ``completed``, ``stopped``, ``failed``), ``result`` (the engine's summary), ``error``;
    :meth:`poll` handles new events, :meth:`wait` blocks, :meth:`stop` ends the run.
    """

    logPrefix = "CLDL training"

    def __init__(
        self,
        process: JsonLinesProcess,
        outDir: Path,
        totalEpochs: int | None,
        curves: TrainingCurves | None = None,
        onProgress: Callable[[float, str], None] | None = None,
        onLog: Callable[[str], None] | None = None,
        onMetrics: Callable[[dict[str, Any]], None] | None = None,
        onFinished: Callable[[TrainingHandle], None] | None = None,
    ) -> None:
        super().__init__(process, onProgress, onLog, onFinished)
        self.outDir = outDir
        self.totalEpochs = totalEpochs
        self.curves = curves
        self.onMetrics = onMetrics
        self.epoch = 0
        self.metrics: list[dict[str, Any]] = []
        self.result: dict[str, Any] | None = None
        self.stopRequested = False

    @property
    def bestCheckpoint(self) -> Path:
        """``best.pt`` of the run (exists once the first epoch with validation, or the run, has finished)."""
        return self.outDir / "best.pt"

    def wait(self, timeout: float | None = None, interval: float = 0.2) -> TrainingHandle:
        """Block until the run ends; raises its error if it failed (on timeout the run goes on: see stop())."""
        return super().wait(timeout, interval)

    def stop(self, force: bool = False) -> None:
        """End the run: a stop request to the engine (it checkpoints the current step into ``last.pt`` for
        resuming), or, with ``force`` (or a second call), kill the whole process tree.

        SIGTERM to the process group for one process; SIGUSR1 under ``torchrun``, whose agent would forward a
        second SIGTERM (the engine's "kill now") while SIGUSR1 reaches each worker once and simply ends the agent.
        On Windows the run's stop file (``--stop-file``), which every rank polls after each step."""
        if self.status != "running":
            return
        if force or self.stopRequested:
            self.process.cancel()
        else:
            self.process.requestStop("SIGUSR1" if "torch.distributed.run" in self.process.command else "SIGTERM")
        self.stopRequested = True
        self._log("stop requested" + (" (killing the process tree)" if force else ""))

    def _onEvent(self, event: dict[str, Any]) -> None:
        kind = event.get("event")
        if kind == "progress":
            stage = str(event.get("stage", ""))
            done, total = int(event.get("done") or 0), max(int(event.get("total") or 1), 1)
            if stage == "train":
                self.epoch = int(event.get("epoch") or self.epoch or 1)
                fraction = self.progress
                if self.totalEpochs:
                    fraction = min(1.0, (self.epoch - 1 + done / total) / self.totalEpochs)
                loss = event.get("loss")
                lossText = f", loss {loss:.4f}" if isinstance(loss, (int, float)) else ""
                of = f"/{self.totalEpochs}" if self.totalEpochs else ""
                self._report(fraction, f"epoch {self.epoch}{of}, iteration {done}/{total}{lossText}")
            else:
                self._report(self.progress, f"{stage} {done}/{total}")
        elif kind == "metrics":
            record = {k: v for k, v in event.items() if k not in ("event", "stage")}
            self.metrics.append(record)
            if self.curves is not None:
                self.curves.addRecord(record)
            if self.onMetrics is not None:
                self.onMetrics(record)
            dice = record.get("dice_mean")
            self._log(
                f"epoch {record.get('epoch')}: loss {record.get('loss_total', float('nan')):.4f}"
                + (f", validation mean Dice {dice:.4f}" if isinstance(dice, (int, float)) else "")
            )
        elif kind == "result":
            self.result = {k: v for k, v in event.items() if k != "event"}
        else:
            super()._onEvent(event)

    def _finish(self) -> None:
        code = self.process.returncode
        if code == 0:
            self.status = "stopped" if (self.result or {}).get("stopped") else "completed"
            self._report(1.0 if self.status == "completed" else self.progress, f"{self.status}: {self.outDir}")
        elif self.stopRequested:
            self.status = "stopped"
            self._report(self.progress, f"stopped after epoch {len(self.metrics)}; resume to continue")
        else:
            self._fail(
                ProcessError(
                    f"{self.process.errorMessage()} (exit status {code})", returncode=code, stderr=self.process.stderr
                )
            )


class TrainingLogic:
    """Start CLDL training runs from Slicer (GUI or console) or from ``PythonSlicer``.

    ``scene``: where the training charts go (default ``slicer.mrmlScene`` when it exists; None for no charts);
    ``singleShot``: a ``(ms, callback)`` timer (``qt.QTimer.singleShot``) that polls running handles.
    """

    def __init__(
        self,
        scene=None,
        python: str | None = None,
        singleShot: Callable[[int, Callable[[], None]], None] | None = None,
        charts: bool = True,
    ) -> None:
        self._scene = scene
        self.python = python
        self.singleShot = singleShot
        self.charts = charts

    @property
    def scene(self):
        """The scene of the charts, or None."""
        if self._scene is not None:
            return self._scene
        try:
            import slicer

            return getattr(slicer, "mrmlScene", None)
        except ImportError:  # pragma: no cover - plain Python without slicer
            return None

    def train(
        self,
        dataDir: str | Path | None,
        task: str | None,
        outDir: str | Path,
        config: str | Path | Mapping[str, Any] | None = None,
        overrides: Mapping[str, Any] | None = None,
        gpus: int = 1,
        wait: bool = False,
        resume: bool = False,
        name: str | None = None,
        onProgress: Callable[[float, str], None] | None = None,
        onLog: Callable[[str], None] | None = None,
        onMetrics: Callable[[dict[str, Any]], None] | None = None,
        onFinished: Callable[[TrainingHandle], None] | None = None,
    ) -> TrainingHandle:
        """Start (or, with ``resume=True``, continue) a run in ``outDir``; returns its :class:`TrainingHandle`.

        ``task``: ``brats``, ``mmwhs_ct``, ``mmwhs_mr``, ``binary`` or a ``dataset.json``. ``config``: a base
        JSON/YAML config or dict (engine defaults: the paper's method); ``overrides``: ``TrainConfig`` fields
        that replace its values (a resumed run accepts only ``epochs`` and ``device``). ``gpus > 1`` launches
        ``torchrun`` with one rank per GPU. ``wait=True`` blocks until the run ends.
        """
        outDir = Path(outDir).resolve()
        overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
        if resume:
            saved = outDir / "config.json"
            if not saved.is_file():
                raise ValueError(f"{outDir} holds no run to resume (no config.json)")
            extra = sorted(set(overrides) - set(RESUME_OVERRIDES))
            if extra:
                raise ValueError(f"a resumed run keeps its config; only {RESUME_OVERRIDES} may change, not {extra}")
            epochs = overrides.get("epochs")
            totalEpochs = int(epochs or json.loads(saved.read_text()).get("epochs") or 0) or None
            command = trainCommand(
                None, outDir, gpus, True, epochs, overrides.get("device"), self.python, outDir / STOP_FILE
            )
        else:
            if runExists(outDir):
                raise ValueError(f"{outDir} already holds a run: resume it or choose another output folder")
            values = buildConfig(dataDir, task, config, overrides)
            if gpus > 1:
                values["device"] = "cuda"
            outDir.mkdir(parents=True, exist_ok=True)
            configPath = outDir / "requested_config.json"
            configPath.write_text(json.dumps(values, indent=2))
            totalEpochs = int(values["epochs"]) if "epochs" in values else None
            command = trainCommand(configPath, outDir, gpus, False, python=self.python, stopFile=outDir / STOP_FILE)
        curves = None
        scene = self.scene if self.charts else None
        if scene is not None:
            curves = TrainingCurves(scene, name or f"CLDL {outDir.name}")
            if resume:
                curves.loadLog(outDir / "metrics.jsonl")
        (outDir / STOP_FILE).unlink(missing_ok=True)  # a stop request of an earlier run of this folder
        process = JsonLinesProcess(command, env=engineEnvironment(), cwd=outDir, stopFile=outDir / STOP_FILE)
        handle = TrainingHandle(process, outDir, totalEpochs, curves, onProgress, onLog, onMetrics, onFinished)
        handle._log("running " + " ".join(command[1:]))
        process.start()
        if wait:
            return handle.wait()
        if self.singleShot is not None:
            schedulePolling(handle.poll, self.singleShot, ms=500)
        return handle

    def checkDataset(
        self,
        dataDir: str | Path,
        task: str,
        onDone: Callable[[dict[str, Any] | None, str | None], None],
        quick: bool = True,
        onLog: Callable[[str], None] | None = None,
    ) -> JsonLinesProcess:
        """``cldl datasets check`` in a subprocess (the engine reads the folder; torch never loads here):
        ``onDone(report, None)`` with the engine's report (``CheckReport.to_dict``) or ``onDone(None, error)``
        (not called once cancelled).
        ``quick``: file names only (seconds); otherwise every file is read and each report line goes to ``onLog``.
        Without a timer (``singleShot``) it blocks until the check has ended."""
        process = JsonLinesProcess(datasetCheckCommand(dataDir, task, quick, self.python), env=engineEnvironment())
        process.start()

        def poll() -> bool:
            for event in process.poll():
                if event.get("event") == "log" and onLog is not None and event.get("stream") != "stderr":
                    onLog(str(event.get("message")))
            if process.running:
                return True
            report = process.result()
            if process.cancelled:  # a newer check replaced this one: nothing to report
                return False
            if report is not None:
                onDone({k: v for k, v in report.items() if k != "event"}, None)
            else:
                onDone(None, process.errorMessage())
            return False

        if self.singleShot is None:
            process.wait()
            poll()
        else:
            schedulePolling(poll, self.singleShot, ms=200)
        return process


def datasetCheckCommand(dataDir: str | Path, task: str, quick: bool = False, python: str | None = None) -> list[str]:
    """``cldl datasets check DIR --task T --progress jsonl [--quick]``: the report as log lines and a result event."""
    arguments = ["datasets", "check", str(dataDir), "--task", str(task), "--progress", "jsonl"]
    return engineCommand(arguments + (["--quick"] if quick else []), python)


def describeDatasetReport(report: dict[str, Any]) -> str:
    """One line for the panel from the engine's dataset report: cases, labelled cases, layout, problems."""
    text = (
        f"{report.get('cases', 0)} cases found ({report.get('labelled', 0)} with a label map); "
        f"layout: {report.get('layout')}, task {report.get('task')}"
    )
    problems = report.get("problems") or []
    if problems:
        text += f"; {len(problems)} problem(s), first: {problems[0]}"
    return text
