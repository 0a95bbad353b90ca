"""The trainer: loss goes down, exact resume, run-folder safety, config validation, patch sampling."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_config

from cldl.checkpoint import load_checkpoint
from cldl.data.phantoms import brats_phantom
from cldl.data.preprocess import PreprocessConfig, preprocess
from cldl.events import Reporter
from cldl.method.network import UNetLDL
from cldl.tasks import BRATS
from cldl.training.config import TrainConfig
from cldl.training.sampler import PatchSampler
from cldl.training.state import json_to_random_state, random_state_to_json, seed_everything
from cldl.training.trainer import Trainer, command_line

PHANTOMS_32 = {"train_seeds": [0, 2], "val_seeds": [10_000, 10_001], "shape": [32, 32, 32]}


def _phantom_case(seed: int = 0, shape: tuple[int, int, int] = (32, 32, 32)):
    case = brats_phantom(seed, shape=shape)
    return preprocess(case.images, PreprocessConfig(), BRATS.modalities, BRATS.labels_to_classes(case.labels))


def _metrics(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


class FixedBatch:
    """A sampler that always returns the same batch."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.batch = (x, y)

    def sample(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.batch


def test_a_few_steps_on_a_fixed_phantom_batch_lower_the_loss(tmp_path: Path) -> None:
    trainer = Trainer(tiny_config(lr=3e-3, amp=False), tmp_path)
    sampler = PatchSampler([_phantom_case()], (32, 32, 32), fg_rate=1.0, flip_prob=0.0, seed=0)
    x, y = sampler.sample(1)
    assert y.max() > 0  # the patch holds tumour
    seed_everything(0)
    model = UNetLDL(trainer.model_config).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    parts = [trainer._step(model, optimizer, scaler, FixedBatch(x, y), progress=0.0) for _ in range(12)]
    totals = [p["total"] for p in parts]
    assert all(np.isfinite(totals))
    assert np.mean(totals[-3:]) < 0.8 * np.mean(totals[:3]), totals
    assert parts[-1]["ce"] < parts[0]["ce"]
    assert set(parts[0]) >= {"total", "ce", "dice", "ldl1", "ldl2", "ldl3"}


def _resume_config(**overrides) -> TrainConfig:
    return tiny_config(**{"phantoms": PHANTOMS_32, "epochs": 2, "iters_per_epoch": 2, "max_val_cases": 1, **overrides})


def test_resume_equals_an_uninterrupted_run(tmp_path: Path) -> None:
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    summary = Trainer(_resume_config(), straight, Reporter("none")).run()
    assert summary["epochs"] == 2 and not summary["stopped"]

    first = Trainer(_resume_config(epochs=1), resumed, Reporter("none")).run()
    assert first["epochs"] == 1
    assert load_checkpoint(resumed / "last.pt").training_state["epoch"] == 1
    second = Trainer(_resume_config(epochs=2), resumed, Reporter("none")).run(resume=True)
    assert second["epochs"] == 2

    a, b = _metrics(straight), _metrics(resumed)
    assert [r["epoch"] for r in a] == [r["epoch"] for r in b] == [1, 2]
    assert a == b  # every loss and Dice of both epochs, exactly
    assert a[1]["loss_total"] != a[0]["loss_total"]
    assert [r["epoch"] for r in second["history"]] == [1, 2]

    last_a, last_b = load_checkpoint(straight / "last.pt"), load_checkpoint(resumed / "last.pt")
    assert last_a.state_dict.keys() == last_b.state_dict.keys()
    for key, value in last_a.state_dict.items():
        assert torch.equal(value, last_b.state_dict[key]), key
    assert last_a.training_state["sampler_rng"] == last_b.training_state["sampler_rng"]
    assert last_a.provenance["epoch"] == last_b.provenance["epoch"] == 2
    for name in ("best.pt", "last.pt", "metrics.jsonl", "config.json"):
        assert (resumed / name).is_file()
    assert not list(resumed.glob(".*.part"))  # cldl.files.atomic_writes staging folders

    with pytest.raises(FileExistsError, match="--resume"):
        Trainer(_resume_config(), straight, Reporter("none")).run()
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        Trainer(_resume_config(), tmp_path / "empty", Reporter("none")).run(resume=True)
    assert _metrics(straight) == a  # the refused runs changed nothing


def test_each_epoch_records_the_learning_rate_it_trained_at(tmp_path: Path) -> None:
    config = tiny_config(lr=1e-3, lr_step=1, lr_gamma=0.5, epochs=2, iters_per_epoch=1, val_every=10)
    Trainer(config, tmp_path, Reporter("none")).run()
    assert [r["lr"] for r in _metrics(tmp_path)] == [1e-3, 5e-4]  # not the rate the scheduler set for the next one


def test_stop_request_then_resume_rewrites_the_log_from_the_resume_point(tmp_path: Path) -> None:
    config = tiny_config(phantoms=PHANTOMS_32, epochs=2, iters_per_epoch=1, max_val_cases=0)
    summary = Trainer(config, tmp_path, Reporter("none"), stop_requested=lambda: True).run()
    assert summary["stopped"] and summary["epochs"] == 1
    assert summary["best_dice_mean"] is None  # no validation cases
    assert [r["epoch"] for r in _metrics(tmp_path)] == [1]
    assert "dice_mean" not in _metrics(tmp_path)[0]
    assert load_checkpoint(tmp_path / "last.pt").training_state["epoch"] == 1
    assert load_checkpoint(tmp_path / "best.pt").training_state is None

    with (tmp_path / "metrics.jsonl").open("a") as handle:  # a record written after last.pt by a killed run
        handle.write(json.dumps({"epoch": 2, "loss_total": -1.0}) + "\n")
    summary = Trainer(config, tmp_path, Reporter("none")).run(resume=True)
    assert not summary["stopped"] and summary["epochs"] == 2
    records = _metrics(tmp_path)
    assert [r["epoch"] for r in records] == [1, 2]
    assert records[1]["loss_total"] > 0


def test_config_validation(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown config keys \\['learning_rate'\\]"):
        tiny_config(learning_rate=0.1)
    with pytest.raises(ValueError, match="multiples of 16"):
        tiny_config(patch_size=[32, 32, 40])
    with pytest.raises(ValueError, match="exactly one"):
        tiny_config(data=str(tmp_path))
    with pytest.raises(ValueError, match="exactly one"):
        tiny_config(phantoms=None)
    with pytest.raises(ValueError, match="epochs"):
        tiny_config(epochs=0)
    with pytest.raises(ValueError, match="fg_oversample"):
        tiny_config(fg_oversample=1.5)
    with pytest.raises(ValueError, match="unknown model keys \\['depth'\\]"):
        tiny_config(model={"base_width": 4, "depth": 9})
    with pytest.raises(ValueError, match="config key 'epochs' must be a whole number, got 'two'"):
        tiny_config(epochs="two")
    with pytest.raises(ValueError, match="curriculum"):
        tiny_config(curriculum="backwards")
    with pytest.raises(ValueError, match="final_targets"):
        tiny_config(final_targets="uniform")
    with pytest.raises(ValueError, match="final_sigma"):
        tiny_config(final_targets="gaussian", final_sigma=0)
    with pytest.raises(ValueError, match="augment_on"):
        tiny_config(augment_on="gpu")
    with pytest.raises(ValueError, match="adam_impl"):
        tiny_config(adam_impl="apex")
    path = tmp_path / "config.json"
    path.write_text(json.dumps({**tiny_config().to_dict(), "epochs": 5}))
    assert TrainConfig.from_file(path, epochs=7).epochs == 7
    assert TrainConfig.from_file(path).to_dict() == tiny_config(epochs=5).to_dict()
    yaml_path = tmp_path / "config.yaml"
    yaml_path.write_text("task: brats\nphantoms: {train_seeds: [0, 1]}\nepochs: 3\n")
    assert TrainConfig.from_file(yaml_path).epochs == 3
    path.write_text("[1, 2]")
    with pytest.raises(ValueError, match="mapping"):
        TrainConfig.from_file(path)


def test_gaussian_final_targets_change_only_the_cross_entropy(tmp_path: Path) -> None:
    """Same seed, same first batch and weights: the Gaussian (SVLS-style) targets change the CE part, not the Dice."""
    losses = []
    for targets in ("onehot", "gaussian"):
        config = tiny_config(
            epochs=1,
            iters_per_epoch=1,
            final_targets=targets,
            final_sigma=1.0,
            model={"base_width": 4, "ldl_stages": 0},
        )
        Trainer(config, tmp_path / targets).run()
        losses.append(_metrics(tmp_path / targets)[0])
    assert losses[0]["loss_dice"] == pytest.approx(losses[1]["loss_dice"], rel=1e-6)
    assert abs(losses[0]["loss_ce"] - losses[1]["loss_ce"]) > 1e-3


def test_patch_sampler_is_seeded_and_shaped() -> None:
    case = _phantom_case(1, (40, 40, 40))
    samplers = [PatchSampler([case], (32, 32, 32), fg_rate=0.5, flip_prob=0.5, seed=s) for s in (4, 4, 5)]
    batches = [s.sample(3) for s in samplers]
    x, y = batches[0]
    assert x.shape == (3, 4, 32, 32, 32) and x.dtype == torch.float32
    assert y.shape == (3, 32, 32, 32) and y.dtype == torch.int64
    assert torch.equal(x, batches[1][0]) and torch.equal(y, batches[1][1])
    assert not torch.equal(x, batches[2][0])
    foreground = PatchSampler([case], (32, 32, 32), fg_rate=1.0, flip_prob=0.0, seed=0)
    assert all(foreground.sample(1)[1].any() for _ in range(5))


def test_random_state_json_round_trip() -> None:
    random.seed(11)
    state = random.getstate()
    expected = [random.random() for _ in range(3)]
    random.seed(99)
    random.setstate(json_to_random_state(random_state_to_json(state)))
    assert [random.random() for _ in range(3)] == expected


def test_config_refuses_a_one_voxel_bottleneck() -> None:
    """A 16^3 patch would leave one voxel at the bottleneck (InstanceNorm fails on the first step): refused early."""
    with pytest.raises(ValueError, match="bottleneck"):
        tiny_config(patch_size=[16, 16, 16])
    assert tiny_config(patch_size=[16, 16, 32]).patch_size == [16, 16, 32]


def test_warm_start_begins_from_the_given_weights_and_records_them(tmp_path: Path) -> None:
    """init_from loads a checkpoint's weights before the first step, records its sha256, and survives a resume."""
    from cldl.registry import sha256_of

    first = tmp_path / "first"
    Trainer(_resume_config(epochs=1), first, Reporter("none")).run()
    source = load_checkpoint(first / "last.pt")

    trainer = Trainer(_resume_config(epochs=1, init_from=str(first / "last.pt"), seed=11), tmp_path / "warm")
    run = trainer._restore(resume=False)
    run.prefetcher.close()
    for key, value in source.state_dict.items():
        assert torch.equal(run.model.state_dict()[key], value), key
    cold = Trainer(_resume_config(epochs=1, seed=11), tmp_path / "cold")._restore(resume=False)
    cold.prefetcher.close()
    assert not torch.equal(cold.model.state_dict()["seg_head.weight"], source.state_dict["seg_head.weight"])

    warm = tmp_path / "warm2"
    Trainer(_resume_config(epochs=1, init_from=str(first / "last.pt")), warm, Reporter("none")).run()
    record = load_checkpoint(warm / "last.pt").provenance["warm_start"]
    assert record["sha256"] == sha256_of(first / "last.pt") and record["epochs"] == 1
    Trainer(_resume_config(epochs=2, init_from=str(first / "last.pt")), warm, Reporter("none")).run(resume=True)
    assert load_checkpoint(warm / "best.pt").provenance["warm_start"] == record

    with pytest.raises(ValueError, match="warm start needs the same"):
        Trainer(_resume_config(model={"base_width": 8}, init_from=str(first / "last.pt")), tmp_path / "bad").run()
    assert not (tmp_path / "bad" / "last.pt").exists() and (warm / "config.json").is_file()


def test_export_model_drops_the_training_state_and_keeps_the_weights(tmp_path: Path) -> None:
    """scripts/export_model.py: the shipped file holds the run's weights and provenance, no optimiser state."""
    import subprocess
    import sys

    run = tmp_path / "run"
    Trainer(_resume_config(epochs=1), run, Reporter("none")).run()
    target = tmp_path / "model.pt"
    script = Path(__file__).parents[1] / "scripts" / "export_model.py"
    command = [sys.executable, str(script), str(run / "last.pt"), str(target), "--note", "two sittings"]
    done = subprocess.run(command, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    source, exported = load_checkpoint(run / "last.pt"), load_checkpoint(target)
    assert source.training_state is not None and exported.training_state is None
    assert all(torch.equal(v, exported.state_dict[k]) for k, v in source.state_dict.items())
    assert exported.provenance["note"] == "two sittings" and exported.provenance["epoch"] == 1
    assert target.stat().st_size < (run / "last.pt").stat().st_size
    again = subprocess.run(command, capture_output=True, text=True)
    assert again.returncode == 1 and again.stderr.startswith("export_model: error:") and "exists" in again.stderr


def test_export_model_averages_the_weights_of_several_states(tmp_path: Path) -> None:
    """scripts/export_model.py A B OUT: the mean of the two states' weights, both recorded; other networks refused."""
    import subprocess
    import sys

    from cldl.registry import sha256_of

    script = Path(__file__).parents[1] / "scripts" / "export_model.py"
    run = tmp_path / "run"
    Trainer(_resume_config(epochs=1), run, Reporter("none")).run()
    (run / "last.pt").rename(run / "epoch1.pt")
    Trainer(_resume_config(epochs=2), run, Reporter("none")).run()
    states = [run / "epoch1.pt", run / "last.pt"]
    target = tmp_path / "averaged.pt"
    done = subprocess.run([sys.executable, str(script), *map(str, states), str(target)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    first, last, averaged = (load_checkpoint(p) for p in (*states, target))
    for key, value in last.state_dict.items():
        if value.is_floating_point():
            torch.testing.assert_close(averaged.state_dict[key], (first.state_dict[key] + value) / 2)
    changed = [
        k for k, v in last.state_dict.items() if v.is_floating_point() and not torch.equal(v, first.state_dict[k])
    ]
    assert changed  # the two states differ, so the mean is neither of them
    recorded = averaged.provenance["averaged_from"]
    assert [r["epoch"] for r in recorded] == [1, 2] and recorded[0]["sha256"] == sha256_of(states[0])
    assert averaged.training_state is None and averaged.provenance["epoch"] == 2

    other = tmp_path / "other"
    Trainer(_resume_config(epochs=1, model={"base_width": 8}), other, Reporter("none")).run()
    refused = subprocess.run(
        [sys.executable, str(script), str(states[1]), str(other / "last.pt"), str(tmp_path / "mixed.pt")],
        capture_output=True,
        text=True,
    )
    assert refused.returncode == 1 and "not the same network" in refused.stderr
    assert not (tmp_path / "mixed.pt").exists()


@pytest.mark.parametrize(
    ("argv", "recorded"),
    [
        (["/venv/lib/site-packages/cldl/__main__.py", "train", "--out", "r"], "python -m cldl train --out r"),
        (["/venv/bin/cldl", "train", "--out", "r"], "/venv/bin/cldl train --out r"),
    ],
)
def test_provenance_records_the_command_as_typed(monkeypatch, argv: list[str], recorded: str) -> None:
    """`python -m cldl train` is recorded as typed, not as the path of the package's __main__.py."""
    monkeypatch.setattr("sys.argv", argv)
    assert command_line() == recorded
