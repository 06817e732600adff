"""The task contract: everything the shared loop, evaluation, inference, serving, export and compare
need to know about a task, and nothing about any backend.

A task owns: its options section in the config (``qa:`` for extractive QA), reading and validating its
data (through :mod:`qatune.data.readers`), features / collate / loss, evaluation (``EvalResult``), the
predictor ``qatune.load`` returns and its request/response schema for ``predict`` / ``serve``, the
input/output names an export carries, and the columns and plots it adds to a compare report.

Tasks never import a backend: the loop and the inference loader hand them a backend-built model.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, Sequence, runtime_checkable

import numpy as np

from qatune.ranges import Range

# every predictor's batch size option (``batch_size`` / ``--batch-size``): windows per forward pass
BATCH_SIZE = Range(1, why="windows per forward pass")


@dataclass
class EvalResult:
    """What an evaluation produced: ``metrics`` (metrics.json) and ``files`` (file name -> JSON data written
    beside it, e.g. ``predictions.json``); ``record`` holds values a run keeps in its ``qatune.yaml`` for
    inference (e.g. a tuned decision threshold)."""

    metrics: dict[str, Any]
    files: dict[str, Any] = field(default_factory=dict)
    record: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ModelSpec:
    """What a backend must build for the task: a ``head`` kind (``question_answering``,
    ``sequence_classification``, ...) with its options (e.g. ``num_labels``), and whether the tokenizer
    must return character offsets."""

    head: str
    head_options: dict[str, Any] = field(default_factory=dict)
    needs_offsets: bool = False


@dataclass(frozen=True)
class ExtraInput:
    """A model input beyond the token windows (e.g. a classifier's tabular ``numeric`` features).

    The task's features object carries it as an attribute of the same ``name``, indexable by window
    (``features.numeric[i]`` -> one window's array of ``shape``); the runners and the exporter stack those
    rows into a ``[batch, *shape]`` array of ``dtype``, and the wrapped model's forward takes it as the keyword
    argument ``name``."""

    name: str
    dtype: str = "float32"  # numpy dtype name: float32, int64, ...
    shape: tuple[int | str, ...] = ()  # per-window dims after the batch axis; a string names a dynamic axis


@dataclass(frozen=True)
class ExportSignature:
    """Input and output tensor names of the task's forward pass, as an exported graph carries them.

    ``output_axes``: each output's axes by name, batch first: ``("batch", "sequence")`` for a per-token output
    (QA's start/end logits: unpadded to the window's length), ``("batch", None)`` for a per-window output
    (classification logits ``[batch, labels]``: one row per window); ``None`` is a fixed-size axis. An output
    not listed is ``("batch", None)``. ``extra_inputs``: inputs besides the token windows (:class:`ExtraInput`)."""

    inputs: tuple[str, ...] = ("input_ids", "attention_mask", "token_type_ids")
    outputs: tuple[str, ...] = ("logits",)
    output_axes: dict[str, tuple[str | None, ...]] = field(default_factory=dict)
    extra_inputs: tuple[ExtraInput, ...] = ()

    def axes(self, output: str) -> tuple[str | None, ...]:
        return tuple(self.output_axes.get(output, ("batch", None)))

    def dynamic_axes(self, input_names: Sequence[str]) -> dict[str, dict[int, str]]:
        """``torch.onnx.export``'s dynamic axes: token inputs ``batch``/``sequence``, extra inputs ``batch`` and
        their named dims, outputs as :attr:`output_axes` says."""
        extras = {e.name: e for e in self.extra_inputs}
        out: dict[str, dict[int, str]] = {}
        for name in input_names:
            if name in extras:
                out[name] = {0: "batch", **{i + 1: d for i, d in enumerate(extras[name].shape) if isinstance(d, str)}}
            else:
                out[name] = {0: "batch", 1: "sequence"}
        for name in self.outputs:
            out[name] = {i: axis for i, axis in enumerate(self.axes(name)) if axis}
        return out


@dataclass(frozen=True)
class ReportColumn:
    """A metric column the task adds to a compare report: metrics key, header with units, format."""

    key: str
    header: str
    fmt: Callable[[Any], str] = str


@dataclass(frozen=True)
class ReportSpec:
    """The task's part of a compare report: metric columns, the metric the runs are ranked and plotted
    by, and extra columns shown only when some run has a value for them."""

    columns: tuple[ReportColumn, ...]
    primary: str
    optional: tuple[ReportColumn, ...] = ()
    metric_note: str = ""  # what the metrics are, for the report's notes
    optional_note: str = ""  # appended when optional columns are shown
    loss_note: str = ""  # what the training/validation loss is

    def column(self, key: str) -> ReportColumn:
        return next(c for c in (*self.columns, *self.optional) if c.key == key)

    @property
    def primary_label(self) -> str:
        """The primary metric's name without units ("F1 (%)" -> "F1")."""
        return self.column(self.primary).header.split(" (")[0]


class OneWindowPerExample:
    """Mixin for a features dataclass with one token window per example (classification; a custom task): the
    window bookkeeping the shared loop asks for (``len``, ``lengths``, ``example_index``, ``subset``), so a task
    declares only its fields. The class must be a dataclass with ``input_ids`` (one array per example); every
    list or array field must hold one entry per example (``subset`` takes those rows), anything else (``None``,
    a setting) is kept as it is."""

    input_ids: list[np.ndarray]

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def lengths(self) -> np.ndarray:
        return np.array([len(x) for x in self.input_ids], dtype=np.int64)

    @property
    def example_index(self) -> np.ndarray:
        return np.arange(len(self))

    def subset(self, indices: Sequence[int]) -> Any:
        idx = list(indices)

        def rows(value: Any) -> Any:
            if isinstance(value, np.ndarray):
                return value[idx]
            if isinstance(value, list):
                return [value[i] for i in idx]
            return value

        return dataclasses.replace(self, **{f.name: rows(getattr(self, f.name))
                                            for f in dataclasses.fields(self) if f.init})


class DataReport(Protocol):
    """What reading data did (counts, repairs, drops), shown to the user."""

    def summary(self) -> str: ...


# A runner computes the task's outputs per window (unpadded, float32): one list per output name. The
# PyTorch runner and the ONNX Runtime runner both fit, so a predictor does not care which one it gets.
Outputs = tuple[list[np.ndarray], ...]


class Runner(Protocol):
    def __call__(self, features: Any, batch_size: int, progress: bool = False) -> Outputs: ...


@runtime_checkable
class Predictor(Protocol):
    """What ``qatune.load`` returns: predictions for new inputs, and evaluation on labelled examples."""

    task: "Task"
    run_config: dict[str, Any]

    def predict_batch(self, items: Sequence[Any], batch_size: int = 32, progress: bool = False) -> list[Any]: ...

    def evaluate(self, examples: Sequence[Any], batch_size: int = 64, progress: bool = False,
                 **options: Any) -> EvalResult: ...

    @property
    def info(self) -> dict[str, Any]: ...


class Task(Protocol):
    """The contract every task implements; see :mod:`qatune.tasks.extractive_qa` for the full example."""

    name: str
    section: str  # YAML section of its options
    options_type: type  # a dataclass: option names, types and defaults of the section
    model: ModelSpec
    export_signature: ExportSignature
    run_files: tuple[str, ...]  # files its evaluation writes into a run directory
    eval_only_options: frozenset[str]  # options that do not change training (free to change on --resume)
    report: ReportSpec
    request_fields: dict[str, str]  # predict/serve request fields -> description (also `qatune predict --FIELD`)
    route: str  # the server's path segment: POST /v1/<route> (extractive QA: "answer")
    zero_shot: bool  # whether a base model (not a trained run) can be evaluated/used as is: default False
    sample_data: str | None  # a small bundled labelled file (export parity checks fall back to it)
    data_kind: str  # what its data files hold (QA tasks: "squad"): tasks of one kind can share train/eval files

    # -- options and data ---------------------------------------------------------------------------
    def resolve_options(self, options: dict[str, Any], context: dict[str, Any], source: str) -> Any:
        """Validated options object from the section's dict (``context``: generic keys such as
        ``max_seq_length`` the options depend on). Raises ConfigError naming the key."""

    def read(self, source: str, max_samples: int | None, split: str | None = None) -> tuple[list[Any], DataReport]:
        """Examples from ``source`` (any format :mod:`qatune.data.readers` reads), validated and repaired."""

    def write_examples(self, examples: Sequence[Any], report: DataReport, path: Any) -> None:
        """Write examples in a format :meth:`read` reads back (pipelines cut the data once, then share it)."""

    def data_info(self, report: DataReport) -> dict[str, Any]:
        """What to record about read data (QA: the SQuAD version)."""

    def prepare(self, options: Any, train_report: DataReport | None, eval_report: DataReport | None) -> Any:
        """Options with data-dependent values resolved (e.g. SQuAD v2 detected from the data)."""

    def record(self, options: Any) -> dict[str, Any]:
        """Values a trained run keeps in ``qatune.yaml`` beside the config for inference."""

    def score_files(self, data: str, predictions: str, **options: Any) -> dict[str, Any]:
        """The task's official metric of a predictions file (a path) against labelled data (``qatune score``)."""

    # -- training ----------------------------------------------------------------------------------
    def features(self, examples: Sequence[Any], tokenizer: Any, options: Any, max_seq_length: int,
                 training: bool, cache_dir: str | None = None, progress: bool = False, use_cache: bool = True) -> Any:
        """Model inputs per example, as windows (``input_ids``, ``token_type_ids``, ``lengths``,
        ``example_index``: window -> example, ``subset(indices)``); with labels when ``training``."""

    def wrap(self, model: Any) -> Any:
        """An ``nn.Module`` around the backend's model whose forward returns the task's outputs."""

    def train_batches(self, features: Any, batch_size: int, seed: int, group: bool) -> list[list[int]]: ...

    def collate(self, features: Any, indices: Sequence[int], tokenizer: Any) -> dict[str, Any]: ...

    def loss(self, module: Any, batch: dict[str, Any]) -> Any: ...

    def evaluate(self, module: Any, tokenizer: Any, examples: Sequence[Any], features: Any, options: Any, *,
                 batch_size: int, device: Any, precision: str, progress: bool = False) -> EvalResult: ...

    # -- inference --------------------------------------------------------------------------------
    def run_windows(self, module: Any, features: Any, pad_token_id: int, batch_size: int, device: Any,
                    precision: str, progress: bool = False) -> Outputs:
        """The PyTorch runner's work: the wrapped model over every window, no autograd."""

    def score_outputs(self, examples: Sequence[Any], features: Any, outputs: Outputs, run_config: dict[str, Any],
                      report: DataReport | None = None) -> EvalResult:
        """Metrics of a runner's precomputed outputs, decoded with the run's settings (``qatune bench``)."""

    def best_predictions(self, examples: Sequence[Any], features: Any, outputs: Outputs,
                         run_config: dict[str, Any]) -> list[Any]:
        """One comparable prediction per example: an export's parity check counts agreement on these."""

    def predictor(self, runner: Runner, tokenizer: Any, run_config: dict[str, Any], **options: Any) -> Predictor: ...

    def check_options(self, options: dict[str, Any]) -> None:
        """The predictor's keyword options (QA: ``null_threshold``), checked before anything loads."""

    def parse_request(self, payload: Any, where: str) -> Any:
        """One predict/serve request item (a JSON object) -> the predictor's input; DataError naming ``where``."""

    def to_request(self, example: Any) -> Any:
        """An example as a predict/serve request item (its inputs, without the label)."""

    def format_response(self, prediction: Any) -> Any:
        """A prediction as JSON-able data for predict/serve."""


def bind_task(task: Task, run_config: dict[str, Any], run_dir: Any = None) -> Task:
    """The task as a run's (or a training config's) settings configure it. A task whose reading or model
    depends on its options or on state fitted to the training data (classification: columns, label names,
    standardisation; a trained run's head weights in ``run_dir``) implements ``bind(run_config, run_dir)``
    and returns a configured copy; other tasks are returned as they are."""
    bind = getattr(task, "bind", None)
    return bind(run_config, run_dir) if callable(bind) else task


def save_task_state(task: Task, module: Any, out: Any) -> list[str]:
    """Files a task keeps of its own in a run dir (e.g. a head that is not the backend's), written beside the
    backend's; the names go into the run's manifest. Optional: tasks without ``save_state`` write none."""
    save = getattr(task, "save_state", None)
    return list(save(module, out)) if callable(save) else []


def write_result_file(path: Any, content: Any) -> None:
    """One of ``EvalResult.files``: bytes (a plot) as they are, anything else as strict JSON; both atomic."""
    import os
    from pathlib import Path

    from qatune.core.jsonio import write_json

    if not isinstance(content, (bytes, bytearray)):
        write_json(path, content, strict=True)
        return
    target = Path(path)
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.write_bytes(bytes(content))
    os.replace(tmp, target)


def task_route(task: Task) -> str:
    """The task's serve route (``Task.route``; a task without one is served under its name)."""
    return str(getattr(task, "route", None) or task.name)


def supports_zero_shot(task: Task) -> bool:
    """``Task.zero_shot`` (default False): a base model with a fresh, untrained head predicts nothing
    meaningful for most tasks, so only a task that says so is evaluated or served without training."""
    return bool(getattr(task, "zero_shot", False))


def data_kind(task: Task) -> str:
    """``Task.data_kind``: tasks with the same kind read the same files into the same examples, so one
    comparison can hold rows of each on the same questions; a task that does not say shares data only with
    itself (its name)."""
    return str(getattr(task, "data_kind", None) or task.name)


def format_record(task: Task, prediction: Any) -> dict[str, Any]:
    """One ``predict --input`` output line (without its ``id``): the task's optional ``format_record`` hook,
    else its ``format_response`` (a non-object response goes under ``prediction``)."""
    hook = getattr(task, "format_record", None)
    response = hook(prediction) if callable(hook) else task.format_response(prediction)
    return dict(response) if isinstance(response, dict) else {"prediction": response}


def options_from_run(task: Task, run_config: dict[str, Any]) -> Any:
    """The task's options as a run recorded them: its section, else (runs written before sections
    existed) the same keys at the top level, else the defaults."""
    names = {f.name for f in dataclasses.fields(task.options_type)}
    section = run_config.get(task.section)
    values = dict(section) if isinstance(section, dict) else {k: run_config[k] for k in names if k in run_config}
    return task.options_type(**{k: v for k, v in values.items() if k in names})
