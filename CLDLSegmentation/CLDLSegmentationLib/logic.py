"""Segmenting volume nodes with a CLDL model: export, ``cldl segment`` subprocess, import, display.

Works with any MRML scene (the Slicer application's, or a plain ``vtkMRMLScene`` in tests) and without Qt:
non-blocking runs are advanced by :meth:`SegmentationJob.poll`, which the module calls from a Qt timer (or
pass ``singleShot=qt.QTimer.singleShot`` to :class:`SegmentationLogic`); ``wait=True`` blocks instead.

>>> logic = SegmentationLogic()
>>> result = logic.segment([flair, t1, t1ce, t2], wait=True)  # the engine registry's default model
>>> result.segmentationNode, result.uncertaintyNode
>>> queue = logic.segmentCases(findLoadedCases(scene, ("flair", "t1", "t1ce", "t2")), wait=True)  # every case
>>> queue.summary(), queue.results()
"""

from __future__ import annotations

import enum
import importlib.util
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import slicer

from cldl.defaults import DEVICES, OVERLAP, PRECISIONS, SKULL_STRIP_CHOICES, UNCERTAINTY_MAPS, reference_modality

from .cases import CaseQueue, CaseRun, LoadedCase
from .models import ModelInfo, defaultModel, describeModel
from .overlay import MAP_ATTRIBUTE, OVERLAY_ATTRIBUTE, OverlaySettings, showMap
from .process import (
    CancelledError,
    JsonLinesProcess,
    engineCommand,
    engineEnvironment,
    schedulePolling,
)
from .run import EngineRun
from .segmentations import classKeys, labelmapToSegmentation, showOutlines
from .volumes import checkInputs, exportVolume, importProbabilities, importVolume


def choiceEnum(name: str, values: Sequence[str], labels: Mapping[str, str], doc: str) -> type[enum.Enum]:
    """An enum of a ``cldl.defaults`` choice list (members ``AUTO``, ``CPU``, ...; the values in that order) whose
    ``label()`` is the text shown in its combo box: the engine's list is the only list."""
    if set(labels) != set(values):
        raise ValueError(f"{name}: labels for {sorted(labels)}, choices {list(values)}")
    choice = enum.Enum(name, [(value.upper(), value) for value in values], module=__name__)
    choice.__doc__ = doc
    choice.label = lambda self: labels[self.value]
    return choice


DeviceChoice = choiceEnum(
    "DeviceChoice",
    DEVICES,
    {"auto": "Auto (GPU if available)", "cpu": "CPU", "cuda": "GPU (CUDA)"},
    "Where the model runs.",
)
PrecisionChoice = choiceEnum(
    "PrecisionChoice",
    PRECISIONS,
    {
        "auto": "Auto (bf16 where the GPU or CPU has it)",
        "fp32": "fp32 (full precision)",
        "bf16": "bf16 (fast on recent CPUs and GPUs)",
    },
    "The network's arithmetic (``cldl segment --precision``).",
)
UncertaintyMapChoice = choiceEnum(
    "UncertaintyMapChoice",
    UNCERTAINTY_MAPS,
    {"entropy": "Normalised entropy", "max_prob": "1 - max probability"},
    "Which uncertainty map the engine writes.",
)


BRAIN_MASK_SEGMENT = "Brain mask"  # the segment a prepared run adds (hidden) so the mask can be checked


def preparationReference(modalities: Sequence[str]) -> int:
    """The index of the input the engine registers the others to; prepared results come back on its grid."""
    return list(modalities).index(reference_modality(modalities))


@dataclass(frozen=True)
class SegmentationOptions:
    """Engine options of one run (see ``cldl segment --help``)."""

    device: str = "auto"
    precision: str = "auto"
    tta: bool = False
    overlap: float = OVERLAP
    uncertaintyMap: str = "entropy"
    keepProbabilities: bool = False
    ldlMaps: bool = False  # the LDL stages' region maps (ambiguity and class fractions per region size)
    prepare: bool = False  # inputs are raw scans: co-register and skull-strip first (cldl segment --prepare)
    skullStrip: str = "auto"  # with prepare: auto, yes or no

    def __post_init__(self) -> None:
        if self.skullStrip not in SKULL_STRIP_CHOICES:
            raise ValueError(f"skullStrip must be one of {SKULL_STRIP_CHOICES}, got {self.skullStrip!r}")
        if self.device not in DEVICES:
            raise ValueError(f"device must be one of {list(DEVICES)}, got {self.device!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {self.precision!r}")
        if self.uncertaintyMap not in UNCERTAINTY_MAPS:
            raise ValueError(f"uncertaintyMap must be one of {list(UNCERTAINTY_MAPS)}, got {self.uncertaintyMap!r}")
        if not 0.0 <= self.overlap < 1.0:
            raise ValueError(f"overlap must be in [0, 1), got {self.overlap}")

    def arguments(self) -> list[str]:
        """Command-line arguments for these options."""
        args = ["--device", self.device, "--precision", self.precision, "--overlap", f"{self.overlap:g}"]
        args += ["--uncertainty-map", self.uncertaintyMap]
        if self.prepare:
            args += ["--prepare", "--skull-strip", self.skullStrip]
        return args + (["--tta"] if self.tta else [])


@dataclass
class SegmentationResult:
    """What a run added to the scene."""

    segmentationNode: Any
    segmentIds: dict[str, str]  # class key (abbreviation) -> segment id
    uncertaintyNode: Any
    probabilityNodes: dict[str, Any] = field(default_factory=dict)  # class key -> volume node
    summary: dict[str, Any] = field(default_factory=dict)  # the engine's result event
    model: ModelInfo | None = None
    ldlMapNodes: list[Any] = field(default_factory=list)  # region maps, coarsest stage first


def mapFileSuffix() -> str:
    """NIfTI (uint8, a quarter of float32) when nibabel is there for the engine to write it, else float NRRD."""
    return ".nii" if importlib.util.find_spec("nibabel") is not None else ".nrrd"


def importLdlMap(entry: Mapping[str, Any], scene, base: str, reference):
    """One region map of the result event as a 0..1 volume named by what it shows (``CLDL.Title``)."""
    title = str(entry["title"])
    mapVolume = importVolume(entry["path"], scene, f"{base} CLDL {title}")
    mapVolume.SetAttribute(MAP_ATTRIBUTE, "ldl")
    mapVolume.SetAttribute("CLDL.Title", title)
    mapVolume.SetAttribute("CLDL.Kind", str(entry.get("kind", "")))
    mapVolume.SetAndObserveTransformNodeID(reference.GetTransformNodeID())
    return mapVolume


def addBrainMaskSegment(segmentationNode, maskNode) -> str:
    """Add a prepared run's brain mask (a label map node, removed afterwards) to the segmentation as one segment,
    hidden, so that it can be shown, checked and corrected; returns its segment id."""
    scene = maskNode.GetScene()
    segmentation = segmentationNode.GetSegmentation()
    before = {segmentation.GetNthSegmentID(n) for n in range(segmentation.GetNumberOfSegments())}
    try:
        if not slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(
            maskNode, segmentationNode, ""
        ):
            raise RuntimeError(f"could not import the brain mask into {segmentationNode.GetName()}")
    finally:
        scene.RemoveNode(maskNode)
    added = [
        segmentation.GetNthSegmentID(n)
        for n in range(segmentation.GetNumberOfSegments())
        if segmentation.GetNthSegmentID(n) not in before
    ]
    if len(added) != 1:
        raise RuntimeError(f"the brain mask gave {len(added)} segments, expected 1")
    segment = segmentation.GetSegment(added[0])
    segment.SetName(BRAIN_MASK_SEGMENT)
    segment.SetColor(0.9, 0.9, 0.6)
    segment.SetTag("CLDL.Role", "brain mask")
    segmentationNode.GetDisplayNode().SetSegmentVisibility(added[0], False)
    return added[0]


class SegmentationJob(EngineRun):
    """One running segmentation: progress, log, cancel, and the result once imported.

    ``status`` goes ``running`` -> ``completed`` | ``failed`` | ``cancelled``; :meth:`poll` advances it (and
    imports the results into the scene when the engine is done) and returns whether the job is still running.
    """

    def __init__(
        self,
        logic: SegmentationLogic,
        process: JsonLinesProcess,
        inputs: list,
        model: ModelInfo,
        options: SegmentationOptions,
        workDir: Path,
        outputs: dict[str, Path],
        outputSegmentation=None,
        show: bool = True,
        keepFiles: bool = False,
        onProgress: Callable[[float, str], None] | None = None,
        onLog: Callable[[str], None] | None = None,
        onFinished: Callable[[SegmentationJob], None] | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(process, onProgress, onLog, onFinished)
        self.name = name
        self.logic = logic
        self.inputs = inputs
        self.model = model
        self.options = options
        self.workDir = workDir
        self.outputs = outputs
        self.outputSegmentation = outputSegmentation
        self.show = show
        self.keepFiles = keepFiles
        self.result: SegmentationResult | None = None

    def cancel(self) -> None:
        """Kill the engine and all its processes; the job ends as ``cancelled``."""
        if self.status == "running":
            self.process.cancel()
            deadline = time.monotonic() + 10.0  # the process is gone; its output pipes close at once
            while self.poll() and time.monotonic() < deadline:
                time.sleep(0.02)

    def _onTimeout(self) -> None:
        self.cancel()

    def _outcome(self) -> SegmentationResult | None:
        return self.result

    def _onEvent(self, event: dict[str, Any]) -> None:
        kind = event.get("event")
        if kind == "progress":
            total = max(int(event.get("total") or 1), 1)
            done = int(event.get("done") or 0)
            self._report(0.05 + 0.85 * done / total, f"{event.get('stage', 'working')} {done}/{total}")
        elif kind == "result":
            self._log(
                f"segmented in {event.get('seconds')} s on {event.get('device')}; volumes (ml): "
                + ", ".join(f"{k} {v:.1f}" for k, v in (event.get("volumes_ml") or {}).items())
            )
        else:
            super()._onEvent(event)

    def _finish(self) -> None:
        try:
            self.process.raiseForStatus()
        except CancelledError as exc:
            self.status, self.error = "cancelled", exc
            self._report(0.0, "cancelled")
            return
        self._report(0.95, "importing results")
        self.result = self.logic.importResults(
            self.inputs,
            self.model,
            self.outputs,
            self.options,
            outputSegmentation=self.outputSegmentation,
            summary=self.process.result() or {},
            show=self.show,
            name=self.name,
        )
        self.status = "completed"
        self._report(1.0, f"done in {time.monotonic() - self.started:.1f} s")

    def _cleanup(self) -> None:
        if not self.keepFiles:
            shutil.rmtree(self.workDir, ignore_errors=True)


class SegmentationLogic:
    """Segment volume nodes with a CLDL model in a subprocess and import the results into a scene.

    ``scene``: the MRML scene (default ``slicer.mrmlScene``); ``python``: the interpreter that runs the engine
    (default :func:`~CLDLSegmentationLib.process.pythonExecutable`); ``singleShot``: a ``(ms, callback)`` timer
    (``qt.QTimer.singleShot``) that makes non-blocking jobs advance by themselves.
    """

    def __init__(
        self,
        scene=None,
        python: str | None = None,
        singleShot: Callable[[int, Callable[[], None]], None] | None = None,
        tempRoot: str | Path | None = None,
    ) -> None:
        self._scene = scene
        self.python = python
        self.singleShot = singleShot
        self.tempRoot = tempRoot
        self.overlaySettings = OverlaySettings()

    @property
    def scene(self):
        """The scene results go to."""
        return self._scene if self._scene is not None else slicer.mrmlScene

    def segment(
        self,
        inputs: Sequence | Mapping[str, Any],
        model: str | ModelInfo | None = None,
        options: SegmentationOptions | None = None,
        outputSegmentation=None,
        wait: bool = False,
        show: bool = True,
        keepFiles: bool = False,
        onProgress: Callable[[float, str], None] | None = None,
        onLog: Callable[[str], None] | None = None,
        onFinished: Callable[[SegmentationJob], None] | None = None,
        name: str | None = None,
        **optionValues: Any,
    ) -> SegmentationJob | SegmentationResult:
        """Segment ``inputs`` (one volume node per modality, in the model's order, or ``{modality: node}``).

        Options come as ``options=SegmentationOptions(...)`` or keywords (``device="cpu", tta=True,
        overlap=0.25, uncertaintyMap="entropy", keepProbabilities=True``). ``wait=True`` blocks and returns the
        :class:`SegmentationResult` (raising on failure); otherwise a running :class:`SegmentationJob`. The result
        nodes are named after ``name`` (default: the first input's name), e.g. "<name> CLDL segmentation".
        """
        options = options or SegmentationOptions(**optionValues)
        info = model if isinstance(model, ModelInfo) else describeModel(str(model or defaultModel()), self.python)
        if isinstance(inputs, Mapping):
            missing = [m for m in info.modalities if m not in inputs]
            if missing:
                raise ValueError(f"no input volume for {', '.join(missing)} (the model expects {info.modalities})")
            nodes = [inputs[m] for m in info.modalities]
        else:
            nodes = list(inputs)
        checkInputs(nodes, info.modalities, requireSameGrid=not options.prepare)

        workDir = Path(tempfile.mkdtemp(prefix="CLDL-", dir=self.tempRoot))
        try:
            images = [
                exportVolume(node, workDir / f"input_{i}_{modality}.nii")
                for i, (node, modality) in enumerate(zip(nodes, info.modalities))
            ]
            suffix = mapFileSuffix()
            outputs = {"labelmap": workDir / "labelmap.nii", "uncertainty": workDir / f"uncertainty{suffix}"}
            if options.keepProbabilities:
                outputs["probabilities"] = workDir / f"probabilities{suffix}"
            arguments = ["segment", "--model", info.key, "-i", *images, "-o", outputs["labelmap"]]
            arguments += ["--uncertainty", outputs["uncertainty"]]
            if "probabilities" in outputs:
                arguments += ["--probabilities", outputs["probabilities"]]
            if options.ldlMaps:
                arguments += ["--ldl-maps", workDir / "ldl"]
            if options.prepare:
                outputs["brainMask"] = workDir / "brain_mask.nii"
                arguments += ["--brain-mask", outputs["brainMask"]]
            arguments += options.arguments() + ["--progress", "jsonl"]
            process = JsonLinesProcess(engineCommand(arguments, self.python), env=engineEnvironment(), cwd=workDir)
            job = SegmentationJob(
                self,
                process,
                nodes,
                info,
                options,
                workDir,
                outputs,
                outputSegmentation=outputSegmentation,
                show=show,
                keepFiles=keepFiles,
                onProgress=onProgress,
                onLog=onLog,
                onFinished=onFinished,
                name=name,
            )
            job._log(f"running {' '.join(str(a) for a in process.command[:5])} ... on {len(images)} input(s)")
            process.start()
        except BaseException:
            shutil.rmtree(workDir, ignore_errors=True)
            raise
        if wait:
            return job.wait()
        if self.singleShot is not None:
            schedulePolling(job.poll, self.singleShot)
        return job

    def segmentCases(
        self,
        cases: Sequence[LoadedCase],
        model: str | ModelInfo | None = None,
        options: SegmentationOptions | None = None,
        wait: bool = False,
        show: bool = True,
        onProgress: Callable[[float, str], None] | None = None,
        onLog: Callable[[str], None] | None = None,
        onCase: Callable[[CaseRun], None] | None = None,
        onFinished: Callable[[CaseQueue], None] | None = None,
        **optionValues: Any,
    ) -> CaseQueue:
        """Segment several cases (see :func:`~CLDLSegmentationLib.cases.findLoadedCases`) one after another, one
        engine run each, with the same model and options; each case's nodes are named after it.

        A case that fails is reported (``queue.failed()``) and the others go on; ``queue.cancel()`` stops the
        running case and the rest. With ``show``, the first case to finish is shown in the slice views (the views
        then stay on it while the others run). Returns the :class:`CaseQueue`, finished when ``wait=True``.
        """
        options = options or SegmentationOptions(**optionValues)
        info = model if isinstance(model, ModelInfo) else describeModel(str(model or defaultModel()), self.python)

        def start(case: LoadedCase, onCaseProgress, onCaseFinished) -> SegmentationJob:
            if onLog is not None:
                onLog(f"case {case.name}: {', '.join(node.GetName() for node in case.volumes.values())}")
            return self.segment(
                case.volumes,
                model=info,
                options=options,
                show=show and not queue.results(),
                onProgress=onCaseProgress,
                onLog=onLog,
                onFinished=onCaseFinished,
                name=case.name,
            )

        queue = CaseQueue(cases, start, onProgress=onProgress, onCase=onCase, onFinished=onFinished)
        queue.begin()
        return queue.wait() if wait else queue

    def importResults(
        self,
        inputs: list,
        model: ModelInfo,
        outputs: Mapping[str, Path],
        options: SegmentationOptions = SegmentationOptions(),
        outputSegmentation=None,
        summary: dict[str, Any] | None = None,
        show: bool = True,
        name: str | None = None,
    ) -> SegmentationResult:
        """Load the engine's files: label map -> segmentation, uncertainty and probabilities -> volumes (named
        after ``name``, default the first input's name)."""
        scene = self.scene
        reference = inputs[preparationReference(model.modalities)] if options.prepare else inputs[0]
        base = name or inputs[0].GetName()
        task = model.task
        labelmap = importVolume(outputs["labelmap"], scene, f"{base} CLDL labels", labelmap=True)
        try:
            segmentationNode, segmentIds = labelmapToSegmentation(
                labelmap, task, outputSegmentation, reference, scene, name=f"{base} CLDL segmentation"
            )
        finally:
            scene.RemoveNode(labelmap)
        brainMask = outputs.get("brainMask")
        if brainMask is not None and Path(brainMask).is_file():
            addBrainMaskSegment(segmentationNode, importVolume(brainMask, scene, f"{base} brain mask", labelmap=True))
        mapTitle = {"entropy": "entropy", "max_prob": "1 - max p"}[options.uncertaintyMap]
        uncertainty = importVolume(outputs["uncertainty"], scene, f"{base} CLDL uncertainty ({options.uncertaintyMap})")
        uncertainty.SetAttribute(MAP_ATTRIBUTE, "uncertainty")
        uncertainty.SetAttribute("CLDL.Title", f"Uncertainty ({mapTitle})")
        uncertainty.SetAndObserveTransformNodeID(reference.GetTransformNodeID())
        probabilityNodes: dict[str, Any] = {}
        if outputs.get("probabilities") is not None:
            keys = classKeys(task)
            nodes = importProbabilities(
                outputs["probabilities"], uncertainty, scene, [f"{base} CLDL P({k})" for k in keys]
            )
            for key, node in zip(keys[1:], nodes):
                node.SetAttribute(MAP_ATTRIBUTE, "probability")
                node.SetAttribute("CLDL.Class", key)
                node.SetAttribute("CLDL.Title", f"P({key})")
                probabilityNodes[key] = node
        ldlMapNodes = [importLdlMap(entry, scene, base, reference) for entry in (summary or {}).get("ldl_maps") or []]
        maps = [uncertainty, *probabilityNodes.values(), *ldlMapNodes]
        for node in [segmentationNode, *maps]:
            node.SetAttribute("CLDL.Model", model.key)
            node.SetAttribute("CLDL.Input", reference.GetID())
        for node in maps:
            node.SetAttribute(OVERLAY_ATTRIBUTE, "1")
        self._placeInHierarchy(reference, [segmentationNode, *maps])
        showOutlines(segmentationNode)
        if show:
            showMap(uncertainty, reference, self.overlaySettings, title=uncertainty.GetAttribute("CLDL.Title"))
        return SegmentationResult(
            segmentationNode, segmentIds, uncertainty, probabilityNodes, summary or {}, model, ldlMapNodes=ldlMapNodes
        )

    @staticmethod
    def _placeInHierarchy(reference, nodes: list) -> None:
        """Put the results next to the input in the subject hierarchy (same study), when there is one."""
        scene = reference.GetScene()
        shNode = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
        if shNode is None:
            return
        item = shNode.GetItemByDataNode(reference)
        if not item:
            return
        parent = shNode.GetItemParent(item)
        if not parent or parent == shNode.GetSceneItemID():
            return
        for node in nodes:
            item = shNode.GetItemByDataNode(node)
            if item:
                shNode.SetItemParent(item, parent)

    def mapVolumes(self, inputVolume=None) -> list:
        """The uncertainty and probability volumes in the scene (those made from ``inputVolume`` if given)."""
        scene = self.scene
        nodes = []
        for n in range(scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode")):
            node = scene.GetNthNodeByClass(n, "vtkMRMLScalarVolumeNode")
            if node.GetAttribute(MAP_ATTRIBUTE) and (
                inputVolume is None or node.GetAttribute("CLDL.Input") == inputVolume.GetID()
            ):
                nodes.append(node)
        return nodes
