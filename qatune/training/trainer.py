"""The training recipe: config in, trained run directory out. Read top to bottom.

data -> features (cached) -> model + method -> AdamW/linear schedule loop (dynamic padding, length
grouping, bf16 autocast, gradient accumulation, checkpoints) -> per-epoch evaluation -> save + track.
"""

from __future__ import annotations

import math
import os
import random
import resource
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from qatune import runtime
from qatune.artifacts import RUN_CONFIG, ensure_writable_dir, write_json
from qatune.config import TrainConfig, config_to_dict, load_config, save_config
from qatune.errors import ConfigError, QatuneError
from qatune.methods import registry
from qatune.models import load_model_for_task, load_tokenizer, resolve_model
from qatune.tasks import get_task
from qatune.training.checkpoint import (
    TrainerState,
    has_checkpoint,
    load_checkpoint,
    remove_checkpoint,
    save_checkpoint,
)


@dataclass
class TrainResult:
    output_dir: Path
    metrics: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)
    status: str = "finished"  # finished | stopped (resumable)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def peak_rss_mb() -> float:
    """Peak resident memory of this process (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total


def _optimizer(model: torch.nn.Module, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim < 2 or "LayerNorm" in name or "layer_norm" in name else decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=lr)


def _check_output(cfg: TrainConfig, out: Path) -> None:
    """Never silently overwrite a finished run or ignore a checkpoint the user may want."""
    finished = (out / RUN_CONFIG).is_file()
    if cfg.resume or cfg.overwrite:
        return
    if has_checkpoint(out):
        raise ConfigError(f"{out} holds an unfinished run's checkpoint; pass --resume to continue it, "
                          "--overwrite to start over, or choose another --output")
    if finished:
        raise ConfigError(f"{out} already holds a finished run; choose another --output or pass --overwrite")


def _log(msg: str) -> None:
    if runtime.is_main_process():
        print(f"qatune: {msg}", file=sys.stderr, flush=True)


def train(config: TrainConfig | dict[str, Any] | str | os.PathLike, progress: bool = True) -> TrainResult:
    """Train a model as ``config`` says and write the run directory; returns its metrics."""
    if isinstance(config, TrainConfig):
        cfg = config
    elif isinstance(config, dict):
        cfg = load_config(base=config)
    else:
        cfg = load_config(config)
    if not cfg.train:
        raise ConfigError("no training data: pass --train (a SQuAD-format file, folder or dataset name)")
    out = Path(cfg.output)
    is_main = runtime.is_main_process()
    if is_main:
        ensure_writable_dir(out)
        _check_output(cfg, out)
    runtime.set_threads(cfg.num_threads)
    seed_everything(cfg.seed)
    distributed = _init_distributed()
    device = runtime.pick_device(cfg.device)
    precision = runtime.resolve_precision(cfg.precision, device)
    task = get_task(cfg.task)
    method, _ = registry.resolve(cfg.method)
    options = registry.options(cfg.method, cfg.options_for(method.name))
    lr = cfg.learning_rate if cfg.learning_rate is not None else method.learning_rate

    # data -> features
    tokenizer = load_tokenizer(cfg.model, cfg.trust_remote_code)
    train_examples, train_report = task.load(cfg.train, cfg.max_train_samples)
    _log(train_report.summary())
    eval_examples, eval_report = [], None
    if cfg.do_eval and cfg.eval:
        eval_examples, eval_report = task.load(cfg.eval, cfg.max_eval_samples, split="validation")
        _log(eval_report.summary())
    version_2 = cfg.version_2 if cfg.version_2 is not None else (
        (eval_report or train_report).version == "2.0")
    show = progress and is_main
    train_features = task.features(train_examples, tokenizer, cfg, progress=show)
    eval_features = task.features(eval_examples, tokenizer, cfg, progress=show) if eval_examples else None

    # model + method
    model = load_model_for_task(cfg.model, task.auto_class, attention_dropout=cfg.attention_dropout,
                                trust_remote_code=cfg.trust_remote_code)
    model = method.build(model, options, task.peft_task_type)
    span_model = task.wrap(model).to(device)
    trainable, total = count_parameters(span_model)
    _log(f"method {cfg.method}: {trainable:,} trainable of {total:,} parameters "
         f"({100 * trainable / total:.2f}%), lr {lr:g}, precision {precision}, device {device}")
    train_module: torch.nn.Module = span_model
    if distributed:
        train_module = torch.nn.parallel.DistributedDataParallel(
            span_model, device_ids=[device.index] if device.type == "cuda" else None)

    world, rank = runtime.world_size(), runtime.rank()
    micro_per_epoch = math.ceil(len(train_features) / (cfg.batch_size * world))
    steps_per_epoch = math.ceil(micro_per_epoch / cfg.grad_accum)
    total_steps = steps_per_epoch * cfg.epochs
    optimizer = _optimizer(span_model, lr, cfg.weight_decay)
    from transformers import get_linear_schedule_with_warmup

    scheduler = get_linear_schedule_with_warmup(optimizer, int(cfg.warmup_ratio * total_steps), total_steps)
    state = TrainerState()
    if cfg.resume and has_checkpoint(out):
        state = load_checkpoint(out, span_model, optimizer, scheduler)
        _log(f"resumed from {out / 'checkpoint'} at epoch {state.epoch + 1}, step {state.global_step}")
    elif cfg.resume:
        _log(f"--resume: no checkpoint in {out}, starting from scratch")

    from qatune.tracking import Tracker

    tracker = Tracker(cfg.tracking, out, cfg.tracking_uri, cfg.experiment, cfg.run_name)
    tracker.start({**config_to_dict(cfg), "learning_rate": lr, "trainable_params": trainable,
                   "total_params": total, "precision": precision, "train_features": len(train_features)})
    eval_kwargs = dict(version_2=version_2, batch_size=cfg.eval_batch_size, device=device, precision=precision,
                       n_best=cfg.n_best, max_answer_length=cfg.max_answer_length,
                       null_threshold=cfg.null_threshold, progress=show)
    from tqdm.auto import tqdm

    status = "finished"
    last_eval = None
    bar = tqdm(total=total_steps, initial=state.global_step, desc="training", unit="step", disable=not show)
    try:
        for epoch in range(state.epoch, cfg.epochs):
            span_model.train()
            global_batches = task.train_batches(train_features, cfg.batch_size * world, cfg.seed + epoch,
                                                cfg.group_by_length)
            batches = [b[rank::world] for b in global_batches]
            skip = state.step_in_epoch * cfg.grad_accum
            t0 = time.perf_counter()
            for start in range(skip, len(batches), cfg.grad_accum):
                group = [b for b in batches[start: start + cfg.grad_accum] if b]
                for micro in group:
                    batch = {k: v.to(device) for k, v in task.collate(train_features, micro, tokenizer).items()}
                    with runtime.autocast(device, precision):
                        loss = task.loss(train_module, batch)
                    (loss / len(group)).backward()
                    state.epoch_loss_sum += float(loss.detach()) / len(group)
                torch.nn.utils.clip_grad_norm_(span_model.parameters(), cfg.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                state.global_step += 1
                state.step_in_epoch += 1
                state.epoch_loss_n += 1
                bar.update(1)
                bar.set_postfix(loss=f"{state.epoch_loss_sum / state.epoch_loss_n:.3f}", epoch=epoch + 1)
                stop = cfg.stop_after_steps is not None and state.global_step >= cfg.stop_after_steps
                if (cfg.save_steps and state.global_step % cfg.save_steps == 0) or stop:
                    state.train_time_s += time.perf_counter() - t0
                    t0 = time.perf_counter()
                    if is_main:
                        save_checkpoint(out, span_model, optimizer, scheduler, state)
                if stop and state.step_in_epoch < steps_per_epoch:
                    raise _Stop()
            state.train_time_s += time.perf_counter() - t0
            record: dict[str, Any] = {"epoch": epoch + 1, "step": state.global_step,
                                      "train_loss": state.epoch_loss_sum / max(state.epoch_loss_n, 1),
                                      "train_time_s": round(state.train_time_s, 3),
                                      "learning_rate": scheduler.get_last_lr()[0]}
            if eval_features is not None and is_main:
                last_eval = task.evaluate(span_model, tokenizer, eval_examples, eval_features, **eval_kwargs)
                record.update({k: v for k, v in last_eval.metrics.items() if isinstance(v, (int, float))})
                _log("epoch {epoch}: train loss {train_loss:.4f}".format(**record) + "".join(
                    f", {k} {record[k]:.4f}" for k in ("eval_loss", "exact_match", "f1") if k in record))
            else:
                _log("epoch {epoch}: train loss {train_loss:.4f}".format(**record))
            state.history.append(record)
            tracker.log_metrics(record, step=epoch + 1)
            state.epoch, state.step_in_epoch = epoch + 1, 0
            state.epoch_loss_sum, state.epoch_loss_n = 0.0, 0
            if is_main and epoch + 1 < cfg.epochs:
                save_checkpoint(out, span_model, optimizer, scheduler, state)
            if cfg.stop_after_steps is not None and state.global_step >= cfg.stop_after_steps \
                    and epoch + 1 < cfg.epochs:
                if is_main:
                    save_checkpoint(out, span_model, optimizer, scheduler, state)
                raise _Stop()
    except _Stop:
        status = "stopped"
    except KeyboardInterrupt:
        bar.close()
        optimizer.zero_grad(set_to_none=True)
        tracker.end("KILLED")
        raise QatuneError(f"interrupted; the last checkpoint in {out} is intact: rerun with --resume") from None
    finally:
        bar.close()

    metrics: dict[str, Any] = {}
    if status == "stopped":
        _log(f"stopped after {state.global_step} steps; continue with --resume (checkpoint in {out})")
        tracker.end("KILLED")
        return TrainResult(out, {"global_step": state.global_step}, state.history, status)

    if is_main:
        metrics = _save_run(cfg, out, span_model.model, tokenizer, state, last_eval, method, lr, precision,
                            trainable, total, len(train_examples), len(train_features), version_2)
        tracker.log_metrics({k: v for k, v in metrics.items() if k != "epoch"})
        tracker.log_artifacts([out / RUN_CONFIG, out / "metrics.json", out / "history.json"])
        tracker.log_artifacts([p for p in out.iterdir() if p.name.startswith(("adapter_", "model"))
                               and p.suffix in (".json", ".safetensors")], artifact_path="model")
        tracker.end()
        remove_checkpoint(out)
    if distributed:
        torch.distributed.barrier()
    return TrainResult(out, metrics, state.history, status)


class _Stop(Exception):
    """Internal: stop_after_steps reached; the checkpoint is saved."""


def _init_distributed() -> bool:
    if runtime.world_size() <= 1:
        return False
    if not torch.distributed.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        torch.distributed.init_process_group(backend=backend)
    return True


def _save_run(cfg: TrainConfig, out: Path, model: Any, tokenizer: Any, state: TrainerState, last_eval: Any,
              method: Any, lr: float, precision: str, trainable: int, total: int, n_questions: int,
              n_features: int, version_2: bool) -> dict[str, Any]:
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    null_threshold = last_eval.null_threshold if last_eval is not None else cfg.null_threshold
    save_config(cfg, out / RUN_CONFIG, extra={
        "method_name": method.name, "resolved_learning_rate": lr, "base_model_path": resolve_model(cfg.model),
        "version_2_model": version_2, "null_threshold": null_threshold, "precision_used": precision,
    })
    metrics: dict[str, Any] = dict(last_eval.metrics) if last_eval is not None else {}
    metrics.update({
        "method": cfg.method, "epochs": cfg.epochs, "train_questions": n_questions, "train_features": n_features,
        "train_time_s": round(state.train_time_s, 3),
        "train_questions_per_s": round(n_questions * cfg.epochs / max(state.train_time_s, 1e-9), 3),
        "train_loss": state.history[-1]["train_loss"] if state.history else None,
        "trainable_params": trainable, "total_params": total, "trainable_pct": 100 * trainable / total,
        "peak_rss_mb": round(peak_rss_mb(), 1),
    })
    if torch.cuda.is_available():
        metrics["cuda_max_allocated_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    write_json(out / "metrics.json", metrics)
    write_json(out / "history.json", state.history)
    if last_eval is not None:
        write_json(out / "predictions.json", last_eval.predictions)
        if version_2:
            write_json(out / "na_probs.json", last_eval.na_probs)
    return metrics
