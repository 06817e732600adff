"""Training runs: interrupted runs resume to the uninterrupted result, output-dir safety, gradient
accumulation, and atomic checkpoints."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import SAMPLE
from safetensors.torch import load_file

import qatune
from qatune.errors import ConfigError
from qatune.training import checkpoint as ckpt

STEPS_PER_EPOCH = 8  # 40 sample questions -> 57 windows of 128 tokens -> 8 batches of 8


pytestmark = pytest.mark.usefixtures("one_thread")  # fixtures one_thread and cache_dir: tests/conftest.py


def config(model: Path, out: Path, cache_dir: Path, **kw: Any) -> dict[str, Any]:
    cfg = dict(model=str(model), method="lora", train=str(SAMPLE / "train.json"), eval=str(SAMPLE / "dev.json"),
               output=str(out), max_train_samples=40, max_eval_samples=8, epochs=2, batch_size=8,
               learning_rate=5e-3, max_seq_length=128, doc_stride=32, precision="fp32", device="cpu",
               tracking=False, cache_dir=str(cache_dir), num_threads=1)
    cfg.update(kw)
    return cfg


def adapter_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "adapter_model.safetensors"))


def assert_no_checkpoint_leftovers(out: Path) -> None:
    assert not (out / "checkpoint.tmp").exists()
    assert not (out / "checkpoint.old").exists()


def test_interrupted_training_resumes_to_the_same_result(tiny_model_dir, tmp_path, cache_dir):
    a = qatune.train(config(tiny_model_dir, tmp_path / "a", cache_dir), progress=False)
    assert a.status == "finished" and len(a.history) == 2
    assert a.history[-1]["step"] == 2 * STEPS_PER_EPOCH

    out = tmp_path / "b"
    stopped = qatune.train(config(tiny_model_dir, out, cache_dir, stop_after_steps=3), progress=False)
    assert stopped.status == "stopped" and stopped.metrics == {"global_step": 3}
    assert ckpt.has_checkpoint(out)
    assert_no_checkpoint_leftovers(out)
    state = json.loads((out / "checkpoint" / "trainer_state.json").read_text())
    assert (state["epoch"], state["step_in_epoch"], state["global_step"]) == (0, 3, 3)
    assert not (out / "qatune.yaml").exists() and not (out / "adapter_model.safetensors").exists()

    # an unfinished run is never silently restarted or resumed
    with pytest.raises(ConfigError, match="--resume"):
        qatune.train(config(tiny_model_dir, out, cache_dir), progress=False)
    # a checkpoint of another method does not load
    with pytest.raises(ConfigError, match="does not match"):
        qatune.train(config(tiny_model_dir, out, cache_dir, method="ia3", resume=True), progress=False)
    with pytest.raises(ConfigError, match="does not match"):
        qatune.train(config(tiny_model_dir, out, cache_dir, resume=True, lora={"r": 4}), progress=False)
    assert ckpt.has_checkpoint(out)

    # second slot: stop again exactly at the end of epoch 1 (after its evaluation)
    stopped = qatune.train(config(tiny_model_dir, out, cache_dir, resume=True, stop_after_steps=STEPS_PER_EPOCH),
                           progress=False)
    assert stopped.status == "stopped"
    state = json.loads((out / "checkpoint" / "trainer_state.json").read_text())
    assert (state["epoch"], state["step_in_epoch"], state["global_step"]) == (1, 0, STEPS_PER_EPOCH)
    assert len(state["history"]) == 1

    b = qatune.train(config(tiny_model_dir, out, cache_dir, resume=True), progress=False)
    assert b.status == "finished"
    assert not (out / "checkpoint").exists()
    assert_no_checkpoint_leftovers(out)

    hist_a = json.loads((tmp_path / "a" / "history.json").read_text())
    hist_b = json.loads((out / "history.json").read_text())
    assert [h["step"] for h in hist_b] == [h["step"] for h in hist_a]
    for ha, hb in zip(hist_a, hist_b, strict=True):
        assert hb["train_loss"] == pytest.approx(ha["train_loss"], abs=1e-6)
        assert hb["learning_rate"] == pytest.approx(ha["learning_rate"], abs=1e-12)
        for key in ("exact_match", "f1"):
            assert hb[key] == ha[key]
        assert hb["eval_loss"] == pytest.approx(ha["eval_loss"], abs=1e-6)
    assert hist_a[1]["train_loss"] < hist_a[0]["train_loss"]

    metrics_a = json.loads((tmp_path / "a" / "metrics.json").read_text())
    metrics_b = json.loads((out / "metrics.json").read_text())
    for key in ("exact_match", "f1", "train_loss", "trainable_params"):
        assert metrics_b[key] == pytest.approx(metrics_a[key], abs=1e-6)
    assert json.loads((out / "predictions.json").read_text()) == \
        json.loads((tmp_path / "a" / "predictions.json").read_text())

    wa, wb = adapter_weights(tmp_path / "a"), adapter_weights(out)
    assert set(wa) == set(wb) and len(wa) > 4
    for key in wa:
        assert torch.allclose(wa[key], wb[key], atol=1e-6, rtol=0), key
    # and the run really trained: the LoRA B matrices left their zero init
    assert any(k for k in wa if "lora_B" in k and wa[k].abs().max() > 1e-4)


def test_resume_with_overwrite_continues_the_checkpoint(tiny_model_dir, tmp_path, cache_dir, capsys):
    """What `qatune compare` passes for an interrupted method (--resume --overwrite): a matching checkpoint
    is continued, not deleted (it was, before: the whole epoch was trained again); one written with other
    settings is started over, with a line saying so."""
    a = qatune.train(config(tiny_model_dir, tmp_path / "a", cache_dir), progress=False)
    out = tmp_path / "b"
    qatune.train(config(tiny_model_dir, out, cache_dir, stop_after_steps=STEPS_PER_EPOCH), progress=False)
    b = qatune.train(config(tiny_model_dir, out, cache_dir, resume=True, overwrite=True), progress=False)
    assert b.status == "finished"
    assert "resumed from" in capsys.readouterr().err
    hist_a, hist_b = a.history, json.loads((out / "history.json").read_text())
    assert [h["train_loss"] for h in hist_b] == pytest.approx([h["train_loss"] for h in hist_a], abs=1e-6)

    other = tmp_path / "c"
    qatune.train(config(tiny_model_dir, other, cache_dir, stop_after_steps=STEPS_PER_EPOCH), progress=False)
    c = qatune.train(config(tiny_model_dir, other, cache_dir, resume=True, overwrite=True, lora={"r": 4}),
                     progress=False)
    assert c.status == "finished" and c.history[0]["step"] == STEPS_PER_EPOCH
    err = capsys.readouterr().err
    assert "written with other settings; starting over" in err and "resumed from" not in err


def test_finished_output_dir_needs_overwrite(tiny_model_dir, tmp_path, cache_dir):
    out = tmp_path / "run"
    small = dict(max_train_samples=4, epochs=1, do_eval=False)
    qatune.train(config(tiny_model_dir, out, cache_dir, **small), progress=False)
    assert (out / "qatune.yaml").is_file()
    before = (out / "adapter_model.safetensors").read_bytes()
    with pytest.raises(ConfigError, match="finished run.*--overwrite"):
        qatune.train(config(tiny_model_dir, out, cache_dir, **small), progress=False)
    assert (out / "adapter_model.safetensors").read_bytes() == before  # untouched
    result = qatune.train(config(tiny_model_dir, out, cache_dir, overwrite=True, seed=7, **small), progress=False)
    assert result.status == "finished"
    assert (out / "adapter_model.safetensors").read_bytes() != before


def test_resume_of_a_finished_run_does_not_retrain_it(tiny_model_dir, tmp_path, cache_dir):
    out = tmp_path / "run"
    small = dict(max_train_samples=4, epochs=1, do_eval=False)
    qatune.train(config(tiny_model_dir, out, cache_dir, **small), progress=False)
    before = (out / "adapter_model.safetensors").read_bytes()
    try:  # a job-slot loop re-issuing `--resume` after the last slot finished the run
        qatune.train(config(tiny_model_dir, out, cache_dir, resume=True, seed=7, **small), progress=False)
    except ConfigError as exc:
        assert "finished" in str(exc)
    assert (out / "adapter_model.safetensors").read_bytes() == before


def test_resume_without_checkpoint_starts_from_scratch(tiny_model_dir, tmp_path, cache_dir):
    small = dict(max_train_samples=4, epochs=1, do_eval=False)
    a = qatune.train(config(tiny_model_dir, tmp_path / "a", cache_dir, **small), progress=False)
    b = qatune.train(config(tiny_model_dir, tmp_path / "b", cache_dir, resume=True, **small), progress=False)
    assert b.status == "finished"
    assert b.history[0]["train_loss"] == pytest.approx(a.history[0]["train_loss"], abs=1e-6)


def _no_dropout_copy(model_dir: Path, dest: Path) -> Path:
    shutil.copytree(model_dir, dest)
    cfg = json.loads((dest / "config.json").read_text())
    cfg["hidden_dropout_prob"] = 0.0
    cfg["attention_probs_dropout_prob"] = 0.0
    (dest / "config.json").write_text(json.dumps(cfg))
    return dest


def test_gradient_accumulation_matches_the_larger_batch(tiny_model_dir, tmp_path, cache_dir):
    model = _no_dropout_copy(tiny_model_dir, tmp_path / "model")
    common = dict(method="full", do_eval=False, group_by_length=False, warmup_ratio=0.0, learning_rate=1e-3,
                  stop_after_steps=1)
    big = qatune.train(config(model, tmp_path / "big", cache_dir, batch_size=8, **common), progress=False)
    acc = qatune.train(config(model, tmp_path / "acc", cache_dir, batch_size=4, grad_accum=2, **common),
                       progress=False)
    assert big.status == acc.status == "stopped"
    w_big = load_file(str(tmp_path / "big" / "checkpoint" / "trainable.safetensors"))
    w_acc = load_file(str(tmp_path / "acc" / "checkpoint" / "trainable.safetensors"))
    base = load_file(str(model / "model.safetensors"))
    lr = common["learning_rate"]
    moved = 0
    for key, value in w_big.items():
        name = key.removeprefix("model.")
        if name == "qa_outputs.bias":
            continue  # softmax over positions ignores a shared shift: its gradient is 0 up to rounding
        # Adam's first step is about lr * sign(grad): elements with near-zero gradients may differ a little
        torch.testing.assert_close(w_acc[key] - base[name], value - base[name], atol=0.05 * lr, rtol=0)
        moved += int((value - base[name]).abs().max() > 0.5 * lr)
    assert moved > 10  # the step changed the weights (lr from step one, no warmup)
    # the optimizer saw one step in both runs, and the accumulated run's state is the big batch's
    state_big = json.loads((tmp_path / "big" / "checkpoint" / "trainer_state.json").read_text())
    state_acc = json.loads((tmp_path / "acc" / "checkpoint" / "trainer_state.json").read_text())
    assert state_big["global_step"] == state_acc["global_step"] == 1
    assert state_acc["epoch_loss_sum"] == pytest.approx(state_big["epoch_loss_sum"], abs=1e-5)


# ---------------------------------------------------------------------------------------------------
# Checkpoint files


class _Tiny(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = torch.nn.Linear(4, 3)
        self.frozen = torch.nn.Linear(3, 3)
        self.frozen.requires_grad_(False)


def _parts(seed: int):
    torch.manual_seed(seed)
    model = _Tiny()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)
    model.a(torch.ones(2, 4)).sum().backward()
    opt.step()
    sched.step()
    return model, opt, sched


def test_checkpoint_round_trip_holds_only_trainable_weights(tmp_path):
    model, opt, sched = _parts(0)
    state = ckpt.TrainerState(epoch=1, step_in_epoch=2, global_step=9, history=[{"epoch": 1, "train_loss": 1.5}],
                              epoch_loss_sum=3.25, epoch_loss_n=2)
    ckpt.save_checkpoint(tmp_path, model, opt, sched, state)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]
    assert set(load_file(str(tmp_path / "checkpoint" / "trainable.safetensors"))) == {"a.weight", "a.bias"}
    expected_rand = torch.rand(3)
    other, opt2, sched2 = _parts(1)
    torch.manual_seed(123)
    loaded = ckpt.load_checkpoint(tmp_path, other, opt2, sched2)
    assert loaded == state
    assert torch.equal(other.a.weight, model.a.weight)
    assert not torch.equal(other.frozen.weight, model.frozen.weight)  # frozen weights are not checkpointed
    assert torch.equal(torch.rand(3), expected_rand)  # RNG restored to the moment of saving
    assert opt2.state_dict()["state"][0]["step"] == opt.state_dict()["state"][0]["step"]


def test_failed_checkpoint_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    model, opt, sched = _parts(0)
    ckpt.save_checkpoint(tmp_path, model, opt, sched, ckpt.TrainerState(global_step=1))
    real_write = ckpt._write_state

    def failing_write(folder, stem, obj):
        if stem == ckpt.RNG:
            raise OSError("disk full")
        return real_write(folder, stem, obj)

    monkeypatch.setattr(ckpt, "_write_state", failing_write)
    with pytest.raises(OSError, match="disk full"):
        ckpt.save_checkpoint(tmp_path, model, opt, sched, ckpt.TrainerState(global_step=2))
    monkeypatch.setattr(ckpt, "_write_state", real_write)
    assert_no_checkpoint_leftovers(tmp_path)
    assert ckpt.has_checkpoint(tmp_path)
    assert ckpt.load_checkpoint(tmp_path, model, opt, sched).global_step == 1


def test_crash_between_renames_recovers_a_complete_checkpoint(tmp_path, monkeypatch):
    model, opt, sched = _parts(0)
    ckpt.save_checkpoint(tmp_path, model, opt, sched, ckpt.TrainerState(global_step=1))
    real_replace = os.replace
    calls = []

    def crash_on_second(src, dst):
        calls.append((Path(src).name, Path(dst).name))
        if len(calls) == 2:  # after checkpoint -> checkpoint.old, before checkpoint.tmp -> checkpoint
            raise KeyboardInterrupt
        return real_replace(src, dst)

    monkeypatch.setattr(ckpt.os, "replace", crash_on_second)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save_checkpoint(tmp_path, model, opt, sched, ckpt.TrainerState(global_step=2))
    monkeypatch.setattr(ckpt.os, "replace", real_replace)
    assert calls[0] == ("checkpoint", "checkpoint.old")
    assert not (tmp_path / "checkpoint").exists()  # the crash window this guards against
    assert ckpt.has_checkpoint(tmp_path)
    assert ckpt.load_checkpoint(tmp_path, model, opt, sched).global_step == 2  # the complete newer one
    assert_no_checkpoint_leftovers(tmp_path)
    ckpt.remove_checkpoint(tmp_path)
    assert not ckpt.has_checkpoint(tmp_path)
