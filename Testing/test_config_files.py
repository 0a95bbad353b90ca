"""Config files have one home (cldl.config_files): the engine and the Slicer training module resolve ``extends`` the
same way, a Slicer run saves a config that stands alone, and every config section names its unknown keys alike."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from slicer_testing import ROOT  # also puts the module folders on sys.path

# isort: split
from CLDLTrainingLib import TrainingLogic, buildConfig

from cldl.config_files import check_known_keys, load_config, resolve_extends


def _chain(folder: Path) -> Path:
    """``child.json`` extends ``base.json`` (a path relative to it), which extends the ``tiny_phantoms`` preset."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "base.json").write_text(json.dumps({"extends": "tiny_phantoms", "model": {"ldl_stages": 2}, "seed": 5}))
    child = folder / "child.json"
    child.write_text(json.dumps({"extends": "base.json", "model": {"use_ppm": False}, "phantoms": {"shape": [48] * 3}}))
    return child


def test_reading_configs_loads_no_torch() -> None:
    """The Slicer side reads configs in Slicer's own Python: the module and its package import no torch."""
    code = "import sys, cldl.config_files, cldl.defaults; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


def test_extends_is_resolved_the_same_by_the_engine_and_the_slicer_module(tmp_path: Path) -> None:
    child = _chain(tmp_path / "configs")
    preset = load_config("tiny_phantoms")
    resolved = load_config(child)
    assert "extends" not in resolved
    assert resolved["model"] == {**preset["model"], "ldl_stages": 2, "use_ppm": False}  # merged key by key
    assert resolved["phantoms"] == {**preset["phantoms"], "shape": [48, 48, 48]}
    assert resolved["seed"] == 5 and resolved["patch_size"] == preset["patch_size"]
    assert buildConfig(None, None, child) == resolved  # the Slicer side, given the file
    given_as_dict = {"extends": str(child), "epochs": 3}  # a dict from the Python console: extends a path
    assert buildConfig(None, None, given_as_dict) == {**resolved, "epochs": 3} == resolve_extends(given_as_dict)
    assert buildConfig(None, None, {"extends": "tiny_phantoms"}) == preset  # ... or a preset name


def test_a_slicer_run_saves_its_config_with_extends_resolved(tmp_path: Path) -> None:
    """requested_config.json is read from the run folder by the engine: a relative ``extends`` must not be left in
    it (it would resolve against the run folder). The run's config.json is the same config."""
    child = _chain(tmp_path / "configs")
    run = tmp_path / "run"
    handle = TrainingLogic(python=sys.executable, charts=False).train(None, None, run, config=child, wait=True)
    assert handle.status == "completed", handle.error
    requested = json.loads((run / "requested_config.json").read_text())
    assert "extends" not in requested and requested == load_config(child)
    engine = json.loads((run / "config.json").read_text())
    assert {k: engine[k] for k in requested} == requested


def test_unknown_keys_are_named_one_way_in_every_section(tmp_path: Path) -> None:
    from cldl.data.anatomy import AnatomyConfig
    from cldl.data.preprocess import PreprocessConfig
    from cldl.events import Reporter
    from cldl.study.runner import Study
    from cldl.tasks import BRATS
    from cldl.training.cases import load_dataset
    from cldl.training.config import TrainConfig

    with pytest.raises(ValueError, match=r"^where: unknown thing keys \['b', 'c'\]; valid keys: \['z', 'a'\]$"):
        check_known_keys({"a": 1, "c": 2, "b": 3}, ["z", "a"], "thing", "where: ")
    check_known_keys({"a": 1}, ["a", "b"], "thing")  # known keys pass
    tiny = load_config("tiny_phantoms")
    refused = {
        "config": lambda: TrainConfig.from_dict({**tiny, "depth": 3}),
        "model": lambda: TrainConfig.from_dict({**tiny, "model": {"depth": 3}}),
        "preprocessing": lambda: PreprocessConfig.from_dict({"depth": 3}, strict=True),
        "anatomy generator": lambda: AnatomyConfig.from_dict({"depth": 3}),
        # phantom keys are checked when the cases are made
        "phantom \\('procedural' generator\\)": lambda: load_dataset(
            TrainConfig.from_dict({**tiny, "phantoms": {**tiny["phantoms"], "depth": 3}}),
            BRATS,
            PreprocessConfig(),
            Reporter("none"),
        ),
    }
    for what, build in refused.items():
        with pytest.raises(ValueError, match=rf"unknown {what} keys \['depth'\]; valid keys: "):
            build()
    study = tmp_path / "study.json"
    study.write_text(json.dumps({"depth": 3}))
    with pytest.raises(ValueError, match=r"study.json: unknown study keys \['depth'\]; valid keys: "):
        Study.from_file(study)
