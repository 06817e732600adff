"""``qatune pipeline``: run qatune on a cluster.

  qatune pipeline compile --config configs/compare_squad.yaml --output pipeline.yaml [--image IMG]
      the comparison as a Kubeflow Pipelines (KFP v2) pipeline spec: prepare data, train every method in
      parallel (dsl.ParallelFor), evaluate, report; upload it in the KFP UI or with the kfp client
  qatune pipeline run-local --config configs/compare_tiny.yaml [--output DIR]
      the same pipeline on this machine with kfp.local (one subprocess per task, this Python environment)
  qatune pipeline pytorchjob --config configs/squad_lora.yaml --workers 4 --gpus-per-worker 8 > job.yaml
      a Kubeflow Training Operator PyTorchJob running `torchrun -m qatune train` on every node

compile and run-local read a `qatune compare` config; pytorchjob reads a `qatune train` config. key=value
overrides apply to the config (e.g. model=/path/to/model, methods.lora.learning_rate=1e-3, epochs=1).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from qatune.cli.common import add_debug, print_json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pipeline", help="Kubeflow: compile/run the comparison pipeline, PyTorchJob manifests",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    verbs = p.add_subparsers(dest="pipeline_verb", metavar="ACTION")

    def pipeline_args(q: argparse.ArgumentParser) -> None:
        q.add_argument("--config", required=True, help="a `qatune compare` config (configs/compare_*.yaml)")
        q.add_argument("--methods", default=None, help="comma-separated subset of the config's methods, in order")
        q.add_argument("overrides", nargs="*", help="config overrides such as epochs=1 model=/path/to/model")
        add_debug(q)

    c = verbs.add_parser("compile", help="write the KFP v2 pipeline spec (YAML)")
    pipeline_args(c)
    c.add_argument("--output", default="pipeline.yaml", help="pipeline spec file to write (pipeline.yaml)")
    c.add_argument("--image", default=None, help="container image of every step (default qatune:latest, or "
                                                 "qatune:cuda with --gpus)")
    c.add_argument("--cpu", default="4", help="CPU request/limit of each train/evaluate task (4)")
    c.add_argument("--memory", default="16Gi", help="memory request/limit of each train/evaluate task (16Gi)")
    c.add_argument("--gpus", type=int, default=0, help="GPUs per training task (torchrun over all of them); 0: CPU")
    c.add_argument("--accelerator", default="nvidia.com/gpu", help="accelerator resource type (nvidia.com/gpu)")
    c.add_argument("--parallelism", type=int, default=0, help="methods trained at once (0: all)")
    c.add_argument("--tracking-uri", default="", help="MLflow tracking server for the training steps (default: "
                                                      "no MLflow; the KFP UI holds the metrics)")
    c.set_defaults(handler=run_compile)

    r = verbs.add_parser("run-local", help="run the pipeline here with kfp.local (SubprocessRunner)")
    pipeline_args(r)
    r.add_argument("--output", default=None, help="directory for the task outputs and the report "
                                                  "(default: the config's output + '-kfp')")
    r.add_argument("--parallelism", type=int, default=1, help="methods trained at once (1)")
    r.add_argument("--no-cache", action="store_true", help="rerun every task (the local task cache is on)")
    r.set_defaults(handler=run_local)

    j = verbs.add_parser("pytorchjob", help="print a Kubeflow PyTorchJob manifest for `qatune train`")
    j.add_argument("--config", required=True, help="a `qatune train` config (e.g. configs/squad_lora.yaml)")
    j.add_argument("--workers", type=int, default=1, help="pods (nodes), the Master included (1)")
    j.add_argument("--gpus-per-worker", type=int, default=1, help="GPUs (= processes) per pod; 0: CPU (1)")
    j.add_argument("--image", default=None, help="container image (default qatune:cuda, qatune:latest on CPU)")
    j.add_argument("--name", default=None, help="job name (default from the method and output)")
    j.add_argument("--namespace", default=None, help="Kubernetes namespace")
    j.add_argument("--cpu", default="8", help="CPU request/limit per pod (8)")
    j.add_argument("--memory", default="64Gi", help="memory request/limit per pod (64Gi)")
    j.add_argument("--pvc", default="qatune-runs", help="ReadWriteMany PVC with data and runs, mounted as the "
                                                       "working directory (qatune-runs); '' for none")
    j.add_argument("--mount-path", default="/workspace", help="where the PVC is mounted (/workspace)")
    j.add_argument("overrides", nargs="*", help="config overrides such as train=/workspace/data/train.json")
    add_debug(j)
    j.set_defaults(handler=run_pytorchjob)
    p.set_defaults(handler=lambda args: (p.print_help(), 1)[1])


def _kfp() -> Any:
    try:
        from qatune.pipelines import kfp_pipeline
    except ImportError as exc:
        from qatune.errors import ConfigError

        raise ConfigError(f"qatune pipeline compile/run-local need the Kubeflow Pipelines SDK ({exc}); "
                          "pip install 'qatune[pipelines]' (kfp>=2.8)") from None
    return kfp_pipeline


def run_compile(args: argparse.Namespace) -> int:
    from qatune.pipelines import steps

    kfp_pipeline = _kfp()
    plan = steps.compare_plan(args.config, methods=args.methods, overrides=args.overrides)
    image = args.image or ("qatune:cuda" if args.gpus else kfp_pipeline.DEFAULT_IMAGE)
    resources = kfp_pipeline.Resources(cpu=args.cpu, memory=args.memory, gpus=args.gpus,
                                       accelerator=args.accelerator)
    path = kfp_pipeline.compile_pipeline(plan, args.output, image=image, resources=resources,
                                         parallelism=args.parallelism, tracking_uri=args.tracking_uri)
    print_json({"pipeline": str(path), "name": plan["name"], "image": image,
                "methods": [m["label"] for m in plan["methods"]],
                "parameters": {"train_data": plan["train"], "eval_data": plan["eval"]}})
    return 0


def run_local(args: argparse.Namespace) -> int:
    from pathlib import Path

    from qatune.pipelines import steps

    kfp_pipeline = _kfp()
    try:
        from kfp import local  # noqa: F401
    except ImportError:
        from qatune.errors import ConfigError

        raise ConfigError("this kfp has no kfp.local; pip install 'kfp>=2.8'") from None
    plan = steps.compare_plan(args.config, methods=args.methods, overrides=args.overrides, local_paths=True)
    output = Path(args.output or f"{plan['output']}-kfp")
    out = kfp_pipeline.run_local(plan, output, parallelism=args.parallelism, caching=not args.no_cache)
    from qatune.compare.rundirs import read_json

    report = read_json(out / "report.json") or {}
    print_json({"output": str(out), "report": [str(out / f) for f in ("report.csv", "report.md", "report.json",
                                                                        "report.html") if (out / f).is_file()],
                "methods": {m["method"]: {k: m.get(k) for k in ("status", "f1", "exact_match")}
                            for m in report.get("methods", [])}})
    return 0


def run_pytorchjob(args: argparse.Namespace) -> int:
    from qatune.config import config_to_dict, load_config
    from qatune.errors import ConfigError
    from qatune.pipelines.pytorchjob import pytorchjob_manifest, render

    if args.workers < 1 or args.gpus_per_worker < 0:
        raise ConfigError("--workers must be >= 1 and --gpus-per-worker >= 0")
    cfg = load_config(args.config, args.overrides)
    if not cfg.train:
        raise ConfigError(f"{args.config} has no training data (train:); pass train=/path/in/the/pod")
    config = {k: v for k, v in config_to_dict(cfg).items() if k not in ("resume", "overwrite")}
    gpus = args.gpus_per_worker
    image = args.image or ("qatune:cuda" if gpus else "qatune:latest")
    docs = pytorchjob_manifest(config, name=args.name, image=image, workers=args.workers, gpus_per_worker=gpus,
                               cpu=args.cpu, memory=args.memory, pvc=args.pvc or None, mount_path=args.mount_path,
                               namespace=args.namespace)
    procs = args.workers * max(gpus, 1)
    header = (f"qatune PyTorchJob: {args.config} on {args.workers} pod(s) x {max(gpus, 1)} process(es) = {procs} "
              f"DDP ranks ({'nccl' if gpus else 'gloo'}); global batch = {cfg.batch_size} x {procs} = "
              f"{cfg.batch_size * procs} windows.\n"
              f"Apply: kubectl apply -f job.yaml   Logs: kubectl logs -f {docs[1]['metadata']['name']}-master-0\n"
              f"Paths in the config resolve in the pod (working dir {args.mount_path if args.pvc else '/opt/qatune'}); "
              "output must be on the shared volume.")
    sys.stdout.write(render(docs, header))
    return 0
