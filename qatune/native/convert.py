"""Weight names at the I/O edge: Hugging Face's BERT layout <-> the native fused-QKV layout.

Inside qatune.native every attention block holds ONE ``attention.self.qkv`` Linear of 3 * hidden outputs
(query rows first, then key, then value), so the three projections run as one matrix multiply. On disk
everything stays in Hugging Face's names (``attention.self.query/key/value``), so checkpoints and PEFT
adapters are interchangeable. Only this module knows about the difference; it also reads and writes the
safetensors files (never pickles).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from qatune.errors import ModelError

PROJECTIONS = ("query", "key", "value")
_HF_QKV = re.compile(r"^(?P<prefix>.*\.attention\.self)\.(?P<proj>query|key|value)\.(?P<param>weight|bias)$")
_NATIVE_QKV = re.compile(r"^(?P<prefix>.*\.attention\.self)\.qkv\.(?P<param>weight|bias)$")


def hf_to_native(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Fuse every complete query/key/value triple into one ``qkv`` tensor; other names pass through."""
    out: dict[str, torch.Tensor] = {}
    groups: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for name, tensor in state.items():
        match = _HF_QKV.match(name)
        if match:
            groups.setdefault((match["prefix"], match["param"]), {})[match["proj"]] = tensor
        else:
            out[name] = tensor
    for (prefix, param), parts in groups.items():
        if len(parts) == 3:
            out[f"{prefix}.qkv.{param}"] = torch.cat([parts[p] for p in PROJECTIONS], dim=0)
        else:  # an incomplete triple cannot be fused: keep the names so it is reported as unexpected
            out.update({f"{prefix}.{p}.{param}": t for p, t in parts.items()})
    return out


def native_to_hf(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Split every fused ``qkv`` tensor back into query/key/value (contiguous copies, safetensors-ready)."""
    out: dict[str, torch.Tensor] = {}
    for name, tensor in state.items():
        match = _NATIVE_QKV.match(name)
        if not match:
            out[name] = tensor
            continue
        for proj, part in zip(PROJECTIONS, tensor.chunk(3, dim=0), strict=True):
            out[f"{match['prefix']}.{proj}.{match['param']}"] = part.contiguous()
    return out


def hf_name(native_name: str) -> list[str]:
    """The Hugging Face parameter names a native parameter name stands for (three for a fused qkv)."""
    match = _NATIVE_QKV.match(native_name)
    if not match:
        return [native_name]
    return [f"{match['prefix']}.{p}.{match['param']}" for p in PROJECTIONS]


def read_safetensors_dir(directory: Path) -> dict[str, torch.Tensor]:
    """All tensors of a model directory: ``model.safetensors`` or a sharded ``model.safetensors.index.json``.

    ``pytorch_model.bin`` is refused on purpose: loading it means unpickling, which can run arbitrary code.
    """
    from safetensors.torch import load_file

    single = directory / "model.safetensors"
    index = directory / "model.safetensors.index.json"
    if single.is_file():
        return load_file(str(single))
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ModelError(f"{index}: not a valid safetensors index ({exc}); it needs a 'weight_map' object") \
                from exc
        state: dict[str, torch.Tensor] = {}
        for shard in sorted(set(weight_map.values())):
            path = directory / shard
            if not path.is_file():
                raise ModelError(f"{index} names shard {shard!r}, which is missing from {directory}")
            state.update(load_file(str(path)))
        return state
    if (directory / "pytorch_model.bin").is_file() or (directory / "pytorch_model.bin.index.json").is_file():
        raise ModelError(
            f"{directory} holds only pytorch_model.bin (a pickle); qatune.native reads safetensors only. "
            "Convert it once with transformers: AutoModel.from_pretrained(dir).save_pretrained(dir, "
            "safe_serialization=True)")
    raise ModelError(f"{directory} has no model.safetensors (or model.safetensors.index.json); "
                     "pass a Hugging Face model directory saved with safetensors")


def write_safetensors(state: dict[str, torch.Tensor], path: Path) -> None:
    """Write contiguous, unshared fp tensors with the ``format: pt`` metadata transformers expects."""
    from safetensors.torch import save_file

    save_file({k: v.detach().contiguous().clone() for k, v in state.items()}, str(path),
              metadata={"format": "pt"})
