"""Kubeflow: the compiled KFP v2 pipeline spec, the PyTorchJob manifest, and the pipeline run with kfp.local."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import REPO, SAMPLE

from qatune.cli import main
from qatune.errors import ConfigError

TINY_COMPARE = {  # used when configs/compare_tiny.yaml is absent (same schema)
    "model": "minilm", "train": str(SAMPLE / "train.json"), "eval": str(SAMPLE / "dev.json"),
    "output": "runs/compare-tiny", "max_train_samples": 20, "max_eval_samples": 20, "epochs": 1,
    "max_seq_length": 128, "doc_stride": 32, "batch_size": 8,
    "methods": {"full": {"learning_rate": 1e-4}, "lora": {"lora": {"r": 4, "alpha": 8}}, "ia3": {}},
    "measure": {"latency_questions": 10, "throughput_questions": 20, "throughput_batch_size": 8, "warmup": 1},
}


@pytest.fixture
def compare_config(tmp_path: Path) -> Path:
    shipped = REPO / "configs" / "compare_tiny.yaml"
    if shipped.is_file():
        return shipped
    path = tmp_path / "compare_tiny.yaml"
    path.write_text(yaml.safe_dump(TINY_COMPARE))
    return path


def cli(args: list[str], capsys: pytest.CaptureFixture) -> str:
    cwd = os.getcwd()
    os.chdir(REPO)  # the shipped configs' data paths are relative to the repository root
    try:
        assert main(args) == 0
    finally:
        os.chdir(cwd)
    return capsys.readouterr().out


def compile_spec(tmp_path: Path, capsys: pytest.CaptureFixture, config: Path, *extra: str) -> dict[str, Any]:
    pytest.importorskip("kfp", reason="the Kubeflow Pipelines SDK is not installed (pip install 'qatune[pipelines]')")
    out = tmp_path / "pipeline.yaml"
    summary = json.loads(cli(["pipeline", "compile", "--config", str(config), "--output", str(out), *extra], capsys))
    assert summary["pipeline"] == str(out)
    return yaml.safe_load(out.read_text())


def test_compiled_pipeline_has_the_steps_the_loop_and_the_settings(tmp_path, capsys, compare_config):
    spec = compile_spec(tmp_path, capsys, compare_config, "--image", "registry.example/qatune:1.2", "--gpus", "2",
                        "--cpu", "6", "--memory", "24Gi", "--parallelism", "2")
    components = set(spec["components"])
    for name in ("prepare-data", "train-method", "evaluate-method", "build-report"):
        assert f"comp-{name}" in components
    loop_name = next(c for c in components if c.startswith("comp-for-loop"))
    loop = spec["components"][loop_name]["dag"]["tasks"]
    assert set(loop) == {"train-method", "evaluate-method"}, "train and evaluate run inside the per-method loop"
    assert loop["evaluate-method"]["dependentTasks"] == ["train-method"]

    root = spec["root"]["dag"]["tasks"]
    assert set(root) == {"prepare-data", loop_name.removeprefix("comp-"), "build-report"}
    loop_task = root[loop_name.removeprefix("comp-")]
    assert loop_task["dependentTasks"] == ["prepare-data"]
    assert loop_task["iteratorPolicy"] == {"parallelismLimit": 2}
    items = json.loads(loop_task["parameterIterator"]["items"]["raw"])
    methods = list(yaml.safe_load(compare_config.read_text())["methods"])
    assert [i["label"] for i in items] == methods
    assert all(json.loads(i["config"])["method"] for i in items), "each item carries its resolved train config"
    report_inputs = root["build-report"]["inputs"]["artifacts"]
    assert set(report_inputs) == {"runs", "evaluations"}  # dsl.Collected over the loop's outputs
    assert all(t["cachingOptions"] == {"enableCache": True} for t in [*root.values(), *loop.values()]
               if "cachingOptions" in t) and root["prepare-data"]["cachingOptions"]["enableCache"]
    assert set(spec["root"]["inputDefinitions"]["parameters"]) == {"train_data", "eval_data"}

    executors = spec["deploymentSpec"]["executors"]
    assert {e["container"]["image"] for e in executors.values()} == {"registry.example/qatune:1.2"}
    train = executors["exec-train-method"]["container"]["resources"]
    assert train["accelerator"]["resourceType"] == "nvidia.com/gpu" and train["accelerator"]["resourceCount"] == "2"
    assert train["resourceCpuLimit"] == "6" and train["resourceMemoryLimit"] == "24Gi"
    assert executors["exec-evaluate-method"]["container"]["resources"]["accelerator"]["resourceCount"] == "1"
    assert "accelerator" not in executors["exec-prepare-data"]["container"]["resources"]
    # nothing pip-installed at run time: the image has qatune and kfp
    assert not any("pip install" in " ".join(e["container"].get("command", [])) for e in executors.values())


def test_compile_keeps_paths_as_written_and_fails_early_on_a_bad_method(tmp_path, capsys, compare_config):
    spec = compile_spec(tmp_path, capsys, compare_config, "train=/data/squad/train.json")
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert params["train_data"]["defaultValue"] == "/data/squad/train.json"
    written_eval = yaml.safe_load(compare_config.read_text())["eval"]
    assert params["eval_data"]["defaultValue"] == written_eval, "read in the container: not resolved here"
    from qatune.pipelines import steps

    with pytest.raises(ConfigError):
        steps.compare_plan(compare_config, methods="lora,no-such-method")


@pytest.fixture
def train_config(tmp_path: Path) -> Path:
    shipped = REPO / "configs" / "squad_lora.yaml"
    if shipped.is_file():
        return shipped
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump({"model": "minilm", "method": "lora", "output": "runs/x",
                                    "train": str(SAMPLE / "train.json")}))
    return path


def manifest(capsys: pytest.CaptureFixture, config: Path, *args: str) -> list[dict[str, Any]]:
    return list(yaml.safe_load_all(cli(["pipeline", "pytorchjob", "--config", str(config), *args], capsys)))


def test_pytorchjob_manifest(capsys, train_config):
    config_map, job = manifest(capsys, train_config, "--workers", "4", "--gpus-per-worker", "8", "--image", "reg/qatune:cuda",
                               "epochs=3")
    assert (job["apiVersion"], job["kind"]) == ("kubeflow.org/v1", "PyTorchJob")
    replicas = job["spec"]["pytorchReplicaSpecs"]
    assert replicas["Master"]["replicas"] == 1 and replicas["Worker"]["replicas"] == 3
    assert job["spec"]["nprocPerNode"] == "8"
    for spec in replicas.values():
        pod = spec["template"]["spec"]
        (container,) = pod["containers"]
        assert container["name"] == "pytorch" and container["image"] == "reg/qatune:cuda"
        command = " ".join(container["command"])
        assert "torchrun --nnodes=4 --nproc_per_node=8" in command
        assert "-m qatune train --config /etc/qatune/train.yaml --resume" in command
        assert "PET_NODE_RANK" in command and "MASTER_ADDR" in command
        assert container["resources"]["limits"]["nvidia.com/gpu"] == 8
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert volumes["config"]["configMap"]["name"] == config_map["metadata"]["name"]
        assert volumes["runs"]["persistentVolumeClaim"]["claimName"] == "qatune-runs"
        assert volumes["dshm"]["emptyDir"]["medium"] == "Memory"
    assert config_map["kind"] == "ConfigMap"
    train = yaml.safe_load(config_map["data"]["train.yaml"])
    assert train["method"] == "lora" and train["epochs"] == 3, "the same config, overrides applied"


def test_pytorchjob_single_node_cpu(capsys, train_config):
    _, job = manifest(capsys, train_config, "--workers", "1", "--gpus-per-worker", "0", "--pvc", "")
    replicas = job["spec"]["pytorchReplicaSpecs"]
    assert list(replicas) == ["Master"]
    (container,) = replicas["Master"]["template"]["spec"]["containers"]
    assert "--nnodes=1 --nproc_per_node=1" in " ".join(container["command"])
    assert "nvidia.com/gpu" not in container["resources"]["limits"]
    assert {"name": "OMP_NUM_THREADS", "value": "8"} in container["env"]
    assert "runs" not in {v["name"] for v in replicas["Master"]["template"]["spec"]["volumes"]}


@pytest.mark.slow
def test_run_local_produces_the_report(tmp_path, tiny_model_dir, compare_config):
    """The same pipeline on this machine (kfp.local, one subprocess per task): ~1 minute."""
    pytest.importorskip("kfp", reason="the Kubeflow Pipelines SDK is not installed (pip install 'qatune[pipelines]')")
    try:
        from kfp import local  # noqa: F401
    except ImportError:
        pytest.skip("this kfp has no kfp.local (needs kfp >= 2.5)")
    out = tmp_path / "run-local"
    cmd = [sys.executable, "-m", "qatune", "pipeline", "run-local", "--config", str(compare_config), "--methods", "lora",
           "--output", str(out), f"model={tiny_model_dir}", "precision=fp32", "device=cpu", "max_train_samples=12",
           "max_eval_samples=6", "measure.latency_questions=2", "measure.throughput_questions=4", "measure.warmup=0",
           f"cache_dir={tmp_path / 'cache'}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    summary = json.loads(proc.stdout)
    assert summary["methods"]["lora"]["status"] == "finished"
    for name in ("report.csv", "report.md", "report.json", "report.html"):
        assert (out / name).is_file()
    report = json.loads((out / "report.json").read_text())
    (row,) = report["methods"]
    assert row["method"] == "lora" and isinstance(row["f1"], float) and row["throughput_qps"] > 0
    assert (out / "lora" / "metrics.json").is_file() and (out / "compare.json").is_file()
    assert "Task 'build-report' finished with status SUCCESS" in proc.stderr.replace("\u001b", "")
    assert (out / "run-local.log").is_file()
