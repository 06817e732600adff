"""A Kubeflow Training Operator ``PyTorchJob`` (kubeflow.org/v1) for one ``qatune train`` run on many nodes.

``qatune pipeline pytorchjob --config configs/squad_lora.yaml --workers 4 --gpus-per-worker 8 > job.yaml``
prints two documents: a ConfigMap holding the resolved training config, and the PyTorchJob. ``--workers``
is the number of pods (nodes): the Master (node rank 0, which holds trainer rank 0: it writes the run
directory and checkpoints) plus ``workers - 1`` Worker replicas. Every pod runs the same command::

    torchrun --nnodes N --nproc_per_node G --node_rank <pod rank> --master_addr/--master_port <from the
             operator> -m qatune train --config /etc/qatune/train.yaml --resume --no-progress

The operator sets MASTER_ADDR/MASTER_PORT and the pod's rank (PET_NODE_RANK in training-operator >= 1.7,
RANK before; the command reads either). ``--resume`` makes a restarted pod continue from the last
checkpoint, so the run directory (``output`` in the config) must be on a volume every pod mounts
(a ReadWriteMany PVC, ``--pvc``); only rank 0 writes to it.
"""

from __future__ import annotations

import re
import shlex
from typing import Any

import yaml

CONFIG_MOUNT = "/etc/qatune"
CONFIG_FILE = "train.yaml"


def _name(text: str) -> str:
    """A DNS-1123 name (lowercase alphanumerics and '-', at most 50 characters to leave room for suffixes)."""
    name = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")
    return (name or "qatune")[:50].rstrip("-")


def torchrun_command(nnodes: int, nproc_per_node: int, extra_args: list[str] | None = None) -> list[str]:
    """The pod command: a shell line so the node rank can come from whichever variable the operator sets."""
    args = ["torchrun", f"--nnodes={nnodes}", f"--nproc_per_node={nproc_per_node}",
            '--node_rank="${PET_NODE_RANK:-${RANK:-0}}"',
            '--master_addr="${MASTER_ADDR:-localhost}"', '--master_port="${MASTER_PORT:-23456}"',
            "-m", "qatune", "train", "--config", f"{CONFIG_MOUNT}/{CONFIG_FILE}", "--resume", "--no-progress"]
    args += [shlex.quote(a) for a in extra_args or []]
    return ["/bin/bash", "-c", "exec " + " ".join(args)]


def pytorchjob_manifest(config: dict[str, Any], *, name: str | None = None, image: str = "qatune:cuda",
                        workers: int = 1, gpus_per_worker: int = 1, cpu: str = "8", memory: str = "64Gi",
                        pvc: str | None = "qatune-runs", mount_path: str = "/workspace", namespace: str | None = None,
                        shm_size: str = "16Gi", accelerator: str = "nvidia.com/gpu") -> list[dict[str, Any]]:
    """``[ConfigMap, PyTorchJob]`` for training ``config`` (a resolved ``qatune train`` config mapping).

    ``gpus_per_worker`` = 0 trains on CPU (gloo, one process per pod). ``pvc`` is mounted at ``mount_path``,
    which is also the working directory, so relative ``train``/``eval``/``output`` paths resolve on it.
    """
    if workers < 1:
        raise ValueError("workers must be >= 1 (the Master counts as one)")
    if gpus_per_worker < 0:
        raise ValueError("gpus_per_worker must be >= 0")
    job = _name(name or f"qatune-{config.get('method', 'train')}-{str(config.get('output', 'run')).rsplit('/', 1)[-1]}")
    meta: dict[str, Any] = {"labels": {"app.kubernetes.io/name": "qatune", "qatune/method": _name(str(config.get("method")))}}
    if namespace:
        meta["namespace"] = namespace
    config_map = {
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": f"{job}-config", **meta},
        "data": {CONFIG_FILE: yaml.safe_dump(config, sort_keys=False)},
    }
    nproc = max(gpus_per_worker, 1)
    resources: dict[str, Any] = {"requests": {"cpu": cpu, "memory": memory}, "limits": {"cpu": cpu, "memory": memory}}
    if gpus_per_worker:
        resources["limits"][accelerator] = gpus_per_worker
        resources["requests"][accelerator] = gpus_per_worker
    env = [{"name": "TOKENIZERS_PARALLELISM", "value": "false"},
           {"name": "HF_HOME", "value": f"{mount_path}/.cache/huggingface" if pvc else "/tmp/hf"},
           {"name": "QATUNE_CACHE_DIR", "value": f"{mount_path}/.cache/qatune" if pvc else "/tmp/qatune"}]
    if not gpus_per_worker:
        env.append({"name": "OMP_NUM_THREADS", "value": str(cpu)})  # one process per pod gets every core
    mounts = [{"name": "config", "mountPath": CONFIG_MOUNT, "readOnly": True}, {"name": "dshm", "mountPath": "/dev/shm"}]
    volumes: list[dict[str, Any]] = [
        {"name": "config", "configMap": {"name": f"{job}-config"}},
        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": shm_size}},  # NCCL shared memory
    ]
    if pvc:
        mounts.append({"name": "runs", "mountPath": mount_path})
        volumes.append({"name": "runs", "persistentVolumeClaim": {"claimName": pvc}})
    container = {
        "name": "pytorch",  # the operator looks for this container name
        "image": image, "imagePullPolicy": "IfNotPresent",
        "command": torchrun_command(workers, nproc),
        "workingDir": mount_path if pvc else "/opt/qatune",
        "env": env, "resources": resources, "volumeMounts": mounts,
        "ports": [{"name": "pytorchjob-port", "containerPort": 23456}],
    }

    def replica(count: int) -> dict[str, Any]:
        return {"replicas": count, "restartPolicy": "OnFailure",
                "template": {"metadata": {"labels": meta["labels"]},
                             "spec": {"containers": [container], "volumes": volumes,
                                      # the image runs as uid 1000: make the volume writable for it
                                      "securityContext": {"fsGroup": 1000}}}}

    specs = {"Master": replica(1)}
    if workers > 1:
        specs["Worker"] = replica(workers - 1)
    pytorchjob = {
        "apiVersion": "kubeflow.org/v1", "kind": "PyTorchJob",
        "metadata": {"name": job, **meta},
        "spec": {
            "nprocPerNode": str(nproc),  # training-operator >= 1.7: WORLD_SIZE = pods x nprocPerNode
            "runPolicy": {"cleanPodPolicy": "None", "backoffLimit": 3},
            "pytorchReplicaSpecs": specs,
        },
    }
    return [config_map, pytorchjob]


class _Dumper(yaml.SafeDumper):
    """Plain YAML for humans and kubectl: no &anchors/*aliases, multi-line strings as | blocks."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _str(dumper: yaml.SafeDumper, value: str) -> Any:
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|" if "\n" in value else None)


_Dumper.add_representer(str, _str)


def render(documents: list[dict[str, Any]], header: str = "") -> str:
    """Multi-document YAML (``kubectl apply -f``), with a comment header."""
    body = "---\n".join(yaml.dump(d, Dumper=_Dumper, sort_keys=False, width=120) for d in documents)
    comment = "".join(f"# {line}\n" if line else "#\n" for line in header.splitlines())
    return comment + body
