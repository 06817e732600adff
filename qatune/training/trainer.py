"""The training recipe: config in, trained run directory out. Read top to bottom.

data -> features (cached) -> model + method -> AdamW/linear schedule loop (dynamic padding, length
grouping, bf16 autocast, gradient accumulation, checkpoints) -> per-epoch evaluation -> save + track.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import json
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

from qatune import rundir, runtime
from qatune.artifacts import RUN_CONFIG, write_json
from qatune.backends import get_backend
from qatune.config import TrainConfig, config_from_dict, config_to_dict, load_config, save_config
from qatune.core.jsonio import finite_or_null
from qatune.errors import ConfigError, QatuneError
from qatune.methods import registry
from qatune.tasks import get_task
from qatune.tasks.base import bind_task, save_task_state, write_result_file
from qatune.training.checkpoint import (
    CheckpointError,
    TrainerState,
    has_checkpoint,
    load_checkpoint,
    load_rank_rngs,
    read_fingerprint,
    read_trainer_state,
    remove_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
    verify_checkpoint,
)


@dataclass
class TrainResult:
    output_dir: Path
    metrics: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)
    status: str = "finished"  # finished | stopped (resumable)


# smoothing of the per-step training loss in history.json / MLflow / TensorBoard (an exponential moving
# average: ema = BETA * ema + (1 - BETA) * loss, starting at the first step's loss)
LOSS_EMA_BETA = 0.9

# return freed heap pages to the OS every N optimizer steps on CPU (see runtime.release_free_memory)
TRIM_EVERY_STEPS = max(1, int(os.environ.get("QATUNE_TRIM_EVERY_STEPS", "1")))


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
    # fused AdamW: one kernel per step instead of ~10 elementwise ops per parameter (~13% of a CPU step)
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=lr, fused=True)


def _check_output(cfg: TrainConfig, out: Path, base_model: str, fingerprint: dict[str, Any]) -> bool:
    """Refuse, before anything is loaded or removed: a folder that is not empty and not a qatune run, the
    folder of the model being read, a finished run or a checkpoint without --overwrite/--resume, and a
    checkpoint written with other training settings (see qatune/rundir.py for the write rule). Returns
    whether the checkpoint there is to be resumed."""
    rundir.check_output(out, "run", models=[base_model], overwrite=bool(cfg.overwrite))
    if _resumable(cfg, out, fingerprint):
        return True
    if cfg.overwrite:
        return False
    if has_checkpoint(out):
        raise ConfigError(f"{out} holds an unfinished run's checkpoint; pass --resume to continue it, "
                          "--overwrite to start over, or choose another --output")
    if (out / RUN_CONFIG).is_file():
        raise ConfigError(f"{out} already holds a finished run" + (" (nothing to resume)" if cfg.resume else "")
                          + "; choose another --output or pass --overwrite")
    return False


# files every run writes; the task (its evaluation files) and the backend (model files) add theirs, and the
# manifest (qatune/rundir.py) records exactly what was written
RUN_FILES = ("qatune.yaml", "metrics.json", "history.json")

# config keys that do not change the training trajectory: free to change between a checkpoint and --resume
RESUME_FREE_KEYS = frozenset({
    "eval", "max_eval_samples", "eval_batch_size", "do_eval", "save_steps", "stop_after_steps", "resume",
    "overwrite", "tracking", "tracking_uri", "register_model", "experiment", "run_name", "cache_dir", "num_threads",
    "device", "debug", "keep_best", "output",
})
# fingerprinted as resolved; the task's section without its evaluation-only options (QA: n_best, ...)
_RESOLVED_KEYS = frozenset({"learning_rate", "method_options", "model", "train", "task_options"})


def data_identity(spec: str | None) -> dict[str, Any] | str | None:
    """What identifies the training data without reading it all: a file's size and the SHA-256 of its first
    MiB, a folder's file names and sizes; a name that is not a local path (hub dataset) as given."""
    import hashlib

    if not spec:
        return None
    path = Path(spec).expanduser()
    if path.is_file():
        with open(path, "rb") as fh:
            head = hashlib.sha256(fh.read(2**20)).hexdigest()
        return {"size": path.stat().st_size, "sha256_first_mib": head}
    if path.is_dir():
        listing = sorted((str(p.relative_to(path)), p.stat().st_size) for p in path.rglob("*") if p.is_file())
        return {"files": len(listing), "sha256_listing": hashlib.sha256(json.dumps(listing).encode()).hexdigest()}
    return str(spec)


def training_fingerprint(cfg: TrainConfig, lr: float, options: dict[str, Any], base_model: str) -> dict[str, Any]:
    """Every setting that shapes the training trajectory, as recorded in a checkpoint and checked on --resume.

    Values are compared after resolution: the learning rate the method default gives, the method's full
    option set, the base model's absolute path, the data's content identity (a moved file is the same data).
    """
    data = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in RESUME_FREE_KEYS | _RESOLVED_KEYS}
    free = set(getattr(get_task(cfg.task), "eval_only_options", ()))
    data.update(learning_rate=lr, method_options=options, model=base_model, train=data_identity(cfg.train),
                task_options={k: v for k, v in cfg.task_options.items() if k not in free})
    return json.loads(json.dumps(data, default=str))  # the form it has after a JSON round trip


def _check_fingerprint(out: Path, current: dict[str, Any]) -> None:
    saved = read_fingerprint(out)
    changed = [f"{key}: {_short(saved.get(key))} -> {_short(current.get(key))}"
               for key in sorted(set(saved) | set(current)) if saved.get(key) != current.get(key)]
    if changed:
        raise CheckpointError(
            f"--resume: the checkpoint in {out} does not match this configuration; changed: " + "; ".join(changed)
            + ". Resume with the settings it was written with, or start over with --overwrite or a new --output")


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True) if isinstance(value, (dict, list)) else repr(value)
    return text if len(text) <= 120 else text[:117] + "..."


def check_window_fits(tokenizer: Any, cfg: TrainConfig) -> None:
    """``max_seq_length`` plus the virtual tokens of prompt/P-tuning must fit the model's positions (the
    tokenizer's ``model_max_length``); past it, training dies with a tensor size mismatch at the first long
    window, possibly mid-epoch. Tokenizers that do not know their limit are not checked."""
    limit = getattr(tokenizer, "model_max_length", None)
    if not isinstance(limit, int) or limit > 1_000_000:  # unset: transformers' VERY_LARGE_INTEGER
        return
    method, _ = registry.resolve(cfg.method)
    virtual = 0
    if method.takes_positions:
        virtual = int(registry.options(cfg.method, cfg.options_for(method.name)).get("num_virtual_tokens") or 0)
    if cfg.max_seq_length + virtual > limit:
        plus = f" + {virtual} virtual tokens of {method.name}" if virtual else ""
        raise ConfigError(f"config key 'max_seq_length': {cfg.max_seq_length}{plus} is more than the {limit} "
                          f"positions model {cfg.model} has; use max_seq_length <= {limit - virtual}"
                          + (f" or fewer {method.name}.num_virtual_tokens" if virtual else ""))


def _log(msg: str) -> None:
    if runtime.is_main_process():
        print(f"qatune: {msg}", file=sys.stderr, flush=True)


def train(config: TrainConfig | dict[str, Any] | str | os.PathLike, progress: bool = True) -> TrainResult:
    """Train a model as ``config`` says and write the run directory; returns its metrics.

    Launched by torchrun / ``accelerate launch`` / a PyTorchJob (WORLD_SIZE > 1) this is one rank of a
    DistributedDataParallel job: ``batch_size`` is per process (global batch = batch_size x world size),
    every rank trains on its slice of each global batch, and only rank 0 writes the run directory,
    checkpoints, MLflow runs and progress bars, and evaluates (the other ranks wait; see docs/scaling.md).
    """
    if isinstance(config, TrainConfig):
        # built directly, it skipped load_config's checks: one round trip gives it the same types and ranges
        cfg = config_from_dict(dataclasses.asdict(config), source="TrainConfig")
    elif isinstance(config, dict):
        cfg = load_config(base=config)
    else:
        cfg = load_config(config)
    if not cfg.train:
        raise ConfigError("no training data: pass --train (a data file, folder or dataset name)")
    runtime.set_threads(cfg.num_threads)
    seed_everything(cfg.seed)
    device = runtime.pick_device(cfg.device)
    owns_group = runtime.init_process_group(device)
    try:
        return _train(cfg, device, progress)
    finally:
        if owns_group and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def _train(cfg: TrainConfig, device: torch.device, progress: bool) -> TrainResult:
    out = Path(cfg.output)
    distributed = runtime.distributed()
    world, rank = (torch.distributed.get_world_size(), torch.distributed.get_rank()) if distributed else (1, 0)
    is_main = rank == 0

    task = bind_task(get_task(cfg.task), config_to_dict(cfg))  # a task configured by its options section
    backend = get_backend(cfg.backend)
    backend_options = cfg.backend_config()
    task_options = cfg.task_config()
    method, _ = registry.resolve(cfg.method)
    options = registry.options(cfg.method, cfg.options_for(method.name))
    lr = cfg.learning_rate if cfg.learning_rate is not None else method.learning_rate
    base_model = backend.resolve_model(cfg.model)  # absolute for a local folder: recorded so the run loads anywhere
    fingerprint = training_fingerprint(cfg, lr, options, base_model)
    # nothing is written or removed yet: one error on every rank instead of ranks hanging in a collective
    _on_main_then_all(lambda: _check_output(cfg, out, base_model, fingerprint))
    precision = runtime.resolve_precision(cfg.precision, device)

    # data -> features -> model. Rank 0 goes first (downloads, fills the feature cache); the other ranks
    # then read the caches. Only rank 0 evaluates, so only rank 0 loads the evaluation data.
    evaluating = bool(cfg.do_eval and cfg.eval)
    show = progress and is_main
    eval_examples, eval_report, eval_features = [], None, None
    with runtime.main_process_first():
        tokenizer = backend.load_tokenizer(cfg.model, task.model, backend_options)
        check_window_fits(tokenizer, cfg)
        train_examples, train_report = task.read(cfg.train, cfg.max_train_samples)
        _log(train_report.summary())
        if evaluating and is_main:
            eval_examples, eval_report = task.read(cfg.eval, cfg.max_eval_samples, split="validation")
            _log(eval_report.summary())
        # labelled windows for evaluation too: they give the validation loss
        train_features = task.features(train_examples, tokenizer, task_options, cfg.max_seq_length, training=True,
                                       cache_dir=cfg.cache_dir, progress=show)
        if eval_examples:
            eval_features = task.features(eval_examples, tokenizer, task_options, cfg.max_seq_length,
                                          training=True, cache_dir=cfg.cache_dir, progress=show)
        model = backend.load_base(cfg.model, task.model, backend_options, attention_dropout=cfg.attention_dropout,
                                   hidden_dropout=cfg.hidden_dropout)
    task_options = task.prepare(task_options, train_report, eval_report)
    task = bind_task(task, {**config_to_dict(cfg), **task.record(task_options)})  # + what it fitted to the data
    # every input is loaded and valid: only now create the folder or remove the previous run's files
    _on_main_then_all(lambda: _prepare_output(cfg, out, base_model, fingerprint))

    # model + method (same seed on every rank; DDP also broadcasts rank 0's weights when it wraps)
    model = backend.apply_method(model, method, options, task.model)
    span_model = task.wrap(model).to(device)
    trainable, total = count_parameters(span_model)
    _log(f"method {cfg.method}: {trainable:,} trainable of {total:,} parameters "
         f"({100 * trainable / total:.2f}%), lr {lr:g}, precision {precision}, device {device}"
         + (f", {world} processes (global batch {cfg.batch_size * world})" if distributed else ""))
    train_module: torch.nn.Module = span_model
    if distributed:
        train_module = _wrap_ddp(span_model, task, train_features, tokenizer, device)

    micro_per_epoch = math.ceil(len(train_features) / (cfg.batch_size * world))
    steps_per_epoch = math.ceil(micro_per_epoch / cfg.grad_accum)
    total_steps = steps_per_epoch * cfg.epochs
    optimizer = _optimizer(span_model, lr, cfg.weight_decay)
    from transformers import get_linear_schedule_with_warmup

    scheduler = get_linear_schedule_with_warmup(optimizer, int(cfg.warmup_ratio * total_steps), total_steps)
    state = TrainerState()
    # rank 0 decides; every rank then loads the same checkpoint (the output dir must be shared storage)
    resume = runtime.broadcast_object(bool(cfg.resume and has_checkpoint(out)))
    if resume:
        if not has_checkpoint(out):
            raise ConfigError(f"rank {rank}: cannot see the checkpoint rank 0 resumes from in {out}; "
                              "multi-node jobs need --output on storage shared by all nodes")
        with runtime.main_process_first():  # rank 0 alone finishes a checkpoint swap a crash interrupted
            state = load_checkpoint(out, span_model, optimizer, scheduler)  # the unwrapped model's weights
        _restore_rank_rng(out)
        _log(f"resumed from {out / 'checkpoint'} at epoch {state.epoch + 1}, step {state.global_step}")
    elif cfg.resume:
        _log(f"--resume: no checkpoint in {out}, starting from scratch")

    from qatune.tracking import Tracker

    tracker = Tracker(cfg.tracking, out, cfg.tracking_uri, cfg.experiment, cfg.run_name)  # rank 0 only
    if tracker.tensorboard is not None:
        rundir.record(out, "run", [tracker.tensorboard.log_dir.name])  # --overwrite may remove it, nothing else
    tracker.start({**config_to_dict(cfg), "learning_rate": lr, "trainable_params": trainable,
                   "total_params": total, "precision": precision, "train_features": len(train_features),
                   "world_size": world})
    eval_kwargs = dict(batch_size=cfg.eval_batch_size, device=device, precision=precision, progress=show)
    shown_metrics = ("eval_loss", *(c.key for c in task.report.columns))
    from tqdm.auto import tqdm

    def checkpoint() -> None:
        _save_checkpoint_all_ranks(out, span_model, optimizer, scheduler, state, fingerprint)

    status = "finished"
    last_eval = None
    best = _BestEpoch(span_model) if cfg.keep_best and evaluating else None
    bar = tqdm(total=total_steps, initial=state.global_step, desc="training", unit="step", disable=not show)
    try:
        for epoch in range(state.epoch, cfg.epochs):
            span_model.train()
            # the same global batches on every rank (same seed); rank r trains on b[r::world] of each
            global_batches = task.train_batches(train_features, cfg.batch_size * world, cfg.seed + epoch,
                                                cfg.group_by_length)
            skip = state.step_in_epoch * cfg.grad_accum
            t0 = time.perf_counter()
            for start in range(skip, len(global_batches), cfg.grad_accum):
                group = [b for b in global_batches[start: start + cfg.grad_accum] if b]
                step_loss = torch.zeros((), dtype=torch.float64, device=device)
                for i, global_micro in enumerate(group):
                    local = global_micro[rank::world]
                    # DDP averages gradients over ranks; weighting each rank's mean loss by its share of the
                    # global batch makes that average the global-batch mean, as in one process, even when
                    # the last batch does not split evenly
                    share = len(local) / len(global_micro)
                    if not local:  # fewer windows than ranks: a zero-weight pass keeps the ranks in step
                        local = global_micro[:1]
                    sync = not distributed or i == len(group) - 1  # all-reduce once per optimizer step
                    with contextlib.nullcontext() if sync else train_module.no_sync():
                        batch = {k: v.to(device) for k, v in task.collate(train_features, local, tokenizer).items()}
                        with runtime.autocast(device, precision):
                            loss = task.loss(train_module, batch)
                        (loss * (share * world / len(group))).backward()
                    step_loss += loss.detach().double() * (share / len(group))
                if distributed:
                    torch.distributed.all_reduce(step_loss)  # the global-batch loss, identical on every rank
                torch.nn.utils.clip_grad_norm_(span_model.parameters(), cfg.max_grad_norm)
                step_lr = float(optimizer.param_groups[0]["lr"])  # the rate this step uses (before scheduler.step)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                state.global_step += 1
                if device.type == "cpu" and state.global_step % TRIM_EVERY_STEPS == 0:
                    runtime.release_free_memory()
                state.step_in_epoch += 1
                state.epoch_loss_sum += float(step_loss)
                state.epoch_loss_n += 1
                point = _step_point(state, float(step_loss), step_lr)
                state.steps.append(point)
                tracker.log_step(state.global_step, {k: v for k, v in point.items() if k != "step"})
                bar.update(1)
                bar.set_postfix(loss=f"{state.epoch_loss_sum / state.epoch_loss_n:.3f}", epoch=epoch + 1)
                stop = cfg.stop_after_steps is not None and state.global_step >= cfg.stop_after_steps
                if (cfg.save_steps and state.global_step % cfg.save_steps == 0) or stop:
                    state.train_time_s += time.perf_counter() - t0
                    t0 = time.perf_counter()
                    checkpoint()
                if stop and state.step_in_epoch < steps_per_epoch:
                    raise _Stop()
            state.train_time_s += time.perf_counter() - t0
            record: dict[str, Any] = {"epoch": epoch + 1, "step": state.global_step,
                                      "train_loss": state.epoch_loss_sum / max(state.epoch_loss_n, 1),
                                      "train_time_s": round(state.train_time_s, 3),
                                      "learning_rate": scheduler.get_last_lr()[0]}
            steps, state.steps = state.steps, []
            if evaluating and is_main:  # the other ranks wait in broadcast_object below
                last_eval = task.evaluate(span_model, tokenizer, eval_examples, eval_features, task_options,
                                          **eval_kwargs)
                record.update({k: v for k, v in last_eval.metrics.items() if isinstance(v, (int, float))})
                if best is not None:
                    best.offer(epoch + 1, last_eval)
            record["steps"] = steps  # per-step curve last: the epoch's summary keys come first in history.json
            record = runtime.broadcast_object(record)  # every rank keeps the same history
            _log("epoch {epoch}: train loss {train_loss:.4f}".format(**record) + "".join(
                f", {k} {record[k]:.4f}" for k in shown_metrics if k in record))
            state.history.append(record)
            tracker.log_metrics(record, step=epoch + 1)
            tracker.flush()
            state.epoch, state.step_in_epoch = epoch + 1, 0
            state.epoch_loss_sum, state.epoch_loss_n = 0.0, 0
            if epoch + 1 < cfg.epochs:
                checkpoint()
                if cfg.stop_after_steps is not None and state.global_step >= cfg.stop_after_steps:
                    raise _Stop()
    except _Stop:
        status = "stopped"
    except KeyboardInterrupt:
        bar.close()
        optimizer.zero_grad(set_to_none=True)
        tracker.end("KILLED")
        raise QatuneError(_interrupted_message(out)) from None
    except BaseException:
        tracker.end("FAILED")  # never leave the MLflow run marked RUNNING
        raise
    finally:
        bar.close()

    metrics: dict[str, Any] = {}
    if status == "stopped":
        _log(f"stopped after {state.global_step} steps; continue with --resume (checkpoint in {out})")
        tracker.end("KILLED")
        return TrainResult(out, {"global_step": state.global_step}, state.history, status)

    if is_main:
        if best is not None:
            last_eval = best.restore(last_eval, len(state.history))
        try:
            task_files = save_task_state(task, span_model, out)
            record = {**task.record(task_options), **(last_eval.record if last_eval is not None else {})}
            metrics = _save_run(cfg, out, backend, model, tokenizer, state, last_eval, method, lr, precision,
                                trainable, total, len(train_examples), len(train_features), record, base_model,
                                task_files, best.epoch if best is not None else None)
            tracker.log_metrics({k: v for k, v in metrics.items() if k != "epoch"})
            tracker.log_artifacts([out / RUN_CONFIG, out / "metrics.json", out / "history.json", out / "README.md"])
            if tracker.enabled:  # the weights go in as an MLflow Model (pyfunc) that MLflow and qatune load
                from qatune.inference.pyfunc import log_run_model

                example = (eval_examples or train_examples)[0]
                info = log_run_model(tracker, out, task.to_request(example), cfg.register_model)
                if info is not None:
                    metrics["mlflow_model_uri"] = info.model_uri
                    if cfg.register_model:
                        version = info.registered_model_version
                        metrics["registered_model"] = f"models:/{cfg.register_model}/{version}"
                        _log(f"registered as {metrics['registered_model']} in {tracker.uri}")
        except BaseException:
            tracker.end("FAILED")
            raise
        tracker.end()
        remove_checkpoint(out)
    runtime.barrier()  # no rank returns (and, under torchrun, exits) before the run directory is complete
    return TrainResult(out, metrics, state.history, status)


def _step_point(state: TrainerState, loss: float, lr: float) -> dict[str, Any]:
    """One optimizer step's point of the curves: raw loss, its EMA (continued across epochs and resumes from
    the previous point in the checkpointed state/history) and the learning rate the step used."""
    previous = state.steps[-1] if state.steps else next(
        (h["steps"][-1] for h in reversed(state.history) if h.get("steps")), None)
    ema = loss if previous is None else LOSS_EMA_BETA * float(previous["loss_ema"]) + (1 - LOSS_EMA_BETA) * loss
    return {"step": state.global_step, "loss": loss, "loss_ema": ema, "learning_rate": lr}


class _BestEpoch:
    """``keep_best``: the trainable weights of the epoch with the lowest validation loss, kept in memory and put
    back before the run is saved (with that epoch's evaluation). A resumed run tracks from where it resumed."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.module = module
        self.loss = math.inf
        self.epoch: int | None = None
        self.eval: Any = None
        self.weights: dict[str, torch.Tensor] = {}

    def offer(self, epoch: int, result: Any) -> None:
        loss = result.metrics.get("eval_loss")
        if loss is None or not loss < self.loss:
            return
        self.loss, self.epoch, self.eval = float(loss), epoch, result
        self.weights = {n: p.detach().clone() for n, p in self.module.named_parameters() if p.requires_grad}

    def restore(self, last_eval: Any, last_epoch: int) -> Any:
        if self.epoch is None or self.epoch == last_epoch:
            return last_eval
        with torch.no_grad():
            params = dict(self.module.named_parameters())
            for name, value in self.weights.items():
                params[name].copy_(value)
        _log(f"keep_best: the run keeps epoch {self.epoch} (lowest validation loss {self.loss:.4f})")
        return self.eval


class _Stop(Exception):
    """Internal: stop_after_steps reached; the checkpoint is saved."""


def _resumable(cfg: TrainConfig, out: Path, fingerprint: dict[str, Any]) -> bool:
    """--resume and a checkpoint written with these training settings: continue it. A checkpoint written with
    other settings is refused, naming them; with --overwrite as well (what `qatune compare` passes) it is
    started over instead. Either way, --overwrite never removes a checkpoint that --resume continues."""
    if not (cfg.resume and has_checkpoint(out)):
        return False
    try:
        _check_fingerprint(out, fingerprint)
        verify_checkpoint(out)
    except QatuneError:
        if cfg.overwrite:
            return False
        raise
    return True


def _prepare_output(cfg: TrainConfig, out: Path, base_model: str, fingerprint: dict[str, Any]) -> None:
    """Check again (the folder may have changed while the inputs loaded), then create it or, with
    --overwrite and nothing to resume, remove only the files qatune's previous run there wrote."""
    resuming = _check_output(cfg, out, base_model, fingerprint)
    if cfg.resume and cfg.overwrite and not resuming and has_checkpoint(out):
        _log(f"--resume --overwrite: the checkpoint in {out} was written with other settings; starting over")
    overwrite = bool(cfg.overwrite) and not resuming
    rundir.prepare_output(out, "run", overwrite=overwrite, models=[base_model])


def _interrupted_message(out: Path) -> str:
    """Ctrl+C: promise a checkpoint only when one is there."""
    if has_checkpoint(out):
        try:
            saved = read_trainer_state(out)
            where = f" (epoch {saved.epoch + 1}, step {saved.global_step})"
        except QatuneError:
            where = ""
        return f"interrupted; the last checkpoint in {out}{where} is intact: rerun with --resume"
    return (f"interrupted before the first checkpoint was saved (one is written after every epoch, or every "
            f"--save-steps steps), so there is nothing to resume in {out}: run the command again")


# --- distributed helpers ----------------------------------------------------------------------------

def _on_main_then_all(fn: Any) -> None:
    """Run ``fn`` on rank 0 and raise its user error on every rank (no rank is left waiting on a collective)."""
    error = None
    if runtime.is_main_process():
        try:
            fn()
        except QatuneError as exc:
            error = exc
    error = runtime.broadcast_object(error)
    if error is not None:
        raise error


def _wrap_ddp(span_model: torch.nn.Module, task: Any, features: Any, tokenizer: Any, device: torch.device
              ) -> torch.nn.Module:
    """DistributedDataParallel around the (unwrapped) span model, which checkpoints keep saving.

    ``find_unused_parameters`` costs a graph walk per step, so it is turned on only when a probe
    forward/backward (eval mode: no dropout, no RNG draw) leaves a trainable parameter without a
    gradient (e.g. a PEFT adapter on a module the QA forward never calls); QATUNE_DDP_FIND_UNUSED=0/1
    forces it. Buffers (position ids) are constants, so they are not re-broadcast every step.
    """
    forced = os.environ.get("QATUNE_DDP_FIND_UNUSED")
    if forced is not None:
        find_unused = forced.lower() in {"1", "true", "yes"}
    else:
        was_training = span_model.training
        span_model.eval()
        batch = {k: v.to(device) for k, v in task.collate(features, [0], tokenizer).items()}
        task.loss(span_model, batch).backward()
        unused = [n for n, p in span_model.named_parameters() if p.requires_grad and p.grad is None]
        span_model.zero_grad(set_to_none=True)
        span_model.train(was_training)
        flag = torch.tensor(float(bool(unused)), device=device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        find_unused = bool(flag.item())
        if find_unused:
            _log(f"DDP: {len(unused)} trainable parameters get no gradient (e.g. {unused[0]}); "
                 "find_unused_parameters on")
    ddp = torch.nn.parallel.DistributedDataParallel
    no_buffer_sync = ({"forward_sync_buffers": False} if "forward_sync_buffers" in inspect.signature(ddp).parameters
                      else {"broadcast_buffers": False})  # torch >= 2.13 deprecates broadcast_buffers
    return ddp(span_model, device_ids=[device.index] if device.type == "cuda" else None,
               find_unused_parameters=find_unused, **no_buffer_sync)


def _save_checkpoint_all_ranks(out: Path, span_model: torch.nn.Module, optimizer: Any, scheduler: Any,
                               state: TrainerState, fingerprint: dict[str, Any]) -> None:
    """Collective: rank 0 writes the checkpoint (weights are identical on every rank) plus every rank's RNG
    state (dropout streams differ per rank), then all ranks wait until it is complete."""
    rngs = runtime.gather_objects(rng_state()) if runtime.distributed() else None
    if runtime.is_main_process():
        save_checkpoint(out, span_model, optimizer, scheduler, state, fingerprint, rank_rngs=rngs)
    runtime.barrier()


def _restore_rank_rng(out: Path) -> None:
    """After ``load_checkpoint`` (which restores rank 0's RNG everywhere), give each rank its own stream back."""
    if not runtime.distributed():
        return
    states = load_rank_rngs(out)
    if states is None:
        return
    if len(states) != runtime.world_size():
        _log(f"checkpoint written by {len(states)} processes, resuming with {runtime.world_size()}: the global "
             "batch (batch_size x processes) changes, so the run continues from its epoch/step but not identically")
        return
    set_rng_state(states[runtime.rank()])


def _save_run(cfg: TrainConfig, out: Path, backend: Any, model: Any, tokenizer: Any, state: TrainerState,
              last_eval: Any, method: Any, lr: float, precision: str, trainable: int, total: int, n_questions: int,
              n_features: int, record: dict[str, Any], base_model: str, task_files: list[str] | None = None,
              best_epoch: int | None = None) -> dict[str, Any]:
    """The backend's model files, ``qatune.yaml`` (config + what inference needs), metrics, history, the
    task's evaluation files and the manifest of everything written."""
    before = set(os.listdir(out))
    backend.save_run(model, tokenizer, out)
    # `model` keeps what the user typed; `base_model_path` is what it meant here and now (absolute for a local
    # folder): a PEFT run loads its base from that path, never from a relative path under another directory.
    # An embedded model is recorded by its hub id (portable; resolved to the bundled copy when loaded).
    portable = getattr(backend, "portable_model_id", None)
    recorded_base = portable(cfg.model, base_model) if portable is not None else base_model
    tmp_config = out / f".{RUN_CONFIG}.tmp"
    save_config(cfg, tmp_config, extra={
        "method_name": method.name, "resolved_learning_rate": lr, "base_model_path": recorded_base,
        **record, "precision_used": precision,
    })
    os.replace(tmp_config, out / RUN_CONFIG)
    metrics: dict[str, Any] = dict(last_eval.metrics) if last_eval is not None else {}
    metrics.update({
        "method": cfg.method, "epochs": cfg.epochs, "train_questions": n_questions, "train_features": n_features,
        "train_time_s": round(state.train_time_s, 3),
        "train_questions_per_s": round(n_questions * cfg.epochs / max(state.train_time_s, 1e-9), 3),
        "train_loss": state.history[-1]["train_loss"] if state.history else None,
        "trainable_params": trainable, "total_params": total, "trainable_pct": 100 * trainable / total,
        "peak_rss_mb": round(peak_rss_mb(), 1), "world_size": runtime.world_size(),
    })
    if best_epoch is not None:
        metrics["best_epoch"] = best_epoch
    if torch.cuda.is_available():
        metrics["cuda_max_allocated_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    # a diverged run (NaN/Infinity loss or scores) is written as strict JSON: null in place of each such
    # number, "diverged": true and where they were, so metrics.json stays readable by jq/JavaScript/MLflow
    metrics, bad = finite_or_null(metrics)
    history, bad_history = finite_or_null(state.history, "history")
    state.history[:] = history
    files = {}
    if last_eval is not None:
        for name, data in last_eval.files.items():
            files[name], bad_file = finite_or_null(data, name)
            bad += bad_file
    if bad or bad_history:
        metrics["diverged"] = True
        metrics["non_finite"] = [*bad, *bad_history][:20]
        _log(f"warning: training diverged: {', '.join([*bad, *bad_history][:3])} not finite (written as null); "
             "lower the learning rate or use --precision fp32")
    write_json(out / "metrics.json", metrics, strict=True)
    write_json(out / "history.json", state.history, strict=True)
    for name, data in files.items():
        write_result_file(out / name, data)  # bytes (a plot) as they are, the rest as strict JSON
    from qatune.training.model_card import MODEL_CARD, write_model_card

    write_model_card(out)  # replaces PEFT's stub README.md: from the files just written
    # the manifest: exactly what this run wrote, so --overwrite later removes these and nothing else
    written = {*RUN_FILES, MODEL_CARD, *(last_eval.files if last_eval is not None else ()), *(task_files or ())}
    rundir.record(out, "run", (set(os.listdir(out)) - before) | {n for n in written if (out / n).exists()})
    return metrics
