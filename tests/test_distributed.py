"""Distributed data parallel training on CPU (gloo), launched the way users launch it.

* ``torchrun --nproc_per_node 2 -m qatune train`` with per-process batch 5 trains the same model as one
  process with batch 10: the per-epoch training loss (history.json) matches within a relative 1e-4 (the
  only difference is the float32 summation order of the gradient all-reduce). The data is chosen so the
  last global batch of each epoch holds one window: rank 1 has nothing to train on there and must still
  take part in the all-reduce (a zero-weight pass), and the per-rank losses must be weighted by each
  rank's share of the batch for the average to equal the one-process mean.
* Rank 0 alone writes: one run directory with the same files as a one-process run, no checkpoint or
  temporary leftovers, one MLflow run.
* The distributed run is stopped mid-epoch (stop_after_steps) and resumed under torchrun on the way (all
  ranks load rank 0's checkpoint, every rank gets its own RNG state back), and still ends on the
  one-process loss curve.
* ``accelerate launch`` starts the processes with the same variables torchrun sets (what qatune reads).
* DDP wraps every method's model (PEFT prompt methods included) and turns find_unused_parameters on only
  when a parameter gets no gradient.

The model is the tiny random BERT of conftest with dropout off, so the comparison does not depend on
which random dropout masks each process draws.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import SAMPLE

import qatune

RTOL = 1e-4
QUESTIONS = 34  # -> 51 windows of 128 tokens: 5 global batches of 10 + one batch of a single window
STEPS_PER_EPOCH = 6


def launcher() -> list[str]:
    torchrun = Path(sys.executable).with_name("torchrun")
    base = [str(torchrun)] if torchrun.exists() else [sys.executable, "-m", "torch.distributed.run"]
    return base + ["--standalone", "--nproc_per_node", "2"]  # --standalone: a free port, no clash with others


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run(cmd: list[str], cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc


@pytest.fixture(scope="module")
def model_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """conftest's tiny BERT with dropout off."""
    from transformers import AutoTokenizer, BertForQuestionAnswering

    path = tmp_path_factory.mktemp("tiny-bert-nodropout")
    model = BertForQuestionAnswering.from_pretrained(tiny_model_dir, hidden_dropout_prob=0.0,
                                                     attention_probs_dropout_prob=0.0)
    model.save_pretrained(path)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("ddp")


def train_args(model: Path, out: Path, cache: Path, batch_size: int) -> list[str]:
    return ["-m", "qatune", "train", "--model", str(model), "--method", "lora", "--train", str(SAMPLE / "train.json"),
            "--eval", str(SAMPLE / "dev.json"), "--max-train-samples", str(QUESTIONS), "--max-eval-samples", "8",
            "--epochs", "2", "--batch-size", str(batch_size), "--learning-rate", "5e-3", "--max-seq-length", "128",
            "--precision", "fp32", "--device", "cpu", "--no-progress", "--output", str(out),
            f"cache_dir={cache}", "doc_stride=30"]


@pytest.fixture(scope="module")
def single(model_dir: Path, work: Path) -> Path:
    """One process, batch 10: the same command line, parsed by the CLI, trained in this process."""
    from qatune.cli import build_parser
    from qatune.cli.train_cmd import FLAGS
    from qatune.config import load_config

    args = build_parser().parse_args(train_args(model_dir, work / "single", work / "cache", 10)[2:] + ["num_threads=1"])
    base = {key: getattr(args, key) for _, key, _, _ in FLAGS}
    threads = torch.get_num_threads()
    try:
        result = qatune.train(load_config(None, args.overrides, {**base, "tracking": False}), progress=False)
    finally:
        torch.set_num_threads(threads)
    assert result.status == "finished"
    return work / "single"


@pytest.fixture(scope="module")
def ddp(model_dir: Path, work: Path) -> dict[str, Any]:
    """Two processes, batch 5 each, MLflow on: stopped mid-epoch 2, then resumed, both under torchrun."""
    out = work / "ddp"
    db = work / "mlflow-ddp" / "mlflow.db"
    db.parent.mkdir()
    args = launcher() + train_args(model_dir, out, work / "cache", 5) + [f"tracking_uri=sqlite:///{db}"]
    stopped = run(args + ["--stop-after-steps", str(STEPS_PER_EPOCH + 2)], work)
    checkpoint = sorted(p.name for p in (out / "checkpoint").iterdir())
    state = json.loads((out / "checkpoint" / "trainer_state.json").read_text())
    metrics_after_stop = (out / "metrics.json").exists()
    resumed = run(args + ["--resume"], work)
    return {"out": out, "db": db, "stopped": stopped, "resumed": resumed, "checkpoint": checkpoint, "state": state,
            "metrics_after_stop": metrics_after_stop}


def history(out: Path) -> list[dict[str, Any]]:
    return json.loads((out / "history.json").read_text())


def assert_same_curve(a: list[dict[str, Any]], b: list[dict[str, Any]], rtol: float = RTOL) -> None:
    assert [h["step"] for h in a] == [h["step"] for h in b]
    for ha, hb in zip(a, b, strict=True):
        assert hb["train_loss"] == pytest.approx(ha["train_loss"], rel=rtol), (a, b)
        if "eval_loss" in ha:
            assert hb["eval_loss"] == pytest.approx(ha["eval_loss"], rel=10 * rtol), (a, b)


@pytest.mark.slow
def test_two_processes_match_one_process_with_the_same_global_batch(single: Path, ddp: dict[str, Any]) -> None:
    """The DDP run (stopped and resumed on the way) has the loss curve of the one-process run."""
    one, two = history(single), history(ddp["out"])
    assert [h["step"] for h in one] == [STEPS_PER_EPOCH, 2 * STEPS_PER_EPOCH]
    assert_same_curve(one, two)
    metrics = json.loads((ddp["out"] / "metrics.json").read_text())
    assert metrics["world_size"] == 2
    assert metrics["train_questions"] == QUESTIONS and metrics["train_features"] == 51


@pytest.mark.slow
def test_resume_under_torchrun(ddp: dict[str, Any]) -> None:
    assert ddp["stopped"].stdout.count('"status": "stopped"') >= 1 and not ddp["metrics_after_stop"]
    assert set(ddp["checkpoint"]) == {"trainer_state.json", "trainable.safetensors", "optimizer.json",
                                      "optimizer.safetensors", "rng.json", "rng.safetensors", "rng_ranks.json",
                                      "rng_ranks.safetensors", "fingerprint.json"}  # no pickle
    state = ddp["state"]
    assert (state["epoch"], state["step_in_epoch"], state["global_step"]) == (1, 2, STEPS_PER_EPOCH + 2)
    assert len(state["history"]) == 1, "epoch 1's record (with rank 0's evaluation) is in the checkpoint"
    assert "resumed from" in ddp["resumed"].stderr and "epoch 2, step 8" in ddp["resumed"].stderr


@pytest.mark.slow
def test_only_rank_zero_writes(single: Path, ddp: dict[str, Any]) -> None:
    out = ddp["out"]
    files = sorted(p.name for p in out.iterdir())
    assert files == sorted(p.name for p in single.iterdir()), "a DDP run writes exactly what a 1-process run writes"
    assert "metrics.json" in files and "predictions.json" in files
    assert not [f for f in files if f.startswith("checkpoint") or ".tmp" in f or f.startswith(".qatune-write-test")]
    assert not [p for p in out.rglob("*") if p.is_dir()], "no checkpoint directory left behind"
    with sqlite3.connect(ddp["db"]) as db:
        runs = db.execute("SELECT name, status FROM runs ORDER BY start_time").fetchall()
    assert runs == [("ddp", "KILLED"), ("ddp", "FINISHED")], "one MLflow run per launch, from rank 0 only"
    assert ddp["resumed"].stderr.count("qatune: epoch 2:") == 1, "rank 0 alone logs"


@pytest.mark.slow
def test_accelerate_launch_sets_what_qatune_reads(tmp_path: Path) -> None:
    accelerate = Path(sys.executable).with_name("accelerate")
    if not accelerate.exists():
        pytest.skip("accelerate CLI not installed beside this Python")
    probe = tmp_path / "probe.py"
    # each rank writes its own file: two ranks printing to one pipe can interleave on a single line
    probe.write_text("import json, os, sys\nfrom pathlib import Path\nfrom qatune import runtime\n"
                     "Path(sys.argv[1], f'rank{runtime.rank()}.json').write_text(json.dumps({"
                     "'rank': runtime.rank(), 'world': runtime.world_size(), "
                     "'local': runtime.local_rank(), 'addr': bool(os.environ.get('MASTER_ADDR')), "
                     "'port': bool(os.environ.get('MASTER_PORT'))}))\n")
    # CPU multi-process needs --multi_gpu (it selects accelerate's torchrun launcher; --cpu runs 1 process)
    run([str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()), str(probe), str(tmp_path)],
               tmp_path,
               timeout=120)
    seen = sorted((json.loads(p.read_text()) for p in tmp_path.glob("rank*.json")), key=lambda d: d["rank"])
    assert seen == [{"rank": r, "world": 2, "local": r, "addr": True, "port": True} for r in (0, 1)]


# --- DDP wrapping, in this process (a one-process gloo group) ----------------------------------------


@pytest.fixture
def process_group(tmp_path: Path):
    torch.distributed.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        yield
    finally:
        torch.distributed.destroy_process_group()


def span_model_and_features(model_dir: Path, method: str):
    from qatune.backends import get_backend
    from qatune.config import config_from_dict
    from qatune.methods import registry
    from qatune.tasks import get_task

    task = get_task("extractive_qa")
    backend = get_backend("hf")
    cfg = config_from_dict({"model": str(model_dir), "method": method, "max_seq_length": 128, "doc_stride": 32})
    tokenizer = backend.load_tokenizer(cfg.model, task.model)
    examples, _ = task.read(str(SAMPLE / "train.json"), 4)
    features = task.features(examples, tokenizer, cfg.task_config(), cfg.max_seq_length, training=True,
                             cache_dir=cfg.cache_dir, progress=False)
    spec, _ = registry.resolve(method)
    model = backend.apply_method(backend.load_base(cfg.model, task.model), spec, registry.options(method, {}),
                                 task.model)
    return task, task.wrap(model), features, tokenizer


@pytest.mark.parametrize("method", ["full", "lora", "ia3", "prefix", "ptuning", "prompt"])
def test_ddp_trains_every_method(model_dir: Path, process_group: None, method: str) -> None:
    from qatune.training.trainer import _wrap_ddp

    task, span_model, features, tokenizer = span_model_and_features(model_dir, method)
    ddp = _wrap_ddp(span_model, task, features, tokenizer, torch.device("cpu"))
    assert ddp.find_unused_parameters is False  # every trainable parameter is used by QASpanModel's forward
    opt = torch.optim.SGD([p for p in span_model.parameters() if p.requires_grad], lr=1e-3)
    for step in range(2):  # DDP raises in the second step if a parameter missed its all-reduce in the first
        batch = task.collate(features, [step, step + 1], tokenizer)
        task.loss(ddp, batch).backward()
        opt.step()
        opt.zero_grad()


def test_ddp_probe_turns_on_find_unused_parameters(model_dir: Path, process_group: None) -> None:
    from qatune.training.trainer import _wrap_ddp

    task, span_model, features, tokenizer = span_model_and_features(model_dir, "lora")
    span_model.unused = torch.nn.Parameter(torch.zeros(3))  # trainable, never in the forward pass
    ddp = _wrap_ddp(span_model, task, features, tokenizer, torch.device("cpu"))
    assert ddp.find_unused_parameters is True
    for step in range(2):
        task.loss(ddp, task.collate(features, [step], tokenizer)).backward()
