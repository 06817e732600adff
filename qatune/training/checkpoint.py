"""Resumable checkpoints, written atomically so an interruption never leaves a half-written one.

A checkpoint holds only what changes during training: the trainable weights, the optimizer and
scheduler state, the RNG states (so dropout masks after a resume match an uninterrupted run), the
position in the data (epoch, step within the epoch) and the fingerprint of the training-relevant config.

Nothing in a checkpoint is pickled: a run directory may come from someone else, and unpickling runs
whatever code the file names. Tensors go to safetensors files; everything else (optimizer
hyper-parameters, scheduler counters, Python/NumPy RNG states) to JSON, with a few tags for what JSON
lacks (tuples, non-string keys, tensors stored beside). Reading them back can only build numbers,
strings, lists, dicts and tensors.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from qatune.errors import ConfigError

CHECKPOINT_DIR = "checkpoint"
_STATE = "trainer_state.json"  # written last: its presence marks the folder complete
WEIGHTS = "trainable.safetensors"
OPTIM = "optimizer"  # optimizer.json + optimizer.safetensors: optimizer and scheduler state
RNG = "rng"  # rng.json + rng.safetensors: this process's RNG streams
RANK_RNG = "rng_ranks"  # rng_ranks.json + .safetensors: every DDP rank's RNG streams
FINGERPRINT = "fingerprint.json"
LEGACY_PICKLES = ("optim.pt", "rng.pt", "rng_ranks.pt")  # what qatune < this version wrote (pickle)


class CheckpointError(ConfigError):
    """A checkpoint that cannot be resumed (damaged, older format, other settings)."""


@dataclass
class TrainerState:
    epoch: int = 0
    step_in_epoch: int = 0  # optimizer steps done in the current epoch
    global_step: int = 0
    train_time_s: float = 0.0
    history: list[dict[str, Any]] = field(default_factory=list)
    epoch_loss_sum: float = 0.0
    epoch_loss_n: int = 0
    steps: list[dict[str, Any]] = field(default_factory=list)  # the current epoch's per-step curve points


def trainable_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items() if k in names}


# --- pickle-free encoding of nested state ---------------------------------------------------------------

def _encode(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """JSON-able form of ``obj``; tensors are moved into ``tensors`` and referenced by key."""
    if isinstance(obj, torch.Tensor):
        key = f"t{len(tensors)}"
        tensors[key] = obj.detach().cpu().contiguous()
        return {"__tensor__": key}
    if isinstance(obj, np.ndarray):
        return {"__ndarray__": obj.tolist(), "dtype": str(obj.dtype)}
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode(v, tensors) for v in obj]}
    if isinstance(obj, list):
        return [_encode(v, tensors) for v in obj]
    if isinstance(obj, dict):
        return {"__dict__": [[_encode(k, tensors), _encode(v, tensors)] for k, v in obj.items()]}
    if isinstance(obj, np.generic):
        return obj.item()
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot store a {type(obj).__name__} in a checkpoint")


_DTYPES = {"uint32": np.uint32, "uint64": np.uint64, "int64": np.int64, "float64": np.float64}


def _decode(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Inverse of :func:`_encode`; anything else is a damaged file (KeyError/TypeError/ValueError)."""
    if isinstance(obj, list):
        return [_decode(v, tensors) for v in obj]
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            return tensors[obj["__tensor__"]]
        if "__ndarray__" in obj:
            return np.asarray(obj["__ndarray__"], dtype=_DTYPES[obj["dtype"]])
        if "__tuple__" in obj:
            return tuple(_decode(v, tensors) for v in obj["__tuple__"])
        if "__dict__" in obj:
            return {_decode(k, tensors): _decode(v, tensors) for k, v in obj["__dict__"]}
        raise ValueError(f"unknown entry {sorted(obj)[:3]}")
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise ValueError(f"unexpected {type(obj).__name__}")


def _write_state(folder: Path, stem: str, obj: Any) -> None:
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    encoded = _encode(obj, tensors)
    save_file(tensors, str(folder / f"{stem}.safetensors"))
    (folder / f"{stem}.json").write_text(json.dumps(encoded))


def _damaged(path: Path, why: str) -> CheckpointError:
    return CheckpointError(f"checkpoint file {path} is damaged or unreadable ({why}); the run cannot resume from "
                           f"it: start it again with --overwrite (or train into a new --output)")


def read_checkpoint_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise _damaged(path, "missing") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise _damaged(path, f"not valid JSON: {str(exc)[:80]}") from None


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    if not path.is_file():
        raise _damaged(path, "missing")
    try:
        return load_file(str(path))
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types for every kind of damage
        raise _damaged(path, f"not a valid safetensors file: {str(exc)[:80]}") from None


def _read_state(folder: Path, stem: str) -> Any:
    encoded = read_checkpoint_json(folder / f"{stem}.json")
    tensors = read_tensors(folder / f"{stem}.safetensors")
    try:
        return _decode(encoded, tensors)
    except (KeyError, TypeError, ValueError) as exc:
        raise _damaged(folder / f"{stem}.json", f"unexpected content: {exc}") from None


def rng_state() -> dict[str, Any]:
    """This process's RNG streams (torch CPU, every CUDA device, NumPy, Python)."""
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def set_rng_state(rng: dict[str, Any]) -> None:
    torch.set_rng_state(rng["torch"])
    np.random.set_state(tuple(rng["numpy"]))
    random.setstate(rng["python"])
    if rng.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])


# --- save / recover / load ----------------------------------------------------------------------------

def save_checkpoint(output_dir: Path, model: torch.nn.Module, optimizer: Any, scheduler: Any,
                    state: TrainerState, fingerprint: dict[str, Any] | None = None,
                    rank_rngs: list[dict[str, Any]] | None = None) -> Path:
    """Write the checkpoint to ``checkpoint.tmp``, then swap it in; a crash at any point leaves one complete
    checkpoint (``checkpoint``, or ``checkpoint.tmp``/``checkpoint.old`` that :func:`has_checkpoint` and
    :func:`load_checkpoint` recover). ``rank_rngs``: every DDP rank's RNG state (dropout streams differ)."""
    from safetensors.torch import save_file

    _recover(output_dir)
    final = output_dir / CHECKPOINT_DIR
    tmp = output_dir / f"{CHECKPOINT_DIR}.tmp"
    old = output_dir / f"{CHECKPOINT_DIR}.old"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        weights = {k: v.contiguous() for k, v in trainable_state_dict(model).items()}
        save_file(weights, str(tmp / WEIGHTS))
        _write_state(tmp, OPTIM, {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()})
        _write_state(tmp, RNG, rng_state())
        if rank_rngs is not None:
            _write_state(tmp, RANK_RNG, rank_rngs)
        (tmp / FINGERPRINT).write_text(json.dumps(fingerprint or {}, indent=1, sort_keys=True))
        (tmp / _STATE).write_text(json.dumps(asdict(state), indent=1))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # the previous checkpoint stays as it was
        raise
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)
    return final


def _recover(output_dir: Path) -> None:
    """Finish a checkpoint swap that a crash interrupted; drop incomplete leftovers."""
    final = output_dir / CHECKPOINT_DIR
    tmp = output_dir / f"{CHECKPOINT_DIR}.tmp"
    old = output_dir / f"{CHECKPOINT_DIR}.old"
    if not (final / _STATE).is_file():
        for candidate in (tmp, old):  # tmp is complete and newer when it has its state file
            if (candidate / _STATE).is_file():
                shutil.rmtree(final, ignore_errors=True)
                os.replace(candidate, final)
                break
    if (final / _STATE).is_file():
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)


def has_checkpoint(output_dir: Path) -> bool:
    return any((output_dir / name / _STATE).is_file()
               for name in (CHECKPOINT_DIR, f"{CHECKPOINT_DIR}.tmp", f"{CHECKPOINT_DIR}.old"))


def checkpoint_folder(output_dir: Path) -> Path:
    """The complete checkpoint folder (finishing an interrupted swap first); refuses the pickle format."""
    _recover(output_dir)
    folder = output_dir / CHECKPOINT_DIR
    if not (folder / f"{OPTIM}.json").is_file():
        legacy = [name for name in LEGACY_PICKLES if (folder / name).exists()]
        if legacy:
            raise CheckpointError(
                f"checkpoint in {folder} has the older pickle format ({', '.join(legacy)}); qatune no longer "
                "unpickles checkpoints, because a pickle from a run directory can run arbitrary code. Start the "
                "run again with --overwrite (or train into a new --output)")
    return folder


def read_fingerprint(output_dir: Path) -> dict[str, Any]:
    folder = checkpoint_folder(output_dir)
    data = read_checkpoint_json(folder / FINGERPRINT)
    if not isinstance(data, dict):
        raise _damaged(folder / FINGERPRINT, "not a mapping")
    return data


def verify_checkpoint(output_dir: Path) -> None:
    """Cheap integrity check before any input loads: every JSON file parses and every safetensors header is
    complete and covers its file (a truncated or overwritten file fails here, named, not mid-resume)."""
    from safetensors import safe_open

    folder = checkpoint_folder(output_dir)
    read_trainer_state(output_dir)
    for stem in (OPTIM, RNG) + ((RANK_RNG,) if (folder / f"{RANK_RNG}.json").exists() else ()):
        read_checkpoint_json(folder / f"{stem}.json")
    for name in (WEIGHTS, f"{OPTIM}.safetensors", f"{RNG}.safetensors"):
        path = folder / name
        if not path.is_file():
            raise _damaged(path, "missing")
        try:
            with safe_open(str(path), "pt") as fh:
                fh.keys()
        except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types
            raise _damaged(path, f"not a valid safetensors file: {str(exc)[:80]}") from None


def read_trainer_state(output_dir: Path) -> TrainerState:
    folder = output_dir / CHECKPOINT_DIR
    data = read_checkpoint_json(folder / _STATE)
    try:
        return TrainerState(**data)
    except TypeError as exc:
        raise _damaged(folder / _STATE, f"unexpected content: {exc}") from None


def load_checkpoint(output_dir: Path, model: torch.nn.Module, optimizer: Any, scheduler: Any) -> TrainerState:
    folder = checkpoint_folder(output_dir)
    state = read_trainer_state(output_dir)
    weights = read_tensors(folder / WEIGHTS)
    current = model.state_dict()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    problems = sorted(set(weights) - set(current)) + sorted(trainable - set(weights))
    problems += [f"{k} {tuple(v.shape)} vs {tuple(current[k].shape)}" for k, v in weights.items()
                 if k in current and v.shape != current[k].shape]
    if problems:
        raise CheckpointError(f"checkpoint in {folder} does not match this model/method "
                              f"(e.g. {problems[:3]}); resume with the same config or use a new --output")
    optim = _read_state(folder, OPTIM)
    rng = _read_state(folder, RNG)
    model.load_state_dict(weights, strict=False)
    try:
        optimizer.load_state_dict(optim["optimizer"])
        scheduler.load_state_dict(optim["scheduler"])
        set_rng_state(rng)
    except (KeyError, TypeError, ValueError, IndexError, RuntimeError) as exc:
        raise _damaged(folder / f"{OPTIM}.json", f"does not fit this optimizer: {str(exc)[:80]}") from None
    return state


def load_rank_rngs(output_dir: Path) -> list[dict[str, Any]] | None:
    """Every DDP rank's RNG state as saved, or None (single-process checkpoint)."""
    folder = output_dir / CHECKPOINT_DIR
    if not (folder / f"{RANK_RNG}.json").is_file():
        return None
    states = _read_state(folder, RANK_RNG)
    if not isinstance(states, list):
        raise _damaged(folder / f"{RANK_RNG}.json", "not a list of rank states")
    return states


def remove_checkpoint(output_dir: Path) -> None:
    for name in (CHECKPOINT_DIR, f"{CHECKPOINT_DIR}.tmp", f"{CHECKPOINT_DIR}.old"):
        shutil.rmtree(output_dir / name, ignore_errors=True)
