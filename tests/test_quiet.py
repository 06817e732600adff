"""Only qatune speaks: a normal ``qatune train`` / ``qatune predict`` shows qatune's lines, none of the
libraries' warnings, INFO logs or bars; ``--verbose`` shows them again; weights missing from a checkpoint
are still reported, in qatune's words."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, SAMPLE

from qatune.quiet import QUIET_ENV, VERBOSE_ENV

NOISE = ("FutureWarning", "DeprecationWarning", "INFO mlflow", "Loading weights", "WARNING:")


def clean_env(**extra: str) -> dict[str, str]:
    """The user's shell: none of the quiet settings an in-process ``qatune.cli.main`` may have exported."""
    env = {k: v for k, v in os.environ.items() if k not in QUIET_ENV and k != VERBOSE_ENV}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               PYTHONPATH=str(REPO), **extra)
    return env


def qatune_cli(*argv: str | Path, cwd: Path, **env: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "qatune", *map(str, argv)], cwd=cwd, env=clean_env(**env),
                          capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    return out


def train_args(model: Path, out: Path) -> list[str | Path]:
    # tracking stays on (the default): a new MLflow store beside the run is what logs "INFO mlflow"
    return ["train", "--model", model, "--method", "lora", "--train", SAMPLE / "train.json",
            "--eval", SAMPLE / "dev.json", "--max-train-samples", "16", "--max-eval-samples", "4", "--epochs", "1",
            "--max-seq-length", "128", "--doc-stride", "32", "--output", out, "num_threads=1"]


@pytest.mark.slow
def test_train_and_predict_print_only_qatune(tiny_model_dir: Path, tmp_path: Path) -> None:
    run = tmp_path / "runs" / "lora"
    out = qatune_cli(*train_args(tiny_model_dir, run), cwd=tmp_path)
    assert (tmp_path / "runs" / "mlflow.db").is_file()  # tracking ran
    assert "qatune: method lora:" in out and "qatune: epoch 1:" in out
    found = [n for n in NOISE if n in out]
    assert not found, f"library output in `qatune train`: {found}\n{out}"

    out = qatune_cli("predict", run, "--question", "Where did the bakery open?",
                     "--context", "The bakery opened in Lisbon in 1901.", cwd=tmp_path)
    found = [n for n in NOISE if n in out]
    assert not found, f"library output in `qatune predict`: {found}\n{out}"
    answer = json.loads(out[out.index("{"):])
    assert set(answer) >= {"text", "score", "start", "end"}


@pytest.mark.slow
def test_verbose_shows_the_libraries_again(tiny_model_dir: Path, tmp_path: Path) -> None:
    run = tmp_path / "runs" / "lora"
    out = qatune_cli("--verbose", *train_args(tiny_model_dir, run), cwd=tmp_path)
    assert "INFO mlflow" in out  # MLflow's own log line about the store it created
    assert "qatune: epoch 1:" in out
    # the environment variable does the same, and predict's model loading shows transformers' bar again
    out = qatune_cli("predict", run, "--question", "Where?", "--context", "In Lisbon.", cwd=tmp_path,
                     **{VERBOSE_ENV: "1"})
    assert "Loading weights" in out


def test_quiet_settings_reach_child_processes_and_verbose_undoes_them() -> None:
    code = ("import os, sys, warnings; from qatune import quiet; quiet.apply(); "
            "child = __import__('subprocess').run([sys.executable, '-c', "
            "'import os, warnings; warnings.warn(\"old\", FutureWarning); "
            "print(os.environ.get(\"TRANSFORMERS_VERBOSITY\"))'], capture_output=True, text=True); "
            "print(child.stdout.strip(), repr(child.stderr)); quiet.apply(verbose=True); "
            "print(os.environ.get('TRANSFORMERS_VERBOSITY'), os.environ.get('QATUNE_VERBOSE'))")
    proc = subprocess.run([sys.executable, "-c", code], env=clean_env(), capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["error ''", "None 1"]


def test_weights_missing_from_a_checkpoint_are_reported(tiny_model_dir: Path, tmp_path: Path, capsys) -> None:
    from safetensors.torch import load_file, save_file

    from qatune.backends.hf.models import load_model_for_task
    from qatune.quiet import quieted

    broken = tmp_path / "broken"
    broken.mkdir()
    for f in tiny_model_dir.iterdir():
        if f.name != "model.safetensors":
            (broken / f.name).write_bytes(f.read_bytes())
    weights = load_file(str(tiny_model_dir / "model.safetensors"))
    dropped = [k for k in weights if k.startswith(("qa_outputs.", "bert.encoder.layer.1.output.dense."))]
    assert len(dropped) == 4
    save_file({k: v for k, v in weights.items() if k not in dropped}, str(broken / "model.safetensors"),
              metadata={"format": "pt"})

    with quieted():  # what the Python API does: no weight-loading bar either
        load_model_for_task(str(tiny_model_dir), "AutoModelForQuestionAnswering", head_expected=True)
    assert capsys.readouterr().err == ""  # a complete checkpoint: nothing to say

    with quieted():
        load_model_for_task(str(broken), "AutoModelForQuestionAnswering", head_expected=True)
    err = capsys.readouterr().err
    assert f"qatune: warning: 2 weights of the encoder are not in {broken}" in err
    assert "bert.encoder.layer.1.output.dense.bias" in err
    assert f"qatune: warning: {broken} has no trained task head (qa_outputs.bias, qa_outputs.weight)" in err

    # a base encoder for training: a fresh head is expected, the missing encoder weights are not
    with quieted():
        load_model_for_task(str(broken), "AutoModelForQuestionAnswering")
    err = capsys.readouterr().err
    assert "weights of the encoder" in err and "task head" not in err


def test_an_api_call_ends_without_a_note_when_hub_bars_are_disabled(monkeypatch: pytest.MonkeyPatch,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """``import qatune; qatune.evaluate(...)`` imports huggingface_hub inside the call, with the quiet
    environment set, so the hub reads HF_HUB_DISABLE_PROGRESS_BARS=1 for good; restoring the bars at the
    end of the call must not print the hub's "Cannot enable progress bars" warning as a qatune note."""
    import importlib

    import transformers.utils.logging  # noqa: F401  (the bars quieted() switches)

    hub_tqdm = importlib.import_module("huggingface_hub.utils.tqdm")  # the module: its package exports a class so named

    from qatune.quiet import quieted

    monkeypatch.setattr(hub_tqdm, "HF_HUB_DISABLE_PROGRESS_BARS", True)
    capsys.readouterr()
    with quieted():
        pass
    assert capsys.readouterr().err == ""
