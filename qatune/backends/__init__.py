"""Backend registry: model families qatune trains and loads (``hf``: transformers + PEFT; ``native``: qatune.native BERT + LoRA)."""

from __future__ import annotations

from typing import Any, Callable

from qatune.backends.base import Backend
from qatune.core.registry import Registry

__all__ = ["Backend", "backend_names", "get_backend", "register_backend"]

DEFAULT_BACKEND = "hf"
_backends: Registry[Backend] = Registry("backend")


def _hf() -> Backend:
    from qatune.backends.hf import HFBackend

    return HFBackend()


def _native() -> Backend:
    from qatune.backends.native import NativeBackend

    return NativeBackend()


_backends.register("hf", _hf)
_backends.register("native", _native)


def register_backend(name: str, factory: Callable[[], Any], replace: bool = False) -> None:
    _backends.register(name, factory, replace=replace)


def backend_names() -> list[str]:
    return _backends.names()


def get_backend(name: str | None = None) -> Backend:
    return _backends.get(name or DEFAULT_BACKEND)
