"""Hostile and careless use of files and run directories (issue 12): nothing lost, nothing executed.

qatune writes only into a new or empty folder or its own output of the same kind, validates every input
before it removes anything, never writes into a model folder it reads, never unpickles anything from a
run directory, refuses to resume with other training settings, loads a run's base model from the
absolute path recorded at training time, and says plainly what is wrong with a damaged run directory.
Data-loss tests hash every file before and after.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import SAMPLE, assert_clean_error, cli, digests

import qatune
from qatune.cli import main
from qatune.errors import QatuneError
from qatune.training import checkpoint as ckpt
from qatune.training.checkpoint import CheckpointError

pytestmark = pytest.mark.usefixtures("one_thread")
CONTEXT = "The Pellory glass works stood beside the canal. It made green bottles until 1962."


# -- helpers ------------------------------------------------------------------------------------------------


def train_args(model: Path | str, output: Path | str, *extra: str | Path, train: Path | str | None = None
               ) -> list[str | Path]:
    return ["train", "--model", model, "--train", train or SAMPLE / "train.json", "--output", output,
            "--max-train-samples", "4", "--no-eval", "--no-tracking", "--no-progress", "--device", "cpu",
            *extra, "max_seq_length=128", "doc_stride=32", "num_threads=1"]


def user_folder(path: Path) -> Path:
    """A folder of someone's own files that happen to carry run-file names."""
    path.mkdir(parents=True)
    (path / "README.md").write_text("# my project\nimportant notes\n")
    (path / "config.json").write_text('{"mine": true}')
    (path / "model.safetensors").write_bytes(b"\x00my weights\x01" * 100)
    (path / "metrics.json").write_text('{"accuracy": 0.99}')
    (path / "notes").mkdir()
    (path / "notes" / "todo.txt").write_text("buy milk")
    return path


def train_config(model: Path, out: Path, **kw: Any) -> dict[str, Any]:
    cfg = dict(model=str(model), method="lora", train=str(SAMPLE / "train.json"), output=str(out),
               max_train_samples=40, epochs=2, batch_size=8, learning_rate=5e-3, max_seq_length=128,
               doc_stride=32, precision="fp32", device="cpu", tracking=False, do_eval=False, num_threads=1)
    cfg.update(kw)
    return cfg


@pytest.fixture(scope="module")
def finished_run(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("safety") / "run"
    assert main([str(a) for a in train_args(tiny_model_dir, out)]) == 0
    return out


@pytest.fixture
def run_copy(finished_run: Path, tmp_path: Path) -> Path:
    dest = tmp_path / "run"
    shutil.copytree(finished_run, dest)
    return dest


# -- 1. --overwrite never deletes a foreign folder, and validates before deleting anything ---------------------

@pytest.mark.parametrize("train", ["missing", "good"])
def test_overwrite_of_a_foreign_folder_deletes_nothing(capsys, tmp_path: Path, tiny_model_dir: Path,
                                                       train: str) -> None:
    folder = user_folder(tmp_path / "mine")
    before = digests(folder)
    data = tmp_path / "nope.json" if train == "missing" else SAMPLE / "train.json"
    rc, _, err = cli(capsys, *train_args(tiny_model_dir, folder, "--overwrite", train=data))
    assert_clean_error(rc, err, f"--output {folder} is not empty and holds no qatune run", "README.md",
                       "--overwrite never deletes files it did not write")
    assert digests(folder) == before


def test_output_dot_in_a_project_checkout_is_refused(capsys, monkeypatch, tmp_path: Path,
                                                     tiny_model_dir: Path) -> None:
    project = user_folder(tmp_path / "project")
    (project / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    before = digests(project)
    monkeypatch.chdir(project)
    rc, _, err = cli(capsys, *train_args(tiny_model_dir, ".", "--overwrite"))
    assert_clean_error(rc, err, "holds no qatune run", "choose another --output")
    assert digests(project) == before


def test_overwrite_of_a_run_validates_inputs_first(capsys, run_copy: Path, tmp_path: Path,
                                                   tiny_model_dir: Path) -> None:
    before = digests(run_copy)
    rc, _, err = cli(capsys, *train_args(tiny_model_dir, run_copy, "--overwrite", train=tmp_path / "nope.json"))
    assert_clean_error(rc, err, "nope.json", "no such file")
    assert digests(run_copy) == before  # the finished run is still all there
    rc, _, err = cli(capsys, *train_args(tmp_path / "no-model", run_copy, "--overwrite"))
    assert rc == 2 and "no-model" in err
    assert digests(run_copy) == before


def test_overwrite_removes_only_what_the_run_wrote(capsys, run_copy: Path, tiny_model_dir: Path) -> None:
    (run_copy / "my-notes.txt").write_text("keep me")
    (run_copy / "plots").mkdir()
    (run_copy / "plots" / "loss.png").write_bytes(b"png")
    old_adapter = (run_copy / "adapter_model.safetensors").read_bytes()
    rc, _, err = cli(capsys, *train_args(tiny_model_dir, run_copy, "--overwrite", "--seed", "7"))
    assert rc == 0, err
    assert (run_copy / "my-notes.txt").read_text() == "keep me"
    assert (run_copy / "plots" / "loss.png").read_bytes() == b"png"
    assert (run_copy / "adapter_model.safetensors").read_bytes() != old_adapter  # retrained
    manifest = json.loads((run_copy / ".qatune-files.json").read_text())
    assert manifest["kind"] == "run" and "adapter_model.safetensors" in manifest["files"]
    assert "my-notes.txt" not in manifest["files"]


def test_overwrite_refuses_a_foreign_file_a_run_would_replace(capsys, run_copy: Path,
                                                              tiny_model_dir: Path) -> None:
    """A run folder holding a file qatune did not write under a name a run writes: refused, kept."""
    manifest = json.loads((run_copy / ".qatune-files.json").read_text())
    manifest["files"].remove("README.md")  # as if the user had put their own README.md there
    (run_copy / ".qatune-files.json").write_text(json.dumps(manifest))
    before = digests(run_copy)
    rc, _, err = cli(capsys, *train_args(tiny_model_dir, run_copy, "--overwrite"))
    assert_clean_error(rc, err, "holds files that qatune did not write but would replace", "README.md")
    assert digests(run_copy) == before


# -- 2. never into a foreign non-empty folder, never into/inside/around the model folder it reads --------------

def test_non_empty_foreign_folder_is_refused_without_overwrite(capsys, tmp_path: Path, tiny_model_dir: Path) -> None:
    folder = user_folder(tmp_path / "mine")
    before = digests(folder)
    rc, _, err = cli(capsys, *train_args(tiny_model_dir, folder))
    assert_clean_error(rc, err, "is not empty and holds no qatune run")
    assert digests(folder) == before


@pytest.mark.parametrize("where", ["same", "inside", "contains"])
def test_output_overlapping_the_model_folder_is_refused(capsys, tmp_path: Path, tiny_model_dir: Path,
                                                        where: str) -> None:
    base = tmp_path / "models" / "base"
    shutil.copytree(tiny_model_dir, base)
    before = digests(tmp_path / "models")
    output = {"same": base, "inside": base / "run", "contains": tmp_path / "models"}[where]
    for extra in ((), ("--overwrite",)):
        rc, _, err = cli(capsys, *train_args(base, output, *extra, "--method", "full"))
        assert_clean_error(rc, err, "the model folder", "never writes into a model it reads")
        assert digests(tmp_path / "models") == before
    assert not (base / "run").exists()


def test_empty_folder_and_orchestrator_files_are_fine(capsys, tmp_path: Path, tiny_model_dir: Path) -> None:
    """An empty folder, or one holding only what qatune compare/pipelines put there first, is trainable."""
    out = tmp_path / "lora"
    out.mkdir()
    (out / "compare_status.json").write_text('{"status": "running"}')
    (out / "train.log").write_text("$ qatune train\n")
    rc, _, err = cli(capsys, *train_args(tiny_model_dir, out))
    assert rc == 0, err
    assert (out / "train.log").read_text() == "$ qatune train\n"
    assert (out / "compare_status.json").read_text() == '{"status": "running"}'


def test_companion_names_match_the_orchestrators() -> None:
    from qatune.compare import runner
    from qatune.pipelines import steps
    from qatune.rundir import COMPANIONS

    assert {runner.TRAIN_YAML, runner.STATUS_FILE, runner.LOG_FILE, steps.TRAIN_YAML, steps.METHOD_INFO} == COMPANIONS


# -- 3. export: never over the run, never over a foreign folder ----------------------------------------------

def test_export_over_the_run_is_refused(capsys, run_copy: Path) -> None:
    pytest.importorskip("onnxruntime")
    before = digests(run_copy)
    for target in (run_copy, run_copy / "onnx"):
        rc, _, err = cli(capsys, "export", run_copy, "--output", target, "--overwrite")
        assert_clean_error(rc, err, "never writes into a model it reads")
        assert digests(run_copy) == before


def test_export_overwrite_of_a_foreign_folder_is_refused(capsys, run_copy: Path, tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    folder = user_folder(tmp_path / "mine")
    before = digests(folder)
    rc, _, err = cli(capsys, "export", run_copy, "--output", folder, "--overwrite")
    assert_clean_error(rc, err, "holds no qatune export")
    assert digests(folder) == before
    rc, _, err = cli(capsys, "export", run_copy, "--output", tmp_path, "--overwrite")  # holds the run itself
    assert_clean_error(rc, err, "contains the model folder")


def test_export_overwrite_replaces_only_an_export(capsys, run_copy: Path, tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    out = tmp_path / "onnx"
    rc, _, err = cli(capsys, "export", run_copy, "--output", out, "--parity-samples", "2")
    assert rc == 0, err
    first = digests(out)
    assert ".qatune-files.json" in first and "model.onnx" in first
    rc, _, err = cli(capsys, "export", run_copy, "--output", out, "--parity-samples", "2")
    assert_clean_error(rc, err, "already holds an export", "--overwrite")
    (out / "keep.txt").write_text("mine")
    rc, _, err = cli(capsys, "export", run_copy, "--output", out, "--parity-samples", "2", "--overwrite")
    assert_clean_error(rc, err, "holds files that qatune did not write", "keep.txt")
    assert (out / "keep.txt").read_text() == "mine" and digests(out)["model.onnx"] == first["model.onnx"]
    (out / "keep.txt").unlink()
    rc, _, err = cli(capsys, "export", run_copy, "--output", out, "--parity-samples", "2", "--overwrite")
    assert rc == 0, err
    assert (out / "model.onnx").is_file() and json.loads((out / "export.json").read_text())["format"] == "onnx"


# -- 4. evaluate never replaces the run's training metrics ---------------------------------------------------

def test_evaluate_into_the_run_is_refused(capsys, run_copy: Path, tmp_path: Path) -> None:
    before = digests(run_copy)
    training_metrics = json.loads((run_copy / "metrics.json").read_text())
    assert "train_time_s" in training_metrics
    rc, _, err = cli(capsys, "evaluate", run_copy, "--data", SAMPLE / "dev.json", "--output", run_copy,
                     "--max-eval-samples", "2", "--no-progress")
    assert_clean_error(rc, err, "is the run directory", "metrics.json", f"{run_copy / 'eval'}")
    assert digests(run_copy) == before
    # the documented place, RUN/eval, works, and evaluating there again replaces the earlier evaluation
    for _ in range(2):
        rc, _, err = cli(capsys, "evaluate", run_copy, "--data", SAMPLE / "dev.json", "--output",
                         run_copy / "eval", "--max-eval-samples", "2", "--no-progress")
        assert rc == 0, err
    assert json.loads((run_copy / "eval" / "metrics.json").read_text())["eval_questions"] == 2
    assert json.loads((run_copy / "metrics.json").read_text()) == training_metrics
    folder = user_folder(tmp_path / "mine")
    mine = digests(folder)
    rc, _, err = cli(capsys, "evaluate", run_copy, "--data", SAMPLE / "dev.json", "--output", folder,
                     "--max-eval-samples", "2", "--no-progress")
    assert_clean_error(rc, err, "holds no qatune evaluation")
    assert digests(folder) == mine


# -- 5. no pickle from a run directory ------------------------------------------------------------------------

class Payload:
    """Unpickling this creates ``path``: a harmless stand-in for arbitrary code."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (self.path, "w"))


@pytest.fixture(scope="module")
def stopped_run(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run stopped (resumably) after 2 optimizer steps."""
    out = tmp_path_factory.mktemp("stopped") / "run"
    result = qatune.train(train_config(tiny_model_dir, out, stop_after_steps=2), progress=False)
    assert result.status == "stopped" and ckpt.has_checkpoint(out)
    return out


@pytest.fixture
def stopped_copy(stopped_run: Path, tmp_path: Path) -> Path:
    dest = tmp_path / "stopped"
    shutil.copytree(stopped_run, dest)
    return dest


def test_checkpoint_holds_no_pickle(stopped_copy: Path) -> None:
    folder = stopped_copy / "checkpoint"
    assert sorted(p.name for p in folder.iterdir()) == [
        "fingerprint.json", "optimizer.json", "optimizer.safetensors", "rng.json", "rng.safetensors",
        "trainable.safetensors", "trainer_state.json"]
    from safetensors.torch import load_file

    for path in folder.iterdir():  # each file is plain JSON or safetensors: nothing a loader could execute
        if path.suffix == ".json":
            json.loads(path.read_text())
        else:
            assert load_file(str(path)) is not None


@pytest.mark.parametrize("files", [("optim.pt", "rng.pt"), ("optim.pt", "rng.pt", "rng_ranks.pt")])
def test_pickled_checkpoint_is_refused_and_never_unpickled(stopped_copy: Path, tmp_path: Path,
                                                           tiny_model_dir: Path, files: tuple[str, ...]) -> None:
    marker = tmp_path / "payload-ran"
    folder = stopped_copy / "checkpoint"
    for path in folder.iterdir():  # an older-format checkpoint: pickles beside the weights
        if path.name not in ("trainable.safetensors", "trainer_state.json"):
            path.unlink()
    for name in files:
        torch.save({"optimizer": Payload(marker)}, folder / name)
    torch.load(folder / files[0], weights_only=False)  # what the old loader did: the payload runs
    assert marker.exists()
    marker.unlink()

    with pytest.raises(CheckpointError, match="older pickle format.*no longer unpickles.*--overwrite"):
        qatune.train(train_config(tiny_model_dir, stopped_copy, resume=True), progress=False)
    assert not marker.exists()


def test_resume_never_calls_an_unpickler(stopped_copy: Path, tiny_model_dir: Path, monkeypatch) -> None:
    """A full resume with torch.load and pickle.load disabled: nothing on the resume path unpickles."""
    import pickle

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("unpickling during resume")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    result = qatune.train(train_config(tiny_model_dir, stopped_copy, resume=True, stop_after_steps=3),
                          progress=False)
    assert result.status == "stopped" and result.metrics == {"global_step": 3}


def test_encoding_round_trips_optimizer_and_rng_state(tmp_path: Path) -> None:
    import random

    import numpy as np

    param = torch.nn.Parameter(torch.randn(3, 2))
    opt = torch.optim.AdamW([param], lr=0.01, betas=(0.8, 0.95))
    param.grad = torch.ones(3, 2)
    opt.step()
    random.seed(3)
    np.random.seed(4)
    state = {"optimizer": opt.state_dict(), "rng": ckpt.rng_state()}
    ckpt._write_state(tmp_path, "x", state)
    back = ckpt._read_state(tmp_path, "x")
    assert back["optimizer"]["param_groups"][0]["betas"] == (0.8, 0.95)
    assert torch.equal(back["optimizer"]["state"][0]["exp_avg"], state["optimizer"]["state"][0]["exp_avg"])
    assert back["rng"]["python"] == state["rng"]["python"]
    assert all(np.array_equal(a, b) if isinstance(a, np.ndarray) else a == b
               for a, b in zip(back["rng"]["numpy"], state["rng"]["numpy"], strict=True))
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    ckpt.set_rng_state(back["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


# -- 7. resume refuses changed training settings --------------------------------------------------------------

@pytest.mark.parametrize("change, keys", [
    ({"learning_rate": 1e-3}, ["learning_rate: 0.005 -> 0.001"]),
    ({"batch_size": 4}, ["batch_size: 8 -> 4"]),
    ({"seed": 7}, ["seed: 42 -> 7"]),
    ({"learning_rate": 1e-3, "seed": 7, "epochs": 3}, ["epochs: 2 -> 3", "learning_rate:", "seed: 42 -> 7"]),
])
def test_resume_with_changed_settings_is_refused(stopped_copy: Path, tiny_model_dir: Path,
                                                 change: dict[str, Any], keys: list[str]) -> None:
    before = digests(stopped_copy)
    with pytest.raises(CheckpointError) as info:
        qatune.train(train_config(tiny_model_dir, stopped_copy, resume=True, **change), progress=False)
    message = str(info.value)
    assert "does not match this configuration" in message and "--overwrite or a new --output" in message
    for key in keys:
        assert key in message
    assert message.count(" -> ") == len(change)
    assert digests(stopped_copy) == before


def test_resume_with_other_data_is_refused_but_a_moved_file_is_fine(tiny_model_dir: Path, tmp_path: Path) -> None:
    data = tmp_path / "train.json"
    shutil.copy(SAMPLE / "train.json", data)
    out = tmp_path / "run"
    small = dict(max_train_samples=8, epochs=1, batch_size=4, train=str(data))
    assert qatune.train(train_config(tiny_model_dir, out, stop_after_steps=1, **small), progress=False).status \
        == "stopped"
    edited = tmp_path / "edited.json"
    edited.write_text(json.dumps(json.loads(data.read_text()), indent=3))  # other bytes
    with pytest.raises(CheckpointError, match="changed: train: .* -> "):
        qatune.train(train_config(tiny_model_dir, out, resume=True, **{**small, "train": str(edited)}),
                     progress=False)
    moved = tmp_path / "moved" / "train.json"
    moved.parent.mkdir()
    shutil.move(data, moved)
    # the same bytes at another path, and settings that do not shape training (eval, threads, tracking) changed
    result = qatune.train(train_config(tiny_model_dir, out, resume=True, num_threads=2, do_eval=True,
                                       eval=str(SAMPLE / "dev.json"), max_eval_samples=2,
                                       **{**small, "train": str(moved)}), progress=False)
    assert result.status == "finished"


# -- 8. a run's base model is the one recorded at training time -----------------------------------------------

def test_relative_model_path_never_picks_up_another_model(capsys, monkeypatch, tmp_path: Path,
                                                          tiny_model_dir: Path) -> None:
    from transformers import BertConfig, BertForQuestionAnswering

    work, other = tmp_path / "work", tmp_path / "other"
    shutil.copytree(tiny_model_dir, work / "base")
    shutil.copytree(tiny_model_dir, other / "base")  # another model at the same relative path
    torch.manual_seed(1)
    BertForQuestionAnswering(BertConfig.from_pretrained(other / "base")).save_pretrained(other / "base")
    monkeypatch.chdir(work)
    rc, _, err = cli(capsys, *train_args("base", "run"))
    assert rc == 0, err
    saved = (work / "run" / "qatune.yaml").read_text()
    assert "model: base\n" in saved and f"base_model_path: {work / 'base'}\n" in saved

    from qatune.artifacts import read_run_config
    from qatune.backends import get_backend

    base_model_of = get_backend("hf").base_model_of
    monkeypatch.chdir(other)  # "base" here is the other model
    assert base_model_of(read_run_config(work / "run")) == str(work / "base")
    rc, out, err = cli(capsys, "predict", work / "run", "--question", "What did the works make?", "--context", CONTEXT)
    assert rc == 0, err
    monkeypatch.chdir(work)
    rc, out_from_work, _ = cli(capsys, "predict", work / "run", "--question", "What did the works make?",
                               "--context", CONTEXT)
    assert json.loads(out) == json.loads(out_from_work)  # the same base model from either directory

    shutil.rmtree(work / "base")  # gone: a clear error naming both, never the model under the cwd
    monkeypatch.chdir(other)
    rc, _, err = cli(capsys, "predict", work / "run", "--question", "What?", "--context", CONTEXT)
    assert_clean_error(rc, err, f"base model {work / 'base'}", "given as --model base", "no longer exists")


# -- unclear errors: damaged checkpoints, a deleted adapter, Ctrl+C ----------------------------------------------

@pytest.mark.parametrize("name, damage", [
    ("optimizer.safetensors", "truncate"),
    ("trainable.safetensors", "garbage"),
    ("rng.json", "garbage"),
    ("fingerprint.json", "truncate"),
    ("trainer_state.json", "garbage"),
])
def test_damaged_checkpoint_file_is_named(capsys, stopped_copy: Path, tiny_model_dir: Path, name: str,
                                          damage: str) -> None:
    path = stopped_copy / "checkpoint" / name
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"\x00garbage{" * 7)
    cfg = train_config(tiny_model_dir, stopped_copy)
    rc, _, err = cli(capsys, "train", "--model", cfg["model"], "--train", cfg["train"], "--output", stopped_copy,
                     "--max-train-samples", "40", "--epochs", "2", "--batch-size", "8", "--learning-rate", "5e-3",
                     "--precision", "fp32", "--device", "cpu", "--no-eval", "--no-tracking", "--no-progress",
                     "--resume", "max_seq_length=128", "doc_stride=32", "num_threads=1")
    assert_clean_error(rc, err, f"checkpoint file {path} is damaged", "--overwrite")
    assert len([line for line in err.splitlines() if "error" in line]) == 1, err
    assert "questions from" not in err  # refused before any input was loaded


def test_deleted_adapter_file_is_named(capsys, run_copy: Path) -> None:
    (run_copy / "adapter_model.safetensors").unlink()
    rc, _, err = cli(capsys, "predict", run_copy, "--question", "What?", "--context", CONTEXT)
    assert_clean_error(rc, err, f"run directory {run_copy} is incomplete", "adapter_model.safetensors is missing")
    assert "offline" not in err and "hub" not in err


@pytest.mark.parametrize("save_steps", [0, 1])
def test_ctrl_c_promises_a_checkpoint_only_when_there_is_one(tiny_model_dir: Path, tmp_path: Path, monkeypatch,
                                                             save_steps: int) -> None:
    from qatune import runtime

    calls = {"n": 0}

    def interrupt_at_step_2() -> None:  # called once per optimizer step on CPU
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(runtime, "release_free_memory", interrupt_at_step_2)
    out = tmp_path / "run"
    with pytest.raises(QatuneError) as info:
        qatune.train(train_config(tiny_model_dir, out, save_steps=save_steps), progress=False)
    message = str(info.value)
    if save_steps:
        assert ckpt.has_checkpoint(out)
        assert "the last checkpoint" in message and "step 1" in message and "--resume" in message
    else:
        assert not ckpt.has_checkpoint(out)
        assert "before the first checkpoint" in message and "nothing to resume" in message
        assert "--resume" not in message


def test_compare_into_a_foreign_folder_is_refused(capsys, tmp_path: Path, tiny_model_dir: Path) -> None:
    import yaml
    from conftest import REPO

    folder = user_folder(tmp_path / "mine")
    before = digests(folder)
    cfg = yaml.safe_load((REPO / "configs" / "compare_tiny.yaml").read_text())
    cfg.update(model=str(tiny_model_dir), train=str(SAMPLE / "train.json"), eval=str(SAMPLE / "dev.json"),
               output=str(folder), tracking=False)
    config = tmp_path / "compare.yaml"
    config.write_text(yaml.safe_dump(cfg, sort_keys=False))
    for extra in ((), ("--force",)):
        rc, _, err = cli(capsys, "compare", "--config", config, *extra)
        assert_clean_error(rc, err, "is not empty and holds no qatune comparison")
        assert digests(folder) == before
