"""Several loaded cases in a row: which loaded volumes form which case, and a queue that segments them one after
another (one engine run each), reporting "case 2 of 5", going on after a failed case and stopping on Cancel.

Grouping uses the engine's file-name rules (:func:`cldl.tasks.modality_aliases`): a volume named
``<case>_<modality>`` (``BraTS_001_t1ce``, ``BraTS-GLI-00001-000-t2f``, ``case7 FLAIR``; the last word that names a
modality counts) belongs to case ``<case>``. A model with one input makes every volume a case of its own. The
module's own maps (uncertainty, probabilities, region maps) and label maps are never inputs.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cldl.tasks import modality_aliases

from .overlay import MAP_ATTRIBUTE
from .process import pollUntilDone
from .volumes import checkInputs

#: Columns of the panel's case table.
CASE_COLUMNS = ("Case", "Volumes", "Status")
_SEPARATORS = re.compile(r"([_\-. ]+)")


def splitCaseName(name: str, aliases: Mapping[str, str]) -> tuple[str, str] | None:
    """``(case, modality)`` of a volume name, from its last word that names a modality (None: no such word).

    ``aliases`` maps lower-case words to modalities (:func:`cldl.tasks.modality_aliases`); a two-word alias such as
    ``t2-flair`` or ``t1_native`` counts as one.
    """
    parts = _SEPARATORS.split(name)  # words at even indices, separators between them
    for last in range(len(parts) - 1, -1, -2):
        for first in (last - 2, last):  # a two-word alias first, then one word
            key = "".join(parts[first : last + 1 : 2]).lower() if first >= 0 else ""
            if key in aliases:
                kept = parts[: max(first - 1, 0)] + (parts[last + 1 :] if first > 0 else parts[last + 2 :])
                return "".join(kept).strip("_-. "), aliases[key]
    return None


@dataclass
class LoadedCase:
    """One case found in the scene: its name, a volume per modality found, and why it cannot run (if it cannot)."""

    name: str
    volumes: dict[str, Any] = field(default_factory=dict)  # modality -> volume node
    problem: str = ""  # "" when every modality has exactly one volume and they fit together
    segmentation: Any = None  # a segmentation the chosen model already made from these volumes

    @property
    def ready(self) -> bool:
        """Whether the case can be segmented and has not been yet."""
        return not self.problem and self.segmentation is None

    def status(self) -> str:
        """What the case table says before a run."""
        if self.problem:
            return self.problem
        return "already segmented" if self.segmentation is not None else "ready"


def inputVolumes(scene) -> list:
    """Scalar volumes that can be inputs: not label maps, not maps the module made."""
    volumes = []
    for n in range(scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode")):
        node = scene.GetNthNodeByClass(n, "vtkMRMLScalarVolumeNode")
        if not node.IsA("vtkMRMLLabelMapVolumeNode") and not node.GetAttribute(MAP_ATTRIBUTE):
            volumes.append(node)
    return volumes


def _existingSegmentation(scene, reference, modelKey: str):
    """A segmentation node that ``modelKey`` made from ``reference`` (the case's first input), if any."""
    for n in range(scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode")):
        node = scene.GetNthNodeByClass(n, "vtkMRMLSegmentationNode")
        if node.GetAttribute("CLDL.Input") == reference.GetID() and node.GetAttribute("CLDL.Model") == modelKey:
            return node
    return None


def groupCases(volumes: Sequence, modalities: Sequence[str]) -> list[LoadedCase]:
    """Group volumes into cases by name (see the module docstring), sorted by case name; problems are noted."""
    groups: dict[str, tuple[str, dict[str, list]]] = {}  # key -> (case name, {modality: volumes})
    aliases = modality_aliases(modalities)
    for volume in volumes:
        if len(modalities) == 1:  # one input: every volume is a case of its own
            key, name, modality = volume.GetID(), volume.GetName(), modalities[0]
        else:
            found = splitCaseName(volume.GetName(), aliases)
            if found is None:
                continue
            (name, modality), key = found, found[0].lower()
        groups.setdefault(key, (name, {}))[1].setdefault(modality, []).append(volume)
    cases = []
    for name, byModality in groups.values():
        volumesOf = {m: byModality[m][0] for m in modalities if m in byModality}
        first = next(iter(volumesOf.values()))
        # volumes named just "flair", "t1", ...: the case is named as one run names its results
        case = LoadedCase(name or first.GetName(), volumesOf)
        missing = [m for m in modalities if m not in byModality]
        twice = [f"{m} ({', '.join(v.GetName() for v in byModality[m])})" for m in volumesOf if len(byModality[m]) > 1]
        if missing:
            case.problem = "missing " + ", ".join(missing)
        elif twice:
            case.problem = "more than one volume for " + "; ".join(twice)
        else:
            try:
                checkInputs(list(volumesOf.values()), modalities)
            except ValueError as exc:
                case.problem = str(exc)
        cases.append(case)
    return sorted(cases, key=lambda c: c.name.lower())


def findLoadedCases(scene, modalities: Sequence[str], modelKey: str | None = None) -> list[LoadedCase]:
    """The cases among the scene's volumes for a model with these inputs; with ``modelKey``, cases that model has
    already segmented are marked (see :attr:`LoadedCase.segmentation`)."""
    cases = groupCases(inputVolumes(scene), modalities)
    for case in cases:
        if not case.problem and modelKey is not None:
            case.segmentation = _existingSegmentation(scene, case.volumes[modalities[0]], modelKey)
    return cases


@dataclass
class CaseRun:
    """One case in a :class:`CaseQueue`: ``status`` is queued, running, completed, failed or cancelled."""

    case: LoadedCase
    status: str = "queued"
    job: Any = None  # the engine run (a SegmentationJob) once started
    error: str = ""
    seconds: float | None = None
    started: float = 0.0

    @property
    def result(self) -> Any:
        """The imported results (a SegmentationResult) of a completed case, else None."""
        return self.job.result if self.status == "completed" else None

    def text(self) -> str:
        """What the case table says about it."""
        if self.status == "completed":
            return f"done in {self.seconds:.0f} s"
        if self.status == "failed":
            return f"failed: {self.error}"
        return self.status


StartCase = Callable[[LoadedCase, Callable[[float, str], None], Callable[[Any], None]], Any]


class CaseQueue:
    """Segments cases one after another: ``start(case, onProgress, onFinished)`` starts one engine run (a
    :class:`~CLDLSegmentationLib.logic.SegmentationJob`) and the queue starts the next when it ends.

    A case that fails (or cannot start) is recorded and the others go on; :meth:`cancel` stops the running case
    and the rest. ``onProgress(fraction, text)`` gets the whole queue's progress ("case 2 of 5 (name): ...");
    ``onCase(run)`` is called when a case starts or ends, ``onFinished(queue)`` once at the end. Runs advance by
    themselves (a Qt timer) or through :meth:`poll` / :meth:`wait`.
    """

    def __init__(
        self,
        cases: Sequence[LoadedCase],
        start: StartCase,
        onProgress: Callable[[float, str], None] | None = None,
        onCase: Callable[[CaseRun], None] | None = None,
        onFinished: Callable[[CaseQueue], None] | None = None,
    ) -> None:
        self.runs = [CaseRun(case) for case in cases]
        self._start = start
        self.onProgress = onProgress
        self.onCase = onCase
        self.onFinished = onFinished
        self.status = "running"  # then completed (every case ran; some may have failed) or cancelled
        self.progress = 0.0
        self.stage = "starting"
        self._index = 0
        self._cancelling = False

    @property
    def running(self) -> bool:
        """Whether a case is running or queued."""
        return self.status == "running"

    @property
    def current(self) -> CaseRun | None:
        """The running case (None before the start and after the end)."""
        run = self.runs[self._index] if self._index < len(self.runs) else None
        return run if run is not None and run.status == "running" else None

    def results(self) -> list:
        """The results of the completed cases, in queue order."""
        return [run.result for run in self.runs if run.status == "completed"]

    def failed(self) -> list[CaseRun]:
        """The cases that failed."""
        return [run for run in self.runs if run.status == "failed"]

    def runFor(self, case: LoadedCase) -> CaseRun | None:
        """The queue's record of ``case`` (None: not in this queue)."""
        return next((run for run in self.runs if run.case is case), None)

    def begin(self) -> CaseQueue:
        """Start the first case."""
        self._next()
        return self

    def cancel(self) -> None:
        """Stop the running case (its engine process tree is killed) and every queued one."""
        if not self.running:
            return
        self._cancelling = True
        current = self.current
        if current is not None and current.job is not None:
            current.job.cancel()  # ends the job, whose end calls _caseEnded, which ends the queue
        else:
            self._end()

    def poll(self) -> bool:
        """Advance the running case (without a Qt timer); True while the queue runs."""
        current = self.current
        if current is not None and current.job is not None:
            current.job.poll()
        return self.running

    def wait(self, timeout: float | None = None, interval: float = 0.05) -> CaseQueue:
        """Block until every case has run (or the queue was cancelled); cancels and raises TimeoutError after
        ``timeout`` seconds."""
        pollUntilDone(self.poll, timeout, interval, self.cancel, "the case queue was still running")
        return self

    def summary(self) -> str:
        """One line: how many cases were segmented, failed or cancelled."""
        counts = {s: sum(run.status == s for run in self.runs) for s in ("completed", "failed", "cancelled")}
        text = f"{counts['completed']} of {len(self.runs)} case(s) segmented"
        if counts["failed"]:
            text += f", {counts['failed']} failed ({', '.join(run.case.name for run in self.failed())})"
        if counts["cancelled"]:
            text += f", {counts['cancelled']} cancelled"
        return text

    # -- internals -------------------------------------------------------------------------------------------------

    def _next(self) -> None:
        """Start the next case that starts; end the queue when none is left (or when cancelled)."""
        while self._index < len(self.runs) and not self._cancelling:
            run = self.runs[self._index]
            run.status, run.started = "running", time.monotonic()
            self._report(0.0, "starting")
            try:
                run.job = self._start(run.case, self._caseProgress, self._caseEnded)
            except Exception as exc:  # noqa: BLE001 - e.g. its volumes were deleted: report it, go on
                run.status, run.error = "failed", str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
                self._caseDone(run)
                continue
            if self.onCase is not None:
                self.onCase(run)
            return
        self._end()

    def _caseProgress(self, fraction: float, text: str) -> None:
        self._report(fraction, text)

    def _caseEnded(self, job) -> None:
        """A case's engine run ended (called once per job; a repeated call is ignored)."""
        run = self.current
        if run is None or run.job is not job:
            return
        if job.status == "completed":
            run.status = "completed"
        elif job.status == "cancelled" or self._cancelling:
            run.status = "cancelled"
        else:
            run.status, run.error = "failed", str(job.error or "the engine failed")
        self._caseDone(run)
        self._next()

    def _caseDone(self, run: CaseRun) -> None:
        run.seconds = time.monotonic() - run.started
        self._index += 1
        if self.onCase is not None:
            self.onCase(run)

    def _end(self) -> None:
        if not self.running:
            return
        for run in self.runs:
            if run.status == "queued":
                run.status = "cancelled"
        self.status = "cancelled" if self._cancelling else "completed"
        self.progress, self.stage = 1.0, self.summary()
        if self.onProgress is not None:
            self.onProgress(self.progress, self.stage)
        if self.onFinished is not None:
            self.onFinished(self)

    def _report(self, fraction: float, text: str) -> None:
        total = max(len(self.runs), 1)
        run = self.runs[min(self._index, total - 1)]
        self.progress = (self._index + fraction) / total
        self.stage = f"case {self._index + 1} of {total} ({run.case.name}): {text}"
        if self.onProgress is not None:
            self.onProgress(self.progress, self.stage)


def caseRows(cases: Sequence[LoadedCase], queue: CaseQueue | None = None) -> list[tuple[str, str, str]]:
    """The case table's rows: case, its volumes (in the found modalities' order), status (the queue's, if in it)."""
    rows = []
    for case in cases:
        run = queue.runFor(case) if queue is not None else None
        volumes = ", ".join(node.GetName() for node in case.volumes.values())
        rows.append((case.name, volumes, run.text() if run is not None else case.status()))
    return rows
