"""The backend contract: how a model family is loaded, adapted by a method, saved and loaded back.

The loop and the inference loader meet a task and a backend: the task says *what* it needs
(:class:`qatune.tasks.base.ModelSpec`: a head kind, its options, offsets), the backend builds it.
Backends never import tasks; weight-name mapping, if a backend needs one, happens in its own
``save_run`` / ``load_run``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol


class Backend(Protocol):
    name: str
    options_type: type  # a dataclass: the backend's config section (``hf:``)
    run_files: tuple[str, ...]  # files ``save_run`` writes (``--overwrite`` removes them)

    def resolve_model(self, name: str) -> str:
        """Where ``name`` (alias, local dir, hub id) lives; a run records it to reload from anywhere."""

    def known_model(self, name: str) -> bool:
        """``name`` loads from here (an alias or an existing path), so a run can record it as given."""

    def load_tokenizer(self, name: str, spec: Any, options: Any = None) -> Any: ...

    def load_base(self, name: str, spec: Any, options: Any = None, attention_dropout: float | None = None,
                  hidden_dropout: float | None = None) -> Any:
        """The base model with the head ``spec`` asks for (a fresh head when the checkpoint has none); a dropout
        given here replaces the checkpoint config's (None keeps it)."""

    def apply_method(self, model: Any, method: Any, method_options: dict[str, Any], spec: Any) -> Any:
        """The model to train under ``method`` (a :class:`qatune.methods.Method`)."""

    def save_run(self, model: Any, tokenizer: Any, out: Path) -> None: ...

    def load_run(self, run_dir: Path, run_config: dict[str, Any], spec: Any, method: Any, merge: bool = True,
                 attention_dropout: float | None = 0.0) -> tuple[Any, Any]:
        """``(model, tokenizer)`` of a trained run, adapters merged when ``merge`` and the method allows."""

    def merge(self, model: Any) -> Any:
        """Fold adapter weights into the base weights where the adapter type allows (else unchanged)."""
