"""The comparison as a Kubeflow Pipelines (KFP v2) pipeline: compile it, or run it here with ``kfp.local``.

    prepare-data ──> ParallelFor(methods) { train-method ──> evaluate-method } ──> build-report

* ``prepare-data``: train/eval data loaded, cut and tokenized once (a Dataset artifact with the features);
* ``train-method``: one per method, in parallel (``parallelism`` caps how many at once); a Model artifact
  (the run directory: adapter or model, qatune.yaml, metrics.json, history.json);
* ``evaluate-method``: EM/F1 of the saved run + inference latency/throughput (Metrics in the KFP UI);
* ``build-report``: report.csv/md/json/html as ``qatune compare`` writes them (+ an HTML artifact).

Caching is on for every step: a rerun reuses the data preparation and every method whose config and data
did not change. The components are Lightweight Python Components that run in ``image`` (built from the
repository's Dockerfile / Dockerfile.cuda: qatune and kfp installed, so nothing is pip-installed at run
time). The step logic lives in :mod:`qatune.pipelines.steps`.

This module imports ``kfp`` (``pip install 'qatune[pipelines]'``).
"""

# No ``from __future__ import annotations`` here: KFP reads the component signatures' annotations.
import contextlib
import io
import json
import os
import re
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List

from kfp import compiler, dsl
from kfp.dsl import HTML, Artifact, Dataset, Input, Metrics, Model, Output

DEFAULT_IMAGE = "qatune:latest"


@dataclass
class Resources:
    """Per-task resources of the training and evaluation steps (Kubernetes quantities)."""

    cpu: str = "4"
    memory: str = "16Gi"
    gpus: int = 0
    accelerator: str = "nvidia.com/gpu"
    light_cpu: str = "2"  # prepare-data and build-report
    light_memory: str = "8Gi"


# --- components: thin wrappers, each one self-contained (KFP ships the function's source alone) ------


def prepare_data(shared: str, train_data: str, eval_data: str, data: Output[Dataset]):
    """Load, cut and tokenize the comparison's data once; the folder is the Dataset artifact."""
    import json

    from qatune.pipelines import steps

    info = steps.prepare_data(json.loads(shared), train_data, eval_data or None, data.path)
    data.metadata.update({k: v for k, v in info.items() if isinstance(v, (int, float, str))})


def train_method(item: dict, data: Input[Dataset], run: Output[Model], nproc: int = 1, tracking_uri: str = ""):
    """Train one method of the comparison on the prepared data; the run directory is the Model artifact."""
    from qatune.pipelines import steps

    metrics = steps.train_method(item, data.path, run.path, nproc=nproc, tracking_uri=tracking_uri or None)
    run.metadata.update({"label": item["label"], "method": item["method"]})
    run.metadata.update({k: v for k, v in metrics.items() if k in (
        "f1", "exact_match", "train_loss", "train_time_s", "trainable_params", "world_size")})


def evaluate_method(item: dict, measure: dict, data: Input[Dataset], run: Input[Model],
                    evaluation: Output[Artifact], metrics: Output[Metrics]):
    """EM/F1 of the saved run through the inference pipeline, and its latency/throughput."""
    from qatune.pipelines import steps

    result = steps.evaluate_method(item, data.path, run.path, evaluation.path, measure)
    for key, value in result.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            metrics.log_metric(key, float(value))


def build_report(plan: str, runs: Input[List[Model]], evaluations: Input[List[Artifact]],
                 report: Output[Artifact], report_html: Output[HTML]):
    """The comparison report (report.csv/md/json/html and plots) over every method's run."""
    import json

    from qatune.pipelines import steps

    steps.build_report(json.loads(plan), [r.path for r in runs], [e.path for e in evaluations], report.path,
                       html_path=report_html.path)


# --- the pipeline ----------------------------------------------------------------------------------


def build_pipeline(plan: Dict[str, Any], image: str = DEFAULT_IMAGE, resources: Resources | None = None,
                   parallelism: int = 0, tracking_uri: str = "") -> Any:
    """The pipeline function for ``plan`` (:func:`qatune.pipelines.steps.compare_plan`).

    ``image`` runs every step; ``parallelism`` caps concurrent methods (0: all at once); ``resources``
    apply to train-method and evaluate-method (GPUs: ``gpus`` per training task, trained with torchrun
    over all of them; evaluation gets one).
    """
    resources = resources or Resources()
    component = dict(base_image=image, install_kfp_package=False)  # the image has kfp: no pip at run time
    prepare_op = dsl.component(prepare_data, **component)
    train_op = dsl.component(train_method, **component)
    evaluate_op = dsl.component(evaluate_method, **component)
    report_op = dsl.component(build_report, **component)
    # KFP constants cannot hold null: configs travel as JSON text (a loop item stays a readable mapping)
    methods = [{"label": m["label"], "method": m["method"], "config": json.dumps(m["config"])}
               for m in plan["methods"]]
    report_plan = json.dumps({k: v for k, v in plan.items() if k != "output"})
    nproc = max(1, int(resources.gpus))

    def heavy(task: Any, gpus: int) -> Any:
        task.set_cpu_request(resources.cpu).set_cpu_limit(resources.cpu)
        task.set_memory_request(resources.memory).set_memory_limit(resources.memory)
        if gpus:
            task.set_accelerator_type(resources.accelerator).set_accelerator_limit(gpus)
        return task.set_caching_options(True)

    def light(task: Any) -> Any:
        task.set_cpu_limit(resources.light_cpu).set_memory_limit(resources.light_memory)
        return task.set_caching_options(True)

    @dsl.pipeline(name=plan["name"], description=f"qatune comparison of {', '.join(m['label'] for m in methods)}: "
                  "prepare data, train each method in parallel, evaluate, report")
    def qatune_compare(train_data: str = plan["train"], eval_data: str = plan["eval"]) -> Artifact:
        prep = light(prepare_op(shared=json.dumps(plan["shared"]), train_data=train_data, eval_data=eval_data))
        prep.set_display_name("prepare data")
        with dsl.ParallelFor(items=methods, parallelism=parallelism, name="methods") as item:
            trained = heavy(train_op(item=item, data=prep.outputs["data"], nproc=nproc,
                                     tracking_uri=tracking_uri), resources.gpus)
            trained.set_display_name("train")
            evaluated = heavy(evaluate_op(item=item, measure=plan["measure"], data=prep.outputs["data"],
                                          run=trained.outputs["run"]), min(resources.gpus, 1))
            evaluated.set_display_name("evaluate")
        report = light(report_op(plan=report_plan, runs=dsl.Collected(trained.outputs["run"]),
                                 evaluations=dsl.Collected(evaluated.outputs["evaluation"])))
        report.set_display_name("comparison report")
        return report.outputs["report"]

    return qatune_compare


def compile_pipeline(plan: Dict[str, Any], output: str | os.PathLike, **kwargs: Any) -> Path:
    """Write the KFP v2 pipeline spec (IR YAML) for ``plan``; ``kwargs`` as :func:`build_pipeline`."""
    path = Path(output)
    path.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(build_pipeline(plan, **kwargs), package_path=str(path))
    return path


class _TaskLog(io.TextIOBase):
    """kfp.local's output: everything to the log file; the orchestrator's own lines (task started,
    finished, status) also to ``echo``, the executor input/output dumps of every task only to the file."""

    def __init__(self, log: Any, echo: Any) -> None:
        self.log, self.echo, self._line = log, echo, ""

    def write(self, text: str) -> int:
        self.log.write(text)
        self._line += text
        *lines, self._line = self._line.split("\n")
        for line in lines:
            if re.match(r"^\S.* - (INFO|WARNING|ERROR) - ", line):
                self.echo.write(re.sub(r"\x1b\[[0-9;]*m", "", line) + "\n")
        return len(text)

    def flush(self) -> None:
        self.log.flush()
        self.echo.flush()


def run_local(plan: Dict[str, Any], output: str | os.PathLike, parallelism: int = 1, caching: bool = True
              ) -> Path:
    """Run the same pipeline on this machine with ``kfp.local`` (one subprocess per task, this Python env).

    Task outputs go to ``OUTPUT/kfp-local`` (with a task cache: a rerun reuses finished steps); OUTPUT
    itself becomes a ``qatune compare`` directory (compare.json, OUTPUT/<method>/ linking to the task
    outputs, report.csv/md/json/html), so ``qatune report OUTPUT`` rebuilds it. ``parallelism`` defaults
    to 1 (one method at a time) so methods do not fight over the CPU cores.
    """
    import json as json_

    from kfp import local

    from qatune.pipelines import steps

    out = Path(output).resolve()
    out.mkdir(parents=True, exist_ok=True)
    root = out / "kfp-local"
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root),
               enable_caching=caching, cache_root=str(root / ".kfp_cache"))
    pipeline = build_pipeline(plan, image="python:3", parallelism=parallelism)  # image unused by subprocesses
    log_path = out / "run-local.log"
    with open(log_path, "w") as log, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # resource settings / base image: no effect locally, said in the docs
        try:
            with contextlib.redirect_stdout(_TaskLog(log, sys.stderr)):  # kfp.local logs to stdout
                task = pipeline()
        except Exception as exc:  # noqa: BLE001 - kfp.local raises RuntimeError for a failed task
            from qatune.errors import QatuneError

            log.flush()
            tail = log_path.read_text(errors="replace").splitlines()[-25:]
            print("\n".join(tail), file=sys.stderr)
            raise QatuneError(f"the local pipeline run failed: {exc} (full log: {log_path})") from None
    report = Path(task.output.path)
    used = json_.loads((report / steps.RUNS_FILE).read_text())
    steps.layout_compare_dir(plan, [v["run"] for v in used.values() if v["run"]],
                             [v["evaluation"] for v in used.values() if v["evaluation"]], out)
    steps.write_compare_report(out)
    return out
