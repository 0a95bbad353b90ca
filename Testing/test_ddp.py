"""Multi-process training: two CPU ranks (gloo) under torchrun on a tiny phantom.

Both ranks end with bit-identical weights, only rank 0 writes checkpoints, a run stopped on one rank mid-epoch
resumes (through ``torchrun -m cldl train --resume``) to exactly the weights and metrics of an uninterrupted run,
and a SIGUSR1 to one worker stops every rank after the same step with a consistent checkpoint.

This file is also the worker script: ``torchrun ... Testing/test_ddp.py --worker OUT RESULTS EPOCHS STOP_CALL``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PHANTOMS = {"train_seeds": [0, 2], "val_seeds": [10_000, 10_003], "shape": [32, 32, 32]}
ITERS = 3


def _config(**overrides):
    """The tiny run of every test here (3 validation cases: an uneven shard over 2 ranks)."""
    from conftest import tiny_config

    return tiny_config(phantoms=PHANTOMS, iters_per_epoch=ITERS, **overrides)


def _torchrun(*args: str) -> list[str]:
    """A torchrun command with 2 CPU processes on a free local port."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args]


def _env() -> dict[str, str]:
    """One thread per rank (2 ranks on 2 cores); the repository importable."""
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path}


def _run_workers(out: Path, results: Path, epochs: int, stop_call: int = 0) -> list[dict]:
    """Train with this file as the worker on 2 ranks; returns each rank's report."""
    results.mkdir(parents=True, exist_ok=True)
    command = _torchrun(str(Path(__file__)), "--worker", str(out), str(results), str(epochs), str(stop_call))
    process = subprocess.run(command, capture_output=True, text=True, env=_env(), timeout=120, cwd=ROOT)
    assert process.returncode == 0, process.stderr[-4000:]
    return [json.loads((results / f"rank{r}.json").read_text()) for r in range(2)]


def _worker(out: str, results: str, epochs: int, stop_call: int) -> None:
    """One rank: train (rank 1 asks to stop at its ``stop_call``-th check), record checkpoint writes, report."""
    import torch

    import cldl.training.trainer as train_module
    from cldl.events import Reporter
    from cldl.training.distributed import init_distributed, shutdown
    from cldl.training.trainer import Trainer
    from cldl.training.validation import validate

    config = _config(epochs=epochs)  # imports conftest, which sets 2 threads for the test suite
    torch.set_num_threads(1)  # as the `cldl train` ranks (OMP_NUM_THREADS=1): on some CPUs (AVX-512) gradients
    # round differently with another thread count, and the resume through the command line would not be exact
    context = init_distributed("cpu")  # the worker owns the group, so it can check validation afterwards
    writes: list[str] = []
    original = train_module.save_checkpoint

    def recording(checkpoint: object, path: Path) -> Path:
        writes.append(Path(path).name)
        return original(checkpoint, path)

    train_module.save_checkpoint = recording
    calls = [0]

    def stop_requested() -> bool:
        calls[0] += 1
        return context.rank == 1 and stop_call > 0 and calls[0] >= stop_call

    trainer = Trainer(config, out, Reporter("none"), stop_requested=stop_requested, dist=context)
    summary = trainer.run()
    # sharded validation equals one process validating every case, on every rank
    from cldl.checkpoint import load_checkpoint

    checkpoint = load_checkpoint(Path(out) / "last.pt")
    model = checkpoint.build_model("cpu").train()
    _, val_cases, _, _ = train_module.load_dataset(trainer.config, trainer.task, trainer.prep, Reporter("none"))
    args = (model, val_cases, trainer.task, trainer.patch, 0.25, None, Reporter("none"))
    sharded = validate(*args, rank=context.rank, world_size=context.world_size)
    alone = validate(*args)
    report = {
        "rank": context.rank,
        "writes": writes,
        "digest": summary["weights_sha256"],
        "stopped": summary["stopped"],
        "stopped_at_iteration": summary["stopped_at_iteration"],
        "epochs": summary["epochs"],
        "sharded": sharded,
        "alone": alone,
    }
    (Path(results) / f"rank{context.rank}.json").write_text(json.dumps(report))
    shutdown(context)


def _metrics(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


def test_two_ranks_identical_weights_one_writer_and_exact_resume(tmp_path: Path) -> None:
    from cldl.checkpoint import load_checkpoint
    from cldl.training.distributed import weights_digest

    straight = tmp_path / "straight"
    reports = _run_workers(straight, tmp_path / "r1", epochs=2)
    assert reports[0]["digest"] == reports[1]["digest"]  # each rank hashed its own weights
    assert reports[0]["writes"].count("last.pt") == 2 and set(reports[0]["writes"]) == {"last.pt", "best.pt"}
    assert reports[1]["writes"] == []  # exactly one checkpoint writer
    assert reports[0]["sharded"] == reports[1]["sharded"] == reports[0]["alone"]
    last = load_checkpoint(straight / "last.pt")
    assert weights_digest(last.state_dict) == reports[0]["digest"]
    assert last.training_state["world_size"] == 2 and len(last.training_state["rank_states"]) == 2
    states = last.training_state["rank_states"]
    assert states[0]["sampler_rng"] != states[1]["sampler_rng"]  # each rank drew its own patches
    assert [r["epoch"] for r in _metrics(straight)] == [1, 2]  # one record per epoch: one log writer
    assert not list(straight.glob(".*.part"))  # cldl.files.atomic_writes staging folders

    # rank 1 alone asks to stop at its 5th check (epoch 2, step 1): every rank stops after that step
    resumed = tmp_path / "resumed"
    reports = _run_workers(resumed, tmp_path / "r2", epochs=2, stop_call=ITERS + 2)
    assert all(r["stopped"] and r["stopped_at_iteration"] == 1 and r["epochs"] == 1 for r in reports)
    assert reports[0]["digest"] == reports[1]["digest"]
    assert reports[1]["writes"] == []
    state = load_checkpoint(resumed / "last.pt").training_state
    assert (state["epoch"], state["iteration"]) == (1, 1)

    # resume through the command line: the same weights and metrics as the uninterrupted run
    command = _torchrun("-m", "cldl", "train", "--resume", "--out", str(resumed), "--progress", "jsonl")
    process = subprocess.run(command, capture_output=True, text=True, env=_env(), timeout=120, cwd=ROOT)
    assert process.returncode == 0, process.stderr[-4000:]
    events = [json.loads(line) for line in process.stdout.splitlines() if line.startswith("{")]
    results = [e for e in events if e["event"] == "result"]
    assert len(results) == 1  # only rank 0 reports
    assert results[0]["weights_sha256"] == weights_digest(last.state_dict)
    assert not results[0]["stopped"] and results[0]["world_size"] == 2
    assert _metrics(resumed) == _metrics(straight)
    assert any(e["event"] == "log" and "epoch 2, iteration 2" in e.get("message", "") for e in events)


def test_sigusr1_to_one_worker_stops_every_rank_with_a_consistent_checkpoint(tmp_path: Path) -> None:
    from conftest import tiny_config

    from cldl.checkpoint import load_checkpoint

    out = tmp_path / "run"
    config = tmp_path / "config.json"
    config.write_text(json.dumps(tiny_config(phantoms=PHANTOMS, epochs=3, iters_per_epoch=400).to_dict()))
    command = _torchrun("-m", "cldl", "train", "--config", str(config), "--out", str(out), "--progress", "jsonl")
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(), cwd=ROOT)
    results = []
    try:
        for line in process.stdout:
            event = json.loads(line)
            if event["event"] == "progress" and event["stage"] == "train" and event["done"] == 2:
                os.kill(_worker_pids(process.pid)[1], signal.SIGUSR1)  # rank 1 only
            elif event["event"] == "result":
                results.append(event)
        process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, process.stderr.read()[-3000:]
    assert len(results) == 1 and results[0]["stopped"] and results[0]["epochs"] == 0
    state = load_checkpoint(out / "last.pt").training_state
    assert state["epoch"] == 0 and state["iteration"] == results[0]["stopped_at_iteration"] >= 2
    assert len(state["rank_states"]) == 2


def _worker_pids(agent: int, timeout: float = 30.0) -> dict[int, int]:
    """{rank: pid} of torchrun's worker processes."""
    deadline = time.monotonic() + timeout
    while True:
        found = {}
        for pid in Path(f"/proc/{agent}/task/{agent}/children").read_text().split():
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            values = dict(item.decode(errors="replace").split("=", 1) for item in environ if b"=" in item)
            if "RANK" in values:
                found[int(values["RANK"])] = int(pid)
        if len(found) == 2 or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


def test_a_launched_process_ends_with_its_code_and_everything_it_printed(tmp_path: Path) -> None:
    # `cldl train` under torchrun ends through end_launched_process (os._exit): nothing buffered may be lost
    script = (
        "import sys\n"
        "from cldl.training.distributed import end_launched_process\n"
        'sys.stdout.write(\'{"event": "result"}\\n\' * 2000)\n'
        "sys.stderr.write('last words')\n"
        "end_launched_process(3)\n"
        "print('not reached')\n"
    )
    process = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=_env(), cwd=ROOT)
    assert process.returncode == 3
    assert process.stdout.splitlines() == ['{"event": "result"}'] * 2000
    assert process.stderr == "last words"


def test_the_training_command_ends_launched_processes_early_and_only_them(monkeypatch, tmp_path: Path) -> None:
    import cldl.commands.main as cli
    import cldl.commands.train as train_command
    import cldl.training.distributed as distributed

    ended: list[int] = []
    monkeypatch.setattr(distributed, "end_launched_process", ended.append)
    monkeypatch.setattr(train_command, "run", lambda args, reporter: 0)
    monkeypatch.delenv("RANK", raising=False)
    assert cli.main(["train", "--out", str(tmp_path)]) == 0 and ended == []  # alone: an ordinary return
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    cli.main(["train", "--out", str(tmp_path)])
    assert ended == [0]


if __name__ == "__main__" and sys.argv[1:2] == ["--worker"]:
    sys.path.insert(0, str(HERE))
    _worker(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))
    from cldl.training.distributed import end_launched_process

    end_launched_process(0)
