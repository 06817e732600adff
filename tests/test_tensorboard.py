"""TensorBoard tracking and the per-step curves in history.json.

The event files are read back with TensorBoard's own reader (``EventAccumulator``), so what is checked is
what the TensorBoard UI would show: the tags, one point per optimizer step for the training curves and one
per epoch for the evaluation metrics, on the same step axis.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from conftest import SAMPLE

pytest.importorskip("tensorboard", reason="tensorboard is not installed: TensorBoard tests skipped "
                                          "(pip install tensorboard)")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

import qatune  # noqa: E402
from qatune.errors import ConfigError  # noqa: E402
from qatune.training.trainer import LOSS_EMA_BETA  # noqa: E402

EPOCHS = 2


def tiny(model: Path, output: Path, **extra: Any) -> dict[str, Any]:
    return {"model": str(model), "method": "lora", "train": str(SAMPLE / "train.json"),
            "eval": str(SAMPLE / "dev.json"), "max_train_samples": 16, "max_eval_samples": 8, "epochs": EPOCHS,
            "batch_size": 4, "max_seq_length": 128, "output": str(output), **extra}


@pytest.fixture(scope="module")
def tb_run(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    out = tmp_path_factory.mktemp("tb") / "run"
    return qatune.train(tiny(tiny_model_dir, out, tracking=["tensorboard"]), progress=False)


def scalars(run_dir: Path) -> EventAccumulator:
    acc = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0})  # 0: keep every point
    acc.Reload()
    return acc


def test_tensorboard_event_files_hold_the_curves(tb_run: Any) -> None:
    history = json.loads((tb_run.output_dir / "history.json").read_text())
    steps = [p for epoch in history for p in epoch["steps"]]
    total = history[-1]["step"]
    assert total >= 2 * EPOCHS and [p["step"] for p in steps] == list(range(1, total + 1))

    acc = scalars(tb_run.output_dir)
    tags = set(acc.Tags()["scalars"])
    assert {"train/loss", "train/loss_ema", "train/learning_rate", "train/epoch_loss", "eval/f1",
            "eval/exact_match", "eval/eval_loss"} <= tags, tags
    for tag, key in (("train/loss", "loss"), ("train/loss_ema", "loss_ema"), ("train/learning_rate", "learning_rate")):
        events = acc.Scalars(tag)
        assert [e.step for e in events] == list(range(1, total + 1)), tag  # one point per optimizer step
        assert [e.value for e in events] == pytest.approx([p[key] for p in steps], rel=1e-5), tag
    epoch_ends = [h["step"] for h in history]
    for tag, key in (("eval/f1", "f1"), ("train/epoch_loss", "train_loss")):
        events = acc.Scalars(tag)
        assert [e.step for e in events] == epoch_ends, tag  # per epoch, where the epoch ended
        assert [e.value for e in events] == pytest.approx([h[key] for h in history], rel=1e-5), tag
    # tensorboard/ is the run's own output: in its manifest, so --overwrite removes it and nothing else
    manifest = json.loads((tb_run.output_dir / ".qatune-files.json").read_text())
    assert "tensorboard" in manifest["files"]
    assert not (tb_run.output_dir.parent / "mlflow.db").exists()  # tensorboard alone: no MLflow store


def test_history_has_per_step_loss_ema_and_learning_rate(tb_run: Any) -> None:
    history = json.loads((tb_run.output_dir / "history.json").read_text())
    assert [h["epoch"] for h in history] == list(range(1, EPOCHS + 1))  # per-epoch entries as before
    for h in history:
        assert {"train_loss", "learning_rate", "train_time_s", "f1", "eval_loss"} <= set(h)
        # the epoch's train_loss is the mean of its steps' raw losses
        assert h["train_loss"] == pytest.approx(sum(p["loss"] for p in h["steps"]) / len(h["steps"]))
    points = [p for h in history for p in h["steps"]]
    ema = points[0]["loss"]
    for p in points:  # the EMA runs across the epoch boundary
        ema = ema if p is points[0] else LOSS_EMA_BETA * ema + (1 - LOSS_EMA_BETA) * p["loss"]
        assert p["loss_ema"] == pytest.approx(ema)
    lrs = [p["learning_rate"] for p in points]
    peak = max(lrs)
    assert peak == pytest.approx(2e-3)  # the LoRA default learning rate, reached after warmup
    top = lrs.index(peak)
    assert lrs[:top + 1] == sorted(lrs[:top + 1]) and lrs[top:] == sorted(lrs[top:], reverse=True)  # warmup, decay


def test_resumed_run_continues_the_step_curve(tiny_model_dir: Path, tmp_path: Path) -> None:
    """A run stopped mid-epoch and resumed has every step once, and the same curve as an unbroken run."""
    whole = qatune.train(tiny(tiny_model_dir, tmp_path / "whole", tracking=False, do_eval=False), progress=False)
    cfg = tiny(tiny_model_dir, tmp_path / "broken", tracking=["tensorboard"], do_eval=False)
    stopped = qatune.train({**cfg, "stop_after_steps": 3}, progress=False)
    assert stopped.status == "stopped"
    resumed = qatune.train({**cfg, "resume": True}, progress=False)
    steps = lambda r: [p for h in r.history for p in h["steps"]]  # noqa: E731
    assert [p["step"] for p in steps(resumed)] == [p["step"] for p in steps(whole)]
    for a, b in zip(steps(resumed), steps(whole), strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4) and a["loss_ema"] == pytest.approx(b["loss_ema"], rel=1e-4)
    events = scalars(tmp_path / "broken").Scalars("train/loss")
    assert sorted(e.step for e in events) == [p["step"] for p in steps(whole)]  # every step once, over two writers


@pytest.mark.parametrize(("value", "expected"), [
    (["tensorboard", "mlflow"], ["tensorboard", "mlflow"]), ("tensorboard", ["tensorboard"]),
    ("mlflow,tensorboard", ["mlflow", "tensorboard"]), (True, True), (False, False), ([], False),
])
def test_tracking_values(value: Any, expected: Any) -> None:
    from qatune.config import load_config

    assert load_config(base={"tracking": value}).tracking == expected


def test_unknown_tracker_is_a_config_error() -> None:
    from qatune.config import load_config

    with pytest.raises(ConfigError, match="config key 'tracking': unknown tracker 'wandb'; trackers: mlflow, "
                                          "tensorboard"):
        load_config(base={"tracking": ["mlflow", "wandb"]})
    with pytest.raises(ConfigError, match="register_model.*MLflow tracking is off"):
        load_config(base={"tracking": ["tensorboard"], "register_model": "squad"})


def test_compare_loss_plot_draws_per_step_curves(tb_run: Any) -> None:
    """One smoothed line per method from the per-step points (plus its faint raw line); a run written before
    per-step curves existed gets its per-epoch means at the epochs' last steps."""
    from qatune.compare.report import _colors, loss_figure

    history = json.loads((tb_run.output_dir / "history.json").read_text())
    legacy = [{k: v for k, v in h.items() if k != "steps"} for h in history]
    records = [{"row": {"method": "lora"}, "history": history}, {"row": {"method": "old"}, "history": legacy}]
    fig = loss_figure(records, _colors(["lora", "old"]))
    train_ax, val_ax = fig.axes[:2]
    assert train_ax.get_xlabel().startswith("optimizer step") and "loss" in train_ax.get_ylabel()
    assert train_ax.get_legend_handles_labels()[1] == ["lora", "old"]
    lines = {line.get_label(): line for line in train_ax.get_lines() if not line.get_label().startswith("_")}
    points = [p for h in history for p in h["steps"]]
    assert list(lines["lora"].get_xdata()) == [p["step"] for p in points]
    assert list(lines["lora"].get_ydata()) == pytest.approx([p["loss_ema"] for p in points])
    assert list(lines["old"].get_xdata()) == [h["step"] for h in history]  # legacy: per epoch, at its last step
    assert list(lines["old"].get_ydata()) == pytest.approx([h["train_loss"] for h in history])
    val = {line.get_label(): line for line in val_ax.get_lines() if not line.get_label().startswith("_")}
    assert list(val["lora"].get_ydata()) == pytest.approx([h["eval_loss"] for h in history])
