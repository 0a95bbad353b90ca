"""Speed options change nothing but speed: prefetching, mid-epoch stops, batched and memory-capped windows.

No timing here (speed is measured by benchmarks/); these tests pin down that every optimisation keeps the
results exact (training) or equal up to float rounding (inference).
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_config

from cldl.checkpoint import Checkpoint, load_checkpoint
from cldl.commands.main import build_parser
from cldl.data.preprocess import PreprocessConfig
from cldl.events import Reporter
from cldl.inference.predictor import (
    CPU_WINDOW_MEMORY_GB,
    DEFAULT_OVERLAP,
    Predictor,
    gaussian_importance,
    memory_capped_window_batch,
    sliding_window_probabilities,
    window_memory_bytes,
    window_starts,
)
from cldl.method.network import ModelConfig, UNetLDL
from cldl.tasks import BRATS
from cldl.training.distributed import StopSignals, weights_digest
from cldl.training.prefetch import BatchPrefetcher
from cldl.training.sampler import PatchSampler
from cldl.training.trainer import Trainer

PHANTOMS_32 = {"train_seeds": [0, 2], "val_seeds": [10_000, 10_001], "shape": [32, 32, 32]}


def _config(**overrides):
    return tiny_config(**{"phantoms": PHANTOMS_32, "epochs": 2, "iters_per_epoch": 3, "max_val_cases": 1, **overrides})


def _metrics(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


class StopAt(Reporter):
    """A reporter that asks for a stop once it sees training step ``done`` of ``epoch``."""

    def __init__(self, epoch: int, done: int) -> None:
        super().__init__("none")
        self.at, self.requested = (epoch, done), False

    def progress(self, stage: str, done: int, total: int, **fields) -> None:
        if stage == "train" and (fields.get("epoch"), done) == self.at:
            self.requested = True


# ----------------------------------------------------------------------------------------------------------------
# training


def test_prefetch_depth_does_not_change_the_run(tmp_path: Path) -> None:
    runs = {}
    for depth in (0, 3):
        out = tmp_path / f"prefetch{depth}"
        runs[depth] = Trainer(_config(prefetch=depth), out, Reporter("none")).run()
        assert runs[depth]["weights_sha256"] == weights_digest(load_checkpoint(out / "last.pt").state_dict)
    assert runs[0]["weights_sha256"] == runs[3]["weights_sha256"]
    assert _metrics(tmp_path / "prefetch0") == _metrics(tmp_path / "prefetch3")


def test_a_mid_epoch_stop_resumes_exactly(tmp_path: Path) -> None:
    straight = Trainer(_config(), tmp_path / "straight", Reporter("none")).run()
    reporter = StopAt(epoch=2, done=1)
    stopped = Trainer(_config(), tmp_path / "stopped", reporter, stop_requested=lambda: reporter.requested).run()
    # the request seen after step 1 is acted on after step 2 (checked before each step's backward pass)
    assert stopped["stopped"] and stopped["epochs"] == 1 and stopped["stopped_at_iteration"] == 2
    state = load_checkpoint(tmp_path / "stopped" / "last.pt").training_state
    assert (state["epoch"], state["iteration"]) == (1, 2)
    assert set(state["rank_states"][0]["partial_sums"]) >= {"total", "ce"}
    assert [r["epoch"] for r in _metrics(tmp_path / "stopped")] == [1]
    resumed = Trainer(_config(prefetch=0), tmp_path / "stopped", Reporter("none")).run(resume=True)
    assert not resumed["stopped"] and resumed["epochs"] == 2
    assert resumed["weights_sha256"] == straight["weights_sha256"]
    assert _metrics(tmp_path / "stopped") == _metrics(tmp_path / "straight")


def test_a_checkpoint_without_rank_states_still_resumes(tmp_path: Path) -> None:
    """Checkpoints written before multi-process training (only ``sampler_rng``) resume exactly."""
    from cldl.checkpoint import save_checkpoint

    straight = Trainer(_config(), tmp_path / "straight", Reporter("none")).run()
    Trainer(_config(epochs=1), tmp_path / "old", Reporter("none")).run()
    saved = load_checkpoint(tmp_path / "old" / "last.pt")
    for key in ("rank_states", "world_size", "iteration"):
        del saved.training_state[key]
    save_checkpoint(saved, tmp_path / "old" / "last.pt")
    resumed = Trainer(_config(), tmp_path / "old", Reporter("none")).run(resume=True)
    assert resumed["weights_sha256"] == straight["weights_sha256"]


def test_patch_sampler_rank_zero_is_the_single_process_stream() -> None:
    from test_train import _phantom_case

    case = _phantom_case(1, (40, 40, 40))
    single, rank0, rank1 = (
        PatchSampler([case], (32, 32, 32), fg_rate=0.5, flip_prob=0.5, seed=4, rank=r) for r in (0, 0, 1)
    )
    x, _ = single.sample(2)
    assert torch.equal(x, rank0.sample(2)[0])
    assert not torch.equal(x, rank1.sample(2)[0])


def test_augmenting_on_the_device_does_not_change_the_run(tmp_path: Path) -> None:
    """nnU-Net augmentation applied by the training step (augment_on device) or in the prefetch thread: on CPU the
    same ops on the same plans, so the same weights bit for bit (on a GPU: equal up to float rounding)."""
    runs = {}
    for where in ("prefetch", "device"):
        trainer = Trainer(_config(augment="nnunet", augment_on=where), tmp_path / where, Reporter("none"))
        assert trainer.augment_on == where
        runs[where] = trainer.run()
    assert runs["prefetch"]["weights_sha256"] == runs["device"]["weights_sha256"]
    assert _metrics(tmp_path / "prefetch") == _metrics(tmp_path / "device")
    assert Trainer(_config(), tmp_path / "auto", Reporter("none")).augment_on == "prefetch"  # auto on a CPU


@pytest.mark.parametrize("first", ["device", "prefetch"])
def test_a_run_augmented_on_the_device_resumes_exactly(tmp_path: Path, first: str) -> None:
    straight = Trainer(_config(augment="nnunet"), tmp_path / "straight", Reporter("none")).run()
    reporter = StopAt(epoch=1, done=1)
    stopped = Trainer(
        _config(augment="nnunet", augment_on=first),
        tmp_path / "stopped",
        reporter,
        stop_requested=lambda: reporter.requested,
    ).run()
    assert stopped["stopped"] and stopped["stopped_at_iteration"] == 2  # mid-epoch, batches drawn ahead dropped
    resumed = Trainer(_config(augment="nnunet", augment_on="device"), tmp_path / "stopped", Reporter("none"))
    assert resumed.run(resume=True)["weights_sha256"] == straight["weights_sha256"]
    assert _metrics(tmp_path / "stopped") == _metrics(tmp_path / "straight")


def test_fused_adam_matches_the_loop_and_resumes_exactly(tmp_path: Path) -> None:
    loop = Trainer(_config(epochs=1, max_val_cases=0), tmp_path / "loop", Reporter("none"))
    assert loop.adam_impl == "loop"  # auto on a CPU: torch's own choice there, as before the option
    plain = loop.run()
    fused = Trainer(_config(epochs=1, max_val_cases=0, adam_impl="fused"), tmp_path / "fused", Reporter("none")).run()
    for key, value in plain["history"][0].items():
        assert fused["history"][0][key] == pytest.approx(value, rel=1e-4), key
    groups = load_checkpoint(tmp_path / "fused" / "last.pt").training_state["optimizer"]["param_groups"]
    assert groups[0]["fused"] is True
    reporter = StopAt(epoch=1, done=1)
    config = _config(epochs=1, max_val_cases=0, adam_impl="fused")
    Trainer(config, tmp_path / "stopped", reporter, stop_requested=lambda: reporter.requested).run()
    resumed = Trainer(config, tmp_path / "stopped", Reporter("none")).run(resume=True)
    assert resumed["weights_sha256"] == fused["weights_sha256"]


def test_adam_state_loads_across_implementations() -> None:
    from cldl.training.state import adam_options, load_optimizer_state

    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    impls = ("fused", "foreach", "loop")
    optimizers = {impl: torch.optim.Adam(model.parameters(), lr=1e-2, **adam_options(impl)) for impl in impls}
    for optimizer in optimizers.values():
        model.zero_grad()
        model(torch.randn(5, 4)).square().sum().backward()
        optimizer.step()
    for saved, loaded in itertools.permutations(optimizers, 2):
        target = torch.optim.Adam(model.parameters(), lr=1e-2, **adam_options(loaded))
        load_optimizer_state(target, optimizers[saved].state_dict())
        group = target.param_groups[0]
        assert bool(group["fused"]) == (loaded == "fused") and bool(group["foreach"]) == (loaded == "foreach")
        for param in model.parameters():
            state = target.state[param]
            assert state["step"].device == param.device and state["step"].dtype == torch.float32
            assert torch.equal(state["exp_avg"], optimizers[saved].state[param]["exp_avg"])
        model.zero_grad()
        model(torch.randn(5, 4)).square().sum().backward()
        target.step()  # the loaded state steps with its own implementation
    conv = torch.nn.Conv3d(2, 3, 3)
    saved = torch.optim.Adam(conv.parameters(), **adam_options("fused"))
    conv(torch.randn(1, 2, 5, 5, 5)).sum().backward()
    saved.step()
    conv = conv.to(memory_format=torch.channels_last_3d)  # resumed with channels_last switched on
    target = torch.optim.Adam(conv.parameters(), **adam_options("fused"))
    load_optimizer_state(target, saved.state_dict())
    moments = target.state[conv.weight]
    assert moments["exp_avg"].stride() == moments["exp_avg_sq"].stride() == conv.weight.stride() != (54, 27, 9, 3, 1)
    assert torch.equal(moments["exp_avg"], saved.state_dict()["state"][0]["exp_avg"])
    with pytest.raises(ValueError, match="Adam implementation"):
        adam_options("auto")


def test_channels_last_training_matches_within_rounding(tmp_path: Path) -> None:
    plain = Trainer(_config(epochs=1, max_val_cases=0), tmp_path / "plain", Reporter("none")).run()
    fast = Trainer(_config(epochs=1, max_val_cases=0, channels_last=True), tmp_path / "cl", Reporter("none")).run()
    for key, value in plain["history"][0].items():
        assert fast["history"][0][key] == pytest.approx(value, rel=1e-3), key


@pytest.mark.slow
def test_compiled_training_matches_within_rounding(tmp_path: Path) -> None:
    """torch.compile on CPU needs a C++ compiler and takes about a minute."""
    plain = Trainer(_config(epochs=1, max_val_cases=0), tmp_path / "plain", Reporter("none")).run()
    fast = Trainer(_config(epochs=1, max_val_cases=0, compile=True), tmp_path / "compiled", Reporter("none")).run()
    for key, value in plain["history"][0].items():
        assert fast["history"][0][key] == pytest.approx(value, rel=1e-4), key


@pytest.mark.slow
def test_compiled_targets_and_loss_match_within_rounding_and_compile_once(tmp_path: Path) -> None:
    """compile_loss: one compilation serves the whole run although the curriculum weights change every step (a
    recompilation raises here)."""
    plain = Trainer(_config(epochs=1, max_val_cases=0), tmp_path / "plain", Reporter("none")).run()
    with torch._dynamo.config.patch(error_on_recompile=True):
        fast = Trainer(_config(epochs=1, max_val_cases=0, compile_loss=True), tmp_path / "c", Reporter("none")).run()
    for key, value in plain["history"][0].items():
        assert fast["history"][0][key] == pytest.approx(value, rel=1e-4), key


class CountingSampler:
    """Batch ``i`` is filled with the value ``i`` (drawn from ``rng`` so the state advances)."""

    def __init__(self, fail_at: int | None = None) -> None:
        self.rng = np.random.default_rng(0)
        self.drawn = 0
        self.fail_at = fail_at

    def sample(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.drawn == self.fail_at:
            raise OSError("disk gone")
        self.rng.random()
        self.drawn += 1
        return torch.full((batch_size, 1), float(self.drawn)), torch.zeros(batch_size, dtype=torch.int64)


def test_prefetcher_keeps_order_and_reports_the_state_after_the_last_used_batch() -> None:
    reference = np.random.default_rng(0)
    expected_states = []
    for _ in range(3):
        reference.random()
        expected_states.append(reference.bit_generator.state)
    sampler = CountingSampler()
    with BatchPrefetcher(sampler, 2, depth=4) as prefetcher:
        assert prefetcher.rng_state() == np.random.default_rng(0).bit_generator.state
        for i in range(3):
            x, _ = prefetcher.sample(2)
            assert float(x[0, 0]) == i + 1
            assert prefetcher.rng_state() == expected_states[i]
        with pytest.raises(ValueError, match="batches of 2"):
            prefetcher.sample(3)
    assert sampler.drawn >= 3  # it drew ahead
    assert not [t for t in threading.enumerate() if t.name == "cldl-prefetch"]


def test_prefetcher_hands_over_the_samplers_error() -> None:
    with BatchPrefetcher(CountingSampler(fail_at=1), 1, depth=2) as prefetcher:
        prefetcher.sample(1)
        with pytest.raises(OSError, match="disk gone"):
            prefetcher.sample(1)
    with pytest.raises(ValueError, match="depth"):
        BatchPrefetcher(CountingSampler(), 1, depth=-1)


def test_prefetcher_pins_planned_batches_for_a_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """The pinning path of a CUDA run, with pinning simulated by a copy (this machine may have no GPU)."""
    from test_train import _phantom_case

    pinned: list[int] = []

    def fake_pin(self: torch.Tensor) -> torch.Tensor:
        pinned.append(self.numel())
        return self.clone()

    monkeypatch.setattr(torch.Tensor, "pin_memory", fake_pin)
    case = _phantom_case(1, (40, 40, 40))
    args = ([case], (32, 32, 32), 0.5, 0.5, 4)
    plain = PatchSampler(*args, augment="nnunet")
    deferred = PatchSampler(*args, augment="nnunet", deferred=True)
    for depth in (0, 2):
        with BatchPrefetcher(deferred, 2, depth=depth, pin_memory=True) as prefetcher:
            for _ in range(3):
                x, y = plain.sample(2)
                got = prefetcher.sample(2).apply("cpu")
                assert torch.equal(got[0], x) and torch.equal(got[1], y)
        deferred.rng.bit_generator.state = prefetcher.rng_state()
    assert len(pinned) >= 2 * 2 * 6  # images and labels of every patch, and noise where drawn


def test_stop_signals_set_a_flag_and_restore_the_handlers() -> None:
    before = signal.getsignal(signal.SIGUSR1)
    with StopSignals() as stop:
        assert not stop()
        os.kill(os.getpid(), signal.SIGUSR1)
        assert stop() and stop.received == "SIGUSR1"
    assert signal.getsignal(signal.SIGUSR1) == before


def test_sigterm_stops_cldl_train_after_the_current_step_with_a_checkpoint(tmp_path: Path) -> None:
    """What the 3D Slicer Stop button does: SIGTERM, exit status 0, a resumable mid-epoch ``last.pt``."""
    config = tmp_path / "config.json"
    config.write_text(json.dumps(_config(epochs=2, iters_per_epoch=500).to_dict()))
    command = [sys.executable, "-m", "cldl", "train", "--config", str(config), "--out", str(tmp_path / "run")]
    process = subprocess.Popen([*command, "--progress", "jsonl"], stdout=subprocess.PIPE, text=True)
    events = []
    try:
        for line in process.stdout:
            events.append(json.loads(line))
            if events[-1].get("stage") == "train" and events[-1]["done"] == 2:
                process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()
    result = next(e for e in events if e["event"] == "result")
    assert result["stopped"] and result["epochs"] == 0 and result["stopped_at_iteration"] >= 2
    state = load_checkpoint(tmp_path / "run" / "last.pt").training_state
    assert (state["epoch"], state["iteration"]) == (0, result["stopped_at_iteration"])


# ----------------------------------------------------------------------------------------------------------------
# inference


def _model(width: int = 4, seed: int = 0) -> UNetLDL:
    torch.manual_seed(seed)
    return UNetLDL(ModelConfig(base_width=width)).eval()


def _naive_sliding_window(model: UNetLDL, volume: np.ndarray, window: tuple[int, int, int], overlap: float):
    """A plain reference: one window at a time, out-of-place sums, no batching (float64 accumulators)."""
    shape = volume.shape[1:]
    starts = itertools.product(*(window_starts(s, w, overlap, symmetric=False) for s, w in zip(shape, window)))
    weight = gaussian_importance(window).double()
    total = torch.zeros((4, *shape), dtype=torch.float64)
    coverage = torch.zeros(shape, dtype=torch.float64)
    with torch.no_grad():
        for start in starts:
            sl = tuple(slice(s, s + w) for s, w in zip(start, window))
            x = torch.from_numpy(volume[(slice(None),) + sl].copy())[None]
            probs = torch.softmax(model(x).logits, dim=1)[0].double()
            total[(slice(None),) + sl] = total[(slice(None),) + sl] + probs * weight
            coverage[sl] = coverage[sl] + weight
    return (total / coverage).float()


def test_batched_in_place_windows_equal_a_naive_loop_up_to_rounding() -> None:
    model = _model()
    volume = np.random.default_rng(0).normal(size=(4, 40, 56, 48)).astype(np.float32)
    reference = _naive_sliding_window(model, volume, (32, 32, 32), 0.5)
    for window_batch in (1, 3, 8):
        probs = sliding_window_probabilities(model, volume, (32, 32, 32), overlap=0.5, window_batch=window_batch)
        # float32 convolutions round differently per batch size: up to 2.3e-5 on an AVX-512 CPU; a blending or
        # placement error is orders of magnitude larger (overlap 0.25 instead of 0.5 differs by 0.6)
        torch.testing.assert_close(probs, reference, rtol=0, atol=1e-4)
        assert (probs.argmax(0) != reference.argmax(0)).float().mean() < 1e-4  # rounding ties at most


def test_without_tta_no_window_is_spent_on_mirror_symmetry() -> None:
    """An odd window count with no integer middle start costs one more window only when TTA needs symmetry."""
    assert window_starts(51, 32, 0.5, symmetric=False) == [0, 10, 19]
    assert window_starts(51, 32, 0.5) == [0, 9, 10, 19]
    assert window_starts(207, 128, 0.5, symmetric=False) == [0, 40, 79]  # a BraTS head crop: 3 windows, not 4
    for size, overlap in itertools.product(range(33, 140), (0.0, 0.25, 0.5, 0.75)):
        plain, mirrored = window_starts(size, 32, overlap, symmetric=False), window_starts(size, 32, overlap)
        assert plain[0] == 0 and plain[-1] == size - 32 and len(plain) <= len(mirrored) <= len(plain) + 1
        assert all(0 < b - a <= max(1, int(32 * (1 - overlap))) for a, b in zip(plain, plain[1:]))
    model, volume = _model(), np.zeros((4, 32, 51, 32), np.float32)
    for tta, expected in ((False, 3), (True, 4)):
        totals: list[int] = []
        sliding_window_probabilities(
            model, volume, (32, 32, 32), overlap=0.5, tta=tta, progress=lambda d, t, seen=totals: seen.append(t)
        )
        assert totals[-1] == expected


def test_memory_cap_lowers_the_window_batch() -> None:
    full = UNetLDL(ModelConfig())  # 21.7 M parameters, base width 30
    per_window = window_memory_bytes(full, (128, 128, 128))
    assert 2.0 * 2**30 < per_window < 3.0 * 2**30  # ~2.3-2.8 GB measured at batch 1 on CPU
    assert memory_capped_window_batch(full, (128, 128, 128), 4, None) == 1  # CPU default budget
    assert memory_capped_window_batch(full, (128, 128, 128), 4, 100.0) == 4
    assert memory_capped_window_batch(full, (128, 128, 128), 4, 0.01) == 1  # never below one window
    tiny = _model()
    assert memory_capped_window_batch(tiny, (32, 32, 32), 2, CPU_WINDOW_MEMORY_GB) == 2


def _checkpoint(width: int = 4) -> Checkpoint:
    model = _model(width, seed=3)
    return Checkpoint(
        model_config=model.config,
        task=BRATS,
        preprocess=PreprocessConfig(image_kind="mr"),
        patch_size=(32, 32, 32),
        state_dict={k: v.clone() for k, v in model.state_dict().items()},
    )


def test_predictor_outputs_do_not_depend_on_batching_or_the_memory_cap() -> None:
    rng = np.random.default_rng(4)
    volume = np.zeros((4, 56, 64, 60), np.float32)
    volume[:, 6:50, 8:58, 5:55] = rng.uniform(0.5, 2.0, size=(4, 44, 50, 50))  # a "head" to crop to
    checkpoint = _checkpoint()
    reference = Predictor(checkpoint, device="cpu", overlap=0.5, window_batch=1).predict(
        volume, keep_probabilities=True
    )
    for window_batch, limit in ((8, None), (8, 1e-4), (2, 50.0)):
        predictor = Predictor(checkpoint, device="cpu", overlap=0.5, window_batch=window_batch, memory_limit_gb=limit)
        assert predictor.window_batch == (1 if limit == 1e-4 else window_batch)
        prediction = predictor.predict(volume, keep_probabilities=True)
        np.testing.assert_allclose(
            prediction.probabilities.astype(np.float32), reference.probabilities.astype(np.float32), atol=1e-3
        )
        assert (prediction.labels != reference.labels).mean() < 1e-4  # float16-rounding ties at most
    with pytest.raises(ValueError, match="memory_limit_gb"):
        Predictor(checkpoint, device="cpu", memory_limit_gb=0)


def test_default_overlap_is_shared_by_predictor_cli_and_validation() -> None:
    segment = build_parser().parse_args(["segment", "-i", "a.nii", "-o", "b.nii"])
    assert segment.overlap == DEFAULT_OVERLAP
    assert Predictor.__init__.__defaults__[1] == DEFAULT_OVERLAP
    assert tiny_config().val_overlap == DEFAULT_OVERLAP
