"""LoRA for the native BERT, interchangeable with PEFT's adapters on disk.

A LoRA layer adds ``scaling * B(A(dropout(x)))`` to a frozen Linear, with ``A`` (r x in) kaiming-uniform and
``B`` (out x r) zero at the start (so training starts from the base model) and ``scaling = alpha / r`` -- the
same init and scaling as PEFT. Targets and layers are chosen with Hugging Face module names and PEFT's
matching rule (a name equal to, or ending in ``.`` + a target), so ``["query", "key", "value",
"attention.output.dense"]`` means the same here as in qatune's PEFT path.

The native attention has one fused ``qkv`` Linear; LoRA on query/key/value still keeps a separate A/B per
projection (added to its third of the fused output), which is what PEFT stores. ``save_adapter`` writes
``adapter_config.json`` + ``adapter_model.safetensors`` with PEFT's key names (e.g.
``base_model.model.bert.encoder.layer.0.attention.self.query.lora_A.weight``), so
``peft.PeftModel.from_pretrained`` loads it, and ``load_adapter`` reads what PEFT wrote.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from qatune.errors import ModelError
from qatune.native import convert
from qatune.native.functional import dropout as _dropout

DEFAULT_TARGETS = ("query", "key", "value", "attention.output.dense")
PEFT_PREFIX = "base_model.model."
_LAYER_INDEX = re.compile(r".*\.[^.]*\.(\d+)\.")  # PEFT's default: the number after e.g. "layer."


@dataclass
class LoraSettings:
    r: int = 8
    alpha: float = 16
    dropout: float = 0.0
    target_modules: Sequence[str] | str = DEFAULT_TARGETS
    layers: Sequence[int] | None = None  # layer indices to adapt (e.g. the last 4); None = all


class LoraAdapter(nn.Module):
    """One low-rank update ``scaling * B @ A`` (parameter names ``lora_A.weight`` / ``lora_B.weight`` as PEFT)."""

    def __init__(self, in_features: int, out_features: int, r: int, alpha: float, dropout: float) -> None:
        super().__init__()
        if r <= 0:
            raise ModelError(f"LoRA rank r must be a positive integer, got {r}")
        self.lora_A = nn.Linear(in_features, r, bias=False)
        self.lora_B = nn.Linear(r, out_features, bias=False)
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)
        self.scaling = alpha / r
        self.dropout = dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = _dropout(x, self.dropout, self.training)  # PEFT's nn.Dropout, the same mask stream
        return self.lora_B(self.lora_A(x)) * self.scaling

    def delta_weight(self) -> torch.Tensor:
        return (self.lora_B.weight @ self.lora_A.weight) * self.scaling


class LoraLinear(nn.Linear):
    """A Linear (same ``weight``/``bias`` parameters, so base names do not change) plus adapters, each
    adding to a slice of the output rows: the whole output, or one of query/key/value of a fused qkv."""

    def __init__(self, base: nn.Linear) -> None:
        nn.Module.__init__(self)
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight, self.bias = base.weight, base.bias
        self.adapters = nn.ModuleDict()
        self.slices: dict[str, tuple[int, int]] = {}
        self.merged = False

    def add(self, name: str, rows: tuple[int, int], settings: LoraSettings) -> LoraAdapter:
        adapter = LoraAdapter(self.in_features, rows[1] - rows[0], settings.r, settings.alpha, settings.dropout)
        adapter.to(device=self.weight.device, dtype=self.weight.dtype)
        self.adapters[name] = adapter
        self.slices[name] = rows
        return adapter

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.linear(x, self.weight, self.bias)
        if self.merged or not self.adapters:
            return out
        order = sorted(self.slices, key=self.slices.__getitem__)
        bounds = [self.slices[name] for name in order]
        if bounds[0][0] == 0 and bounds[-1][1] == self.out_features and all(
                a[1] == b[0] for a, b in zip(bounds, bounds[1:], strict=False)):  # adapters tile the output
            deltas = [self.adapters[name](x) for name in order]
            return out + (deltas[0] if len(deltas) == 1 else torch.cat(deltas, dim=-1))
        pieces: list[torch.Tensor] = []
        start = 0
        for name, (lo, hi) in sorted(self.slices.items(), key=lambda item: item[1]):
            if lo > start:
                pieces.append(out[..., start:lo])
            pieces.append(out[..., lo:hi] + self.adapters[name](x))
            start = hi
        if start < self.out_features:
            pieces.append(out[..., start:])
        return torch.cat(pieces, dim=-1)

    @torch.no_grad()
    def merge(self) -> None:
        if not self.merged:
            for name, (lo, hi) in self.slices.items():
                self.weight[lo:hi] += self.adapters[name].delta_weight()
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if self.merged:
            for name, (lo, hi) in self.slices.items():
                self.weight[lo:hi] -= self.adapters[name].delta_weight()
            self.merged = False


# ------------------------------------------------------------------------------------------ naming

def _hf_linears(model: nn.Module) -> Iterable[tuple[str, str, str, tuple[int, int]]]:
    """Every Linear the model has, in Hugging Face names: (hf name, native module name, adapter key, rows)."""
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear) or ".adapters." in f".{name}.":
            continue
        if name.endswith("attention.self.qkv"):
            third = module.out_features // 3
            for i, proj in enumerate(convert.PROJECTIONS):
                yield name[: -len("qkv")] + proj, name, proj, (i * third, (i + 1) * third)
        else:
            yield name, name, "full", (0, module.out_features)


def _matches(hf_name: str, targets: Sequence[str] | str, layers: Sequence[int] | None) -> bool:
    """PEFT's rule: a regex string must match the whole name; a list entry must equal it or end it."""
    if isinstance(targets, str):
        found = re.fullmatch(targets, hf_name) is not None
    else:
        found = any(hf_name == t or hf_name.endswith("." + t) for t in targets)
    if not found or layers is None:
        return found
    index = _LAYER_INDEX.match(hf_name)
    return index is not None and int(index.group(1)) in set(layers)


def head_modules(model: nn.Module) -> list[str]:
    """The task head PEFT trains and saves next to the adapter (its ``modules_to_save``)."""
    return [name for name in ("qa_outputs", "classifier") if isinstance(getattr(model, name, None), nn.Module)]


def task_type(model: nn.Module) -> str:
    heads = head_modules(model)
    return {"qa_outputs": "QUESTION_ANS", "classifier": "SEQ_CLS"}.get(heads[0] if heads else "",
                                                                       "FEATURE_EXTRACTION")


# ------------------------------------------------------------------------------------------ apply / merge

def apply_lora(model: nn.Module, settings: LoraSettings | None = None, freeze: bool = True) -> list[str]:
    """Add LoRA adapters to the matching Linears and (``freeze``) leave only them and the task head
    trainable, as PEFT does. Returns the Hugging Face names of the adapted projections."""
    settings = settings or LoraSettings()
    if has_lora(model):
        raise ModelError("the model already has LoRA adapters; apply LoRA once per model")
    chosen = [item for item in _hf_linears(model) if _matches(item[0], settings.target_modules, settings.layers)
              and item[1].split(".")[0] not in head_modules(model)]
    if not chosen:
        raise ModelError(f"LoRA target_modules {list(settings.target_modules)!r} (layers {settings.layers}) match "
                         "no Linear of this model; BERT names: query, key, value, attention.output.dense, "
                         "intermediate.dense, output.dense")
    for _hf_name, module_name, key, rows in chosen:
        module = model.get_submodule(module_name)
        if not isinstance(module, LoraLinear):
            parent, _, child = module_name.rpartition(".")
            module = LoraLinear(module)
            setattr(model.get_submodule(parent) if parent else model, child, module)
        module.add(key, rows, settings)
    model.lora_settings = settings  # type: ignore[assignment]
    if freeze:
        heads = tuple(f"{h}." for h in head_modules(model))
        for name, param in model.named_parameters():
            param.requires_grad = ".adapters." in name or name.startswith(heads)
    return [item[0] for item in chosen]


def lora_layers(model: nn.Module) -> list[LoraLinear]:
    return [m for m in model.modules() if isinstance(m, LoraLinear)]


def has_lora(model: nn.Module) -> bool:
    return bool(lora_layers(model))


def merge(model: nn.Module) -> None:
    """Fold every adapter into its base weight (inference without the extra matmuls); ``unmerge`` undoes it."""
    for layer in lora_layers(model):
        layer.merge()


def unmerge(model: nn.Module) -> None:
    for layer in lora_layers(model):
        layer.unmerge()


def merge_and_unload(model: nn.Module) -> nn.Module:
    """Merge and replace every LoRA layer with a plain Linear: a model ``save_pretrained`` can write."""
    for name, module in list(model.named_modules()):
        if isinstance(module, LoraLinear):
            module.merge()
            plain = nn.Linear(module.in_features, module.out_features, bias=module.bias is not None,
                              device=module.weight.device, dtype=module.weight.dtype)
            plain.weight, plain.bias = module.weight, module.bias
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child, plain)
    if hasattr(model, "lora_settings"):
        del model.lora_settings
    return model


def trainable_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts, as PEFT's ``print_trainable_parameters`` reports them."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())


# ------------------------------------------------------------------------------------------ PEFT format

def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter (+ task head) tensors under the exact keys PEFT writes to adapter_model.safetensors."""
    out: dict[str, torch.Tensor] = {}
    for hf_name, module_name, key, _rows in _hf_linears(model):
        module = model.get_submodule(module_name)
        if isinstance(module, LoraLinear) and key in module.adapters:
            adapter = module.adapters[key]
            out[f"{PEFT_PREFIX}{hf_name}.lora_A.weight"] = adapter.lora_A.weight
            out[f"{PEFT_PREFIX}{hf_name}.lora_B.weight"] = adapter.lora_B.weight
    for head in head_modules(model):
        for name, param in model.get_submodule(head).named_parameters():
            out[f"{PEFT_PREFIX}{head}.{name}"] = param
    return out


def save_adapter(model: nn.Module, directory: str | Path, base_model_name_or_path: str | None = None) -> None:
    """Write a PEFT LoRA adapter directory (``peft.PeftModel.from_pretrained`` loads it)."""
    settings: LoraSettings | None = getattr(model, "lora_settings", None)
    if settings is None or not has_lora(model):
        raise ModelError("the model has no LoRA adapters to save; call qatune.native.lora.apply_lora first")
    if any(layer.merged for layer in lora_layers(model)):
        raise ModelError("the LoRA adapters are merged into the base weights; unmerge(model) before saving them")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    targets = settings.target_modules if isinstance(settings.target_modules, str) else list(settings.target_modules)
    config = {
        "peft_type": "LORA", "task_type": task_type(model), "r": settings.r, "lora_alpha": settings.alpha,
        "lora_dropout": settings.dropout, "target_modules": targets,
        "layers_to_transform": None if settings.layers is None else sorted(settings.layers),
        "layers_pattern": None, "bias": "none", "modules_to_save": head_modules(model) or None,
        "fan_in_fan_out": False, "inference_mode": True, "init_lora_weights": True, "use_rslora": False,
        "use_dora": False, "rank_pattern": {}, "alpha_pattern": {},
        "base_model_name_or_path": base_model_name_or_path, "revision": None,
    }
    convert.write_safetensors(adapter_state_dict(model), directory / "adapter_model.safetensors")
    (directory / "adapter_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")


def read_adapter_settings(directory: Path) -> LoraSettings:
    """The LoRA settings of a PEFT adapter directory; refuses, by name, options this LoRA does not implement."""
    path = directory / "adapter_config.json"
    if not path.is_file():
        raise ModelError(f"{path} is missing: an adapter directory needs the adapter_config.json PEFT writes")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelError(f"{path}: not readable JSON ({exc})") from exc
    if config.get("peft_type") != "LORA":
        raise ModelError(f"{path}: peft_type {config.get('peft_type')!r} is not supported by qatune.native "
                         "(LoRA adapters only)")
    unsupported = [k for k, ok in (("use_dora", False), ("use_rslora", False), ("fan_in_fan_out", False),
                                   ("rank_pattern", {}), ("alpha_pattern", {}), ("layers_pattern", None),
                                   ("layer_replication", None), ("lora_bias", False))
                   if config.get(k, ok) not in (ok, None, [], {}, False)]
    if config.get("bias", "none") != "none":
        unsupported.append("bias")
    if unsupported:
        raise ModelError(f"{path}: LoRA option(s) {', '.join(unsupported)} are not supported by qatune.native")
    try:
        return LoraSettings(r=int(config["r"]), alpha=float(config["lora_alpha"]),
                            dropout=float(config.get("lora_dropout") or 0.0),
                            target_modules=config["target_modules"],
                            layers=config.get("layers_to_transform"))
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelError(f"{path}: invalid LoRA config ({exc})") from exc


def load_adapter(model: nn.Module, directory: str | Path, freeze: bool = True) -> list[str]:
    """Apply the LoRA adapter of a PEFT adapter directory (native- or PEFT-written) to ``model``.

    Every adapted projection must get its A and B, and every tensor in the file must find its place;
    otherwise nothing is guessed and the error names the first offending key.
    """
    from safetensors.torch import load_file

    directory = Path(directory)
    settings = read_adapter_settings(directory)
    if isinstance(settings.layers, int):
        settings.layers = [settings.layers]
    weights_path = directory / "adapter_model.safetensors"
    if not weights_path.is_file():
        hint = " (adapter_model.bin is a pickle, not read)" if (directory / "adapter_model.bin").is_file() else ""
        raise ModelError(f"{weights_path} is missing{hint}; save the adapter with safetensors")
    state = load_file(str(weights_path))
    names = apply_lora(model, settings, freeze=freeze)
    expected = adapter_state_dict(model)
    cleaned = {k.replace(".modules_to_save.default.", ".").replace(".default.", "."): v for k, v in state.items()}
    unknown = sorted(set(cleaned) - set(expected))
    absent = sorted(k for k in set(expected) - set(cleaned) if ".lora_" in k)
    if unknown or absent:
        key = (unknown or absent)[0]
        what = "has a tensor the model has no place for" if unknown else "lacks"
        raise ModelError(f"{weights_path} {what}: {key} ({len(unknown)} unexpected, {len(absent)} missing); "
                         "was it saved for a different model or config?")
    with torch.no_grad():
        for key, tensor in cleaned.items():
            if expected[key].shape != tensor.shape:
                raise ModelError(f"{weights_path}: {key} has shape {tuple(tensor.shape)}, "
                                 f"the model expects {tuple(expected[key].shape)}")
            expected[key].copy_(tensor)
    return names


def lora_parameters(model: nn.Module) -> Iterable[nn.Parameter]:
    """Only the adapter parameters (A and B), e.g. to give them their own optimizer group."""
    for layer in lora_layers(model):
        yield from layer.adapters.parameters()


def describe(model: nn.Module) -> dict[str, Any]:
    trainable, total = trainable_parameters(model)
    return {"trainable": trainable, "total": total, "percent": 100.0 * trainable / max(total, 1),
            "layers": len(lora_layers(model))}
