"""configs/*.yaml spell task options in their section (``qa: {doc_stride: 128}``); each still loads to exactly
the TrainConfig its flat spelling (the files before sections) gives, and compare configs take ``task:``."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import REPO
from test_custom_task import DigitTask

from qatune.compare.runner import load_compare_spec, method_train_config
from qatune.config import load_config
from qatune.errors import ConfigError
from qatune.tasks import register_task, unregister_task

CONFIGS = sorted((REPO / "configs").glob("*.yaml"))
QA_KEYS = {"doc_stride", "n_best", "max_answer_length", "null_threshold", "version_2"}


def flattened(path: Path, folder: Path) -> Path:
    """The same config with the qa: section's keys at the top level, as the files were written before."""
    data = yaml.safe_load(path.read_text())
    flat = {**{k: v for k, v in data.items() if k != "qa"}, **data["qa"]}
    out = folder / path.name
    out.write_text(yaml.safe_dump(flat, sort_keys=False))
    return out


def configs_of(path: Path) -> dict[str, Any]:
    if path.name.startswith("compare"):
        spec = load_compare_spec(path)
        return {m.label: dataclasses.asdict(method_train_config(spec, m)) for m in spec.methods}
    return {"": dataclasses.asdict(load_config(path))}


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_sectioned_configs_load_to_the_same_values_as_their_flat_spelling(path: Path, tmp_path: Path) -> None:
    data = yaml.safe_load(path.read_text())
    assert isinstance(data.get("qa"), dict) and not QA_KEYS & set(data), "task options belong in the qa: section"
    assert configs_of(path) == configs_of(flattened(path, tmp_path))


def test_the_documented_values(tmp_path: Path) -> None:
    configs = {p.name: configs_of(p) for p in CONFIGS}
    assert configs["squad_lora.yaml"][""]["task_options"]["doc_stride"] == 128
    assert configs["squad_lora.yaml"][""]["method_options"]["lora"]["r"] == 8
    v2 = configs["squad_v2_lora.yaml"][""]["task_options"]
    assert v2["version_2"] is True and v2["null_threshold"] is None
    assert configs["quickstart.yaml"][""]["task_options"]["doc_stride"] == 64
    assert {c["task_options"]["doc_stride"] for c in configs["compare_tiny.yaml"].values()} == {32}
    assert list(configs["compare_squad.yaml"]) == ["full", "lora", "loha", "ia3", "prefix", "ptuning", "lora-last4"]


def test_flat_overrides_and_flags_still_win_over_a_section() -> None:
    path = REPO / "configs" / "squad_lora.yaml"
    assert load_config(path, ["doc_stride=64"]).doc_stride == 64  # as over the flat key before
    assert load_config(path, ["qa.doc_stride=32"]).doc_stride == 32
    assert load_config(path, None, {"qa": {"doc_stride": 16}}).doc_stride == 16  # --doc-stride 16


def test_a_comparison_of_another_task(tmp_path: Path) -> None:
    register_task("has_digit", DigitTask)
    try:
        base = {"task": "has_digit", "model": "minilm", "train": str(tmp_path / "t.jsonl"),
                "eval": str(tmp_path / "d.jsonl"), "digits": {"label_smoothing": 0.1},
                "methods": {"full": {}, "lora": {"lora": {"r": 4}}}}
        spec = load_compare_spec(None, base)
        configs = [method_train_config(spec, m) for m in spec.methods]
        assert [c.task for c in configs] == ["has_digit", "has_digit"]
        assert all(c.task_options == {"label_smoothing": 0.1} for c in configs)
        with pytest.raises(ConfigError, match=r"methods.lora.digits: 'digits' is the same for every method"):
            load_compare_spec(None, {**base, "methods": {"lora": {"digits": {"label_smoothing": 0.2}}}})
        with pytest.raises(ConfigError, match="unknown key 'doc_stride'"):  # QA's option is not this task's
            load_compare_spec(None, {**base, "doc_stride": 64})
    finally:
        unregister_task("has_digit")
