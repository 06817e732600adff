"""Issue 12, validation and clear errors: nonsense values, pathological JSON and malformed score inputs.

Each case checks what a user sees: a one-line ``qatune: error:`` naming the key/file/record and the bad
value, exit status 2, no traceback (a few cases run ``python -m qatune`` in a subprocess to see exactly
that), and nothing written before the refusal.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import SAMPLE, cli

import qatune
from qatune.config import load_config
from qatune.data.jsonio import parse_json, short_repr
from qatune.errors import ConfigError, DataError
from qatune.tasks.extractive_qa import load_qa_examples

CONTEXT = "The Pellory glass works stood beside the canal. It made green bottles until 1962."
DEEP = "[" * 100_000  # valid JSON prefix deep enough to exhaust the parser's recursion: RecursionError before


def assert_refused(rc: int, err: str, *fragments: str) -> None:
    """Exit 2 with one 'qatune: error:' line holding every fragment, no traceback, no internal error."""
    assert rc == 2, err
    assert "Traceback" not in err and "internal error" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("qatune: error:")]
    assert len(lines) == 1, err
    for fragment in fragments:
        assert fragment in lines[0], f"{fragment!r} not in: {lines[0]}"


def write(path: Path, data: Any) -> Path:
    path.write_text(data if isinstance(data, str) else json.dumps(data), encoding="utf-8")
    return path


def squad(version: str | None, *qas: dict[str, Any]) -> dict[str, Any]:
    document: dict[str, Any] = {"data": [{"title": "Pellory", "paragraphs": [{"context": CONTEXT,
                                                                                "qas": list(qas)}]}]}
    if version is not None:
        document["version"] = version
    return document


def qa(qid: str, text: str | None = "green bottles", **extra: Any) -> dict[str, Any]:
    answers = [] if text is None else [{"text": text, "answer_start": CONTEXT.find(text)}]
    return {"id": qid, "question": "What did the works make?", "answers": answers, **extra}


# ---------------------------------------------------------------------------------------------------
# Defect 9: every numeric setting has a range, refused with key, value and range whatever the entry point

BAD_VALUES = [
    # override, fragments of the one-line message
    ("warmup_ratio=5", ["'warmup_ratio': 5.0 is out of range", "in [0, 1]"]),
    ("warmup_ratio=-0.1", ["'warmup_ratio': -0.1 is out of range", "in [0, 1]"]),
    ("weight_decay=-3", ["'weight_decay': -3.0 is out of range", ">= 0"]),
    ("learning_rate=nan", ["'learning_rate'", "nan", "not a valid finite number"]),
    ("learning_rate=.inf", ["'learning_rate': inf", "not a valid finite number"]),
    ("learning_rate=0", ["'learning_rate': 0.0 is out of range", "> 0"]),
    ("learning_rate=-1e-3", ["'learning_rate': -0.001 is out of range", "> 0"]),
    ("epochs=0", ["'epochs': 0 is out of range", ">= 1"]),
    ("epochs=-2", ["'epochs': -2 is out of range", ">= 1"]),
    ("batch_size=0", ["'batch_size': 0 is out of range", ">= 1"]),
    ("eval_batch_size=-1", ["'eval_batch_size': -1 is out of range", ">= 1"]),
    ("grad_accum=0", ["'grad_accum': 0 is out of range", ">= 1"]),
    ("max_grad_norm=0", ["'max_grad_norm': 0.0 is out of range", "> 0", "zero every update"]),
    ("max_grad_norm=nan", ["'max_grad_norm'", "not a valid finite number"]),
    ("seed=-1", ["'seed': -1 is out of range", "in [0, 2147483647]"]),
    ("n_best=0", ["'n_best': 0 is out of range", ">= 1"]),
    ("max_answer_length=0", ["'max_answer_length': 0 is out of range", ">= 1"]),
    ("max_seq_length=4", ["'max_seq_length': 4 is out of range", ">= 6"]),
    ("attention_dropout=1", ["'attention_dropout': 1.0 is out of range", "in [0, 1)"]),
    ("attention_dropout=-0.5", ["'attention_dropout': -0.5 is out of range", "in [0, 1)"]),
    ("hidden_dropout=1", ["'hidden_dropout': 1.0 is out of range", "in [0, 1)"]),
    ("save_steps=-1", ["'save_steps': -1 is out of range", ">= 0"]),
    ("stop_after_steps=0", ["'stop_after_steps': 0 is out of range", ">= 1"]),
    ("num_threads=0", ["'num_threads': 0 is out of range", ">= 1"]),
    ("max_eval_samples=-5", ["'max_eval_samples': -5 is out of range", ">= 1"]),
    ("null_threshold=nan", ["'null_threshold'", "not a valid finite number"]),
    ("lora.r=0", ["'lora.r': 0 is out of range", ">= 1", "adapter rank"]),
    ("lora.r=-4", ["'lora.r': -4 is out of range", ">= 1"]),
    ("lora.alpha=0", ["'lora.alpha': 0 is out of range", "> 0"]),
    ("lora.dropout=1", ["'lora.dropout': 1.0 is out of range", "in [0, 1)"]),
    ("lora.dropout=nan", ["'lora.dropout'", "not a valid finite number"]),
    ("loha.r=0", ["'loha.r': 0 is out of range", ">= 1"]),
    ("loha.dropout=-0.1", ["'loha.dropout': -0.1 is out of range", "in [0, 1)"]),
    ("prefix.num_virtual_tokens=0", ["'prefix.num_virtual_tokens': 0 is out of range", ">= 1"]),
    ("ptuning.num_virtual_tokens=-3", ["'ptuning.num_virtual_tokens': -3 is out of range", ">= 1"]),
    ("ptuning.encoder_hidden_size=0", ["'ptuning.encoder_hidden_size': 0 is out of range", ">= 1"]),
    ("prompt.num_virtual_tokens=0", ["'prompt.num_virtual_tokens': 0 is out of range", ">= 1"]),
    ("device=tpu", ["'device': 'tpu' is not a device qatune runs on", "auto, cpu, cuda or cuda:N"]),
    ("device=mps", ["'device': 'mps' is not a device qatune runs on"]),
    ("device=cuda:x", ["'device': 'cuda:x'"]),
    ("method=lora-last0", ["method 'lora-last0'", "needs N >= 1"]),
]


@pytest.mark.parametrize("override, fragments", BAD_VALUES, ids=[b[0] for b in BAD_VALUES])
def test_dotted_override_out_of_range(override: str, fragments: list[str]) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    message = str(err.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message


@pytest.mark.parametrize("value", [0.0, 1.0, 0.5])
def test_in_range_edges_are_accepted(value: float) -> None:
    cfg = load_config(None, [f"warmup_ratio={value}", "weight_decay=0", "attention_dropout=0", "lora.dropout=0",
                             "save_steps=0", "seed=0", "device=cuda:1", "lora.r=1"])
    assert cfg.warmup_ratio == value and cfg.options_for("lora") == {"dropout": 0.0, "r": 1}


def test_yaml_file_out_of_range_names_the_key(tmp_path: Path) -> None:
    path = write(tmp_path / "run.yaml", "warmup_ratio: 5\n")
    with pytest.raises(ConfigError, match=r"'warmup_ratio': 5\.0 is out of range; it must be in \[0, 1\]"):
        load_config(path)
    write(path, "lora:\n  r: 0\n")
    with pytest.raises(ConfigError, match=r"'lora\.r': 0 is out of range; it must be >= 1"):
        load_config(path)
    write(path, "learning_rate: .nan\n")
    with pytest.raises(ConfigError, match=r"'learning_rate': nan is not a valid finite number"):
        load_config(path)


def test_python_api_refuses_before_writing(tmp_path: Path) -> None:
    out = tmp_path / "run"
    with pytest.raises(ConfigError, match=r"'weight_decay': -3\.0 is out of range"):
        qatune.train({"train": str(SAMPLE / "train.json"), "weight_decay": -3, "output": str(out)})
    with pytest.raises(ConfigError, match=r"'lora\.r': 0 is out of range"):
        qatune.train({"train": str(SAMPLE / "train.json"), "lora": {"r": 0}, "output": str(out)})
    assert not out.exists()


@pytest.mark.parametrize("argv, fragments", [
    (["--learning-rate", "nan"], ["'learning_rate'", "not a valid finite number"]),
    (["--device", "tpu"], ["'device': 'tpu'", "auto, cpu, cuda or cuda:N"]),
    (["--epochs", "0"], ["'epochs': 0 is out of range"]),
    (["--batch-size", "-8"], ["'batch_size': -8 is out of range"]),
    (["warmup_ratio=5"], ["'warmup_ratio': 5.0 is out of range", "in [0, 1]"]),
    (["lora.r=0"], ["'lora.r': 0 is out of range"]),
    (["--max-seq-length", "128", "--doc-stride", "200"], ["doc_stride must be in [0, 122]"]),
], ids=["lr-nan", "device-tpu", "epochs-0", "batch-negative", "warmup-5", "lora-r-0", "stride"])
def test_train_cli_exit_2_and_nothing_written(capsys, tmp_path: Path, argv: list[str],
                                              fragments: list[str]) -> None:
    out = tmp_path / "run"
    rc, _, err = cli(capsys, "train", "--train", SAMPLE / "train.json", "--output", out, "--no-tracking", *argv)
    assert_refused(rc, err, *fragments)
    assert not out.exists()


def test_compare_plan_refuses_bad_values(capsys, tmp_path: Path) -> None:
    """A bad shared setting stops the comparison before anything runs; a bad option of one method is recorded
    as that method's failure (compare's documented rule), naming the key, and nothing trains."""
    plan = write(tmp_path / "cmp.yaml", {
        "train": str(SAMPLE / "train.json"), "eval": str(SAMPLE / "dev.json"), "output": str(tmp_path / "cmp"),
        "methods": {"lora": {"lora": {"r": 0}}}})
    rc, _, err = cli(capsys, "compare", "--config", plan, "--no-tracking", "warmup_ratio=7")
    assert_refused(rc, err, "'warmup_ratio': 7.0 is out of range")
    assert not (tmp_path / "cmp").exists()
    rc, _, err = cli(capsys, "compare", "--config", plan, "--no-tracking")
    assert rc != 0 and "Traceback" not in err
    assert "lora: invalid settings, recorded as failed: config key 'lora.r': 0 is out of range" in err


def test_subprocess_nonsense_value_exits_2_without_traceback(tmp_path: Path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([sys.executable, "-m", "qatune", "train", "--train", str(SAMPLE / "train.json"),
                           "--output", str(tmp_path / "run"), "--learning-rate", "nan"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "qatune: error: config key 'learning_rate': nan is not a valid finite number"]


@pytest.mark.parametrize("overrides, fragments", [
    (["max_seq_length=600", "doc_stride=64"], ["'max_seq_length': 600 is more than the 512 positions model",
                                                "use max_seq_length <= 512"]),
    (["method=ptuning", "ptuning.num_virtual_tokens=450"],
     ["'max_seq_length': 128 + 450 virtual tokens of ptuning is more than the 512 positions",
      "use max_seq_length <= 62 or fewer ptuning.num_virtual_tokens"]),
], ids=["window", "window-plus-virtual-tokens"])
def test_window_longer_than_the_model_is_refused(capsys, tmp_path: Path, tiny_model_dir: Path,
                                                 overrides: list[str], fragments: list[str]) -> None:
    """Past the model's positions training used to die with a tensor size mismatch at the first long window."""
    rc, _, err = cli(capsys, "train", "--model", tiny_model_dir, "--train", SAMPLE / "train.json",
                     "--max-train-samples", "4", "--output", tmp_path / "run", "--no-tracking", "--no-eval",
                     "--no-progress", "max_seq_length=128", *overrides)
    assert_refused(rc, err, *fragments)


# ---------------------------------------------------------------------------------------------------
# --device: auto/cpu/cuda/cuda:N only; an explicit cuda without a GPU is an error, never a CPU run


def test_pick_device_refuses_unknown_and_missing_devices() -> None:
    import torch

    from qatune.runtime import pick_device

    for name in ("tpu", "gpu", "mps", "", "cuda:"):
        with pytest.raises(ConfigError, match=r"is not a device qatune runs on; use auto, cpu, cuda or cuda:N"):
            pick_device(name)
    assert pick_device("CPU").type == "cpu"
    if torch.cuda.is_available():
        with pytest.raises(ConfigError, match=r"device=cuda:99 was requested but this machine has"):
            pick_device("cuda:99")
    else:
        for name in ("cuda", "cuda:0"):
            with pytest.raises(ConfigError, match=rf"device={name} was requested but no CUDA GPU is available"):
                pick_device(name)
        assert pick_device("auto").type == "cpu"  # documented: auto falls back to the CPU


def test_predict_and_evaluate_refuse_unknown_device(capsys, tiny_lora_run: Path) -> None:
    rc, _, err = cli(capsys, "predict", tiny_lora_run, "--question", "What?", "--context", CONTEXT,
                     "--device", "tpu")
    assert_refused(rc, err, "'device': 'tpu' is not a device qatune runs on")
    rc, _, err = cli(capsys, "evaluate", tiny_lora_run, "--data", SAMPLE / "dev.json", "--device", "tpu")
    assert_refused(rc, err, "'device': 'tpu'")


# ---------------------------------------------------------------------------------------------------
# Values PEFT itself refuses: a one-line ConfigError naming the method, not an internal error


def test_peft_refusals_name_the_method(tiny_model_dir: Path) -> None:
    from transformers import AutoModelForQuestionAnswering

    from qatune.backends import get_backend
    from qatune.methods import registry
    from qatune.tasks import get_task

    def build(method: str, options: dict[str, Any]) -> Any:
        model = AutoModelForQuestionAnswering.from_pretrained(tiny_model_dir)
        return get_backend("hf").apply_method(model, registry.get(method), registry.options(method, options),
                                              get_task("extractive_qa").model)

    with pytest.raises(ConfigError, match=r"method 'lora': PEFT cannot apply these options.*\{'nope'\} not found"):
        build("lora", {"target_modules": ["nope"]})
    with pytest.raises(ConfigError, match=r"method 'peft'.*`r` should be a positive integer"):
        build("peft", {"peft_type": "LoraConfig", "r": 0})


def test_train_cli_missing_target_module_exits_2(capsys, tmp_path: Path, tiny_model_dir: Path) -> None:
    rc, _, err = cli(capsys, "train", "--model", tiny_model_dir, "--train", SAMPLE / "train.json",
                     "--max-train-samples", "4", "--output", tmp_path / "run", "--no-tracking", "--no-eval",
                     "--no-progress", "max_seq_length=128", "lora.target_modules=[nope]")
    assert_refused(rc, err, "method 'lora'", "{'nope'} not found")


# ---------------------------------------------------------------------------------------------------
# Pathological but valid JSON: deep nesting, lone surrogate escapes -> DataError naming file/line/field


def test_parse_json_helper() -> None:
    with pytest.raises(DataError, match=r"^x\.json: JSON nested too deeply to read"):
        parse_json(DEEP, "x.json")
    with pytest.raises(DataError, match=r"x\.json: field a\[1\]\.b holds a lone UTF-16 surrogate escape \(\\ud800\)"):
        parse_json('{"a": [1, {"b": "bad \\ud800 text"}]}', "x.json")
    with pytest.raises(DataError, match=r"field a holds a lone UTF-16 surrogate escape \(\\udc00\)"):
        parse_json('{"a": "\\udc00"}', "x.json")
    # a valid pair (an emoji written with ensure_ascii) and an escaped backslash are fine
    assert parse_json('{"a": "\\ud83d\\ude00", "b": "\\\\ud800"}', "x.json") == {"a": "\U0001F600", "b": "\\ud800"}
    assert short_repr(json.loads("[" * 900 + "]" * 900)).startswith("[[[")  # bounded, no RecursionError


def test_squad_json_deep_nesting_and_surrogates(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"deep\.json: JSON nested too deeply"):
        load_qa_examples(write(tmp_path / "deep.json", DEEP))
    document = json.dumps(squad("1.1", qa("q1"), qa("q2"))).replace(
        "What did the works make?", "What \\ud800 make?", 2)
    bad = write(tmp_path / "sur.json", document.replace("What \\ud800 make?", "What did the works make?", 1))
    with pytest.raises(DataError, match=r"sur\.json: field data\[0\]\.paragraphs\[0\]\.qas\[1\]\.question holds a "
                                        r"lone UTF-16 surrogate"):
        load_qa_examples(bad)


def test_jsonl_and_csv_deep_nesting_and_surrogates(tmp_path: Path) -> None:
    good = json.dumps({"id": "a", "question": "What?", "context": CONTEXT,
                       "answers": [{"text": "green bottles", "answer_start": CONTEXT.find("green bottles")}]})
    path = write(tmp_path / "deep.jsonl", good + "\n" + DEEP + "\n")
    with pytest.raises(DataError, match=r"deep\.jsonl: line 2: JSON nested too deeply"):
        load_qa_examples(path)
    path = write(tmp_path / "sur.jsonl", good + "\n" + good.replace('"a"', '"b"').replace("What?", "\\udbff?") + "\n")
    with pytest.raises(DataError, match=r"sur\.jsonl: line 2: field question holds a lone UTF-16 surrogate "
                                        r"escape \(\\udbff\)"):
        load_qa_examples(path)
    cell = json.dumps([{"text": "green bottles\\ud800", "answer_start": 0}]).replace("\\\\", "\\")
    csv_text = f'id,question,context,answers\nr1,What?,"{CONTEXT}","{cell.replace(chr(34), chr(34) * 2)}"\n'
    with pytest.raises(DataError, match=r"sur\.csv: row 1: field 'answers': field \[0\]\.text holds a lone"):
        load_qa_examples(write(tmp_path / "sur.csv", csv_text))


def test_deeply_nested_field_value_is_named_not_recursed(tmp_path: Path) -> None:
    """A 900-level list parses, and the error about it must not recurse when it shows the value."""
    deep = json.loads("[" * 900 + "]" * 900)
    document = squad("1.1", qa("q1", is_impossible=deep))
    with pytest.raises(DataError, match=r"\(id \"q1\"\): field 'is_impossible' is \[\[\[.*use true or false"):
        load_qa_examples(write(tmp_path / "d.json", json.dumps(document)))
    document = squad("1.1", qa("q1", answers=[deep]))
    with pytest.raises(DataError, match=r"answers\[0\] must be an object"):
        load_qa_examples(write(tmp_path / "d.json", json.dumps(document)))
    document = squad("1.1", {**qa("q1"), "id": deep})
    with pytest.raises(DataError, match=r"qas\[0\]: field 'id' is \[\[\["):
        load_qa_examples(write(tmp_path / "d.json", json.dumps(document)))


def test_predict_input_jsonl_pathological(capsys, tmp_path: Path) -> None:
    """Input lines are checked before the model loads, so no run is needed to see the refusal."""
    line = json.dumps({"id": "a", "question": "What?", "context": CONTEXT})
    for name, content, fragments in [
        ("deep.jsonl", line + "\n" + DEEP, ["deep.jsonl line 2: JSON nested too deeply"]),
        ("sur.jsonl", line + "\n" + line.replace("What?", "\\ud800?"),
         ["sur.jsonl line 2: field question holds a lone UTF-16 surrogate escape (\\ud800)"]),
        ("nanid.jsonl", line.replace('"a"', "NaN"), ["nanid.jsonl line 1: field 'id' is nan"]),
    ]:
        path = write(tmp_path / name, content)
        rc, _, err = cli(capsys, "predict", tmp_path / "no-run", "--input", path)
        assert_refused(rc, err, *fragments)


def test_subprocess_deep_json_data_file_exits_2(tmp_path: Path) -> None:
    preds = write(tmp_path / "preds.json", {})
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "qatune", "score", "--data", str(write(tmp_path / "d.json", DEEP)),
                           "--predictions", str(preds)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("qatune: error: ") and "d.json: JSON nested too deeply" in proc.stderr


# ---------------------------------------------------------------------------------------------------
# qatune score: malformed inputs and strict JSON output


def strict_json(text: str) -> Any:
    def refuse(name: str) -> None:
        raise AssertionError(f"non-standard JSON constant {name} in the output")
    return json.loads(text, parse_constant=refuse)


@pytest.mark.parametrize("content, fragments", [
    ({"q1": ["green"]}, ["answer for id 'q1' is not a string (got ['green'])"]),
    ({"q1": None}, ["answer for id 'q1' is not a string (got None)"]),
    ('{"q1": "\\ud800"}', ["predictions file", "preds.json: field q1 holds a lone UTF-16 surrogate"]),
    (DEEP, ["preds.json: JSON nested too deeply"]),
    ("[1, 2]", ["must be a JSON object mapping question id -> value, got a list"]),
], ids=["list", "null", "surrogate", "deep", "not-object"])
def test_score_malformed_predictions(capsys, tmp_path: Path, content: Any, fragments: list[str]) -> None:
    data = write(tmp_path / "dev.json", squad("1.1", qa("q1")))
    preds = write(tmp_path / "preds.json", content)
    rc, out, err = cli(capsys, "score", "--data", data, "--predictions", preds)
    assert_refused(rc, err, *fragments)
    assert out == ""


@pytest.mark.parametrize("value, fragment", [
    ("Infinity", "value for id 'q2' is inf, not a finite number"),
    ("-Infinity", "value for id 'q2' is -inf, not a finite number"),
    ("NaN", "value for id 'q2' is nan, not a finite number"),
    ('"0.5"', "value for id 'q2' is '0.5', not a number"),
    ("[0.5]", "value for id 'q2' is [0.5], not a number"),
])
def test_score_na_probs_must_be_finite_numbers(capsys, tmp_path: Path, value: str, fragment: str) -> None:
    data = write(tmp_path / "dev.json", squad("2.0", qa("q1"), qa("q2", None, is_impossible=True)))
    preds = write(tmp_path / "preds.json", {"q1": "green bottles", "q2": ""})
    na = write(tmp_path / "na.json", '{"q1": 0.1, "q2": %s}' % value)
    rc, out, err = cli(capsys, "score", "--data", data, "--predictions", preds, "--na-probs", na)
    assert_refused(rc, err, "na.json", fragment)
    assert out == ""


def test_score_na_prob_thresh_must_be_finite(capsys, tmp_path: Path) -> None:
    data = write(tmp_path / "dev.json", squad("2.0", qa("q1")))
    preds = write(tmp_path / "preds.json", {"q1": "green bottles"})
    rc, out, err = cli(capsys, "score", "--data", data, "--predictions", preds, "--na-prob-thresh", "nan")
    assert_refused(rc, err, "--na-prob-thresh must be a finite number, got nan")
    assert out == ""


def test_score_output_is_strict_json(capsys, tmp_path: Path) -> None:
    data = write(tmp_path / "dev.json", squad("2.0", qa("q1"), qa("q2", None, is_impossible=True)))
    preds = write(tmp_path / "preds.json", {"q1": "green bottles", "q2": "canal"})
    na = write(tmp_path / "na.json", {"q1": 0.1, "q2": 0.9})
    rc, out, err = cli(capsys, "score", "--data", data, "--predictions", preds, "--na-probs", na)
    assert rc == 0, err
    scored = strict_json(out)
    assert scored["best_f1_thresh"] == 0.1 and scored["best_f1"] == 100.0 and scored["f1"] == 50.0


@pytest.mark.parametrize("qas, fragments", [
    ([{"question": "Q?", "answers": []}], ["qas[0]: field 'id' is None"]),
    ([{"id": "q1", "answers": [{"answer_start": 3}]}], ['qas[0] (id "q1"): field \'answers\' must be a list']),
    ([{"id": "q1", "answers": "green"}], ['(id "q1"): field \'answers\' must be a list', "got 'green'"]),
    ([{"id": ["x"], "answers": []}], ["field 'id' is ['x']"]),
], ids=["no-id", "answer-without-text", "answers-string", "id-list"])
def test_score_malformed_data_file_names_the_record(capsys, tmp_path: Path, qas: list, fragments: list) -> None:
    data = write(tmp_path / "dev.json", {"version": "2.0", "data": [{"title": "T", "paragraphs": [
        {"context": CONTEXT, "qas": qas}]}]})
    preds = write(tmp_path / "preds.json", {"q1": "x"})
    rc, _, err = cli(capsys, "score", "--data", data, "--predictions", preds)
    assert_refused(rc, err, "dev.json: data[0] (title \"T\") paragraphs[0]", *fragments)


# ---------------------------------------------------------------------------------------------------
# Defect 10: the declared version decides v1.1 vs v2.0; [] in a v1.1 file is refused, naming the record


def test_score_v11_file_with_one_empty_answers_is_refused(capsys, tmp_path: Path) -> None:
    data = write(tmp_path / "dev.json", squad("1.1", qa("q1"), qa("q2", None)))
    preds = write(tmp_path / "preds.json", {"q1": "green bottles", "q2": ""})
    rc, out, err = cli(capsys, "score", "--data", data, "--predictions", preds)
    assert_refused(rc, err, 'dev.json: data[0] (title "Pellory") paragraphs[0] qas[1] (id "q2")',
                   'has no answers (answers: [])', 'declares "version": "1.1"', 'declare "version": "2.0"')
    assert out == ""


def test_score_version_follows_the_declaration(capsys, tmp_path: Path) -> None:
    preds = write(tmp_path / "preds.json", {"q1": "green bottles", "q2": "canal"})
    # declared 1.1, every question answerable: v1.1 keys (no threshold, no HasAns/NoAns)
    v1 = write(tmp_path / "v1.json", squad("1.1", qa("q1"), qa("q2", "canal")))
    rc, out, _ = cli(capsys, "score", "--data", v1, "--predictions", preds)
    assert rc == 0 and strict_json(out) == {"exact_match": 100.0, "f1": 100.0}
    # na-probs make no sense for a declared-1.1 file unless v2 rules are asked for
    na = write(tmp_path / "na.json", {"q1": 0.1, "q2": 0.2})
    rc, _, err = cli(capsys, "score", "--data", v1, "--predictions", preds, "--na-probs", na)
    assert_refused(rc, err, "--na-probs is for SQuAD v2.0 scoring", "declares version 1.1", "--version 2.0")
    rc, out, _ = cli(capsys, "score", "--data", v1, "--predictions", preds, "--na-probs", na, "--version", "2.0")
    assert rc == 0 and "best_f1_thresh" in strict_json(out)
    # declared v2.0 with only answerable questions: v2 keys
    v2 = write(tmp_path / "v2.json", squad("v2.0", qa("q1"), qa("q2", "canal")))
    rc, out, _ = cli(capsys, "score", "--data", v2, "--predictions", preds)
    assert rc == 0 and strict_json(out)["HasAns_total"] == 2 and "NoAns_total" not in strict_json(out)


def test_evaluate_pipeline_sees_a_declared_v11_file_as_v11(tmp_path: Path) -> None:
    """The loader that training and `qatune evaluate` use reports the declared version, and refuses the
    unanswerable record rather than switching the whole file to v2.0 scoring with a tuned threshold."""
    examples, report = load_qa_examples(write(tmp_path / "ok.json", squad("1.1", qa("q1"), qa("q2", "canal"))))
    assert report.version == "1.1" and len(examples) == 2
    with pytest.raises(DataError, match=r'qas\[1\] \(id "q2"\): the question has no answers'):
        load_qa_examples(write(tmp_path / "bad.json", squad("1.1", qa("q1"), qa("q2", None))))
    # without a declared version the old rule stands, and the note says why the data became v2.0
    _, report = load_qa_examples(write(tmp_path / "undeclared.json", squad(None, qa("q1"), qa("q2", None))))
    assert report.version == "2.0"
    assert any("answers [] and no is_impossible flag were treated as unanswerable" in n for n in report.notes)


# ---------------------------------------------------------------------------------------------------
# Inference options (evaluate / predict / qatune.load / answer_batch / bench / export): checked with
# qatune.ranges before anything loads, from the CLI and the Python API alike; JSON output is strict


@pytest.mark.parametrize("argv, fragments", [
    (["--null-threshold", "nan"], ["'null_threshold' (--null-threshold): nan is out of range", "a finite number"]),
    (["--null-threshold=-inf"], ["(--null-threshold): -inf is out of range"]),
    (["--batch-size", "0"], ["'batch_size' (--batch-size): 0 is out of range; it must be >= 1"]),
    (["--max-eval-samples", "0"], ["'max_eval_samples' (--max-eval-samples): 0 is out of range; it must be >= 1"]),
], ids=["nan", "-inf", "batch-0", "samples-0"])
def test_evaluate_refuses_nonsense_options_and_writes_nothing(capsys, tmp_path: Path, tiny_lora_run: Path,
                                                               argv: list[str], fragments: list[str]) -> None:
    out = tmp_path / "eval"
    rc, stdout, err = cli(capsys, "evaluate", tiny_lora_run, "--data", SAMPLE / "dev.json", "--output", out,
                          "--no-progress", *argv)
    assert_refused(rc, err, *fragments)
    assert stdout == "" and not out.exists()


@pytest.mark.parametrize("argv, fragments", [
    (["--null-threshold", "nan"], ["'null_threshold' (--null-threshold): nan is out of range"]),
    (["--batch-size", "0"], ["'batch_size' (--batch-size): 0 is out of range; it must be >= 1"]),
    (["--batch-size", "-4", "--input", "{jsonl}"], ["(--batch-size): -4 is out of range"]),
    (["--null-threshold", "inf", "--input", "{jsonl}"], ["(--null-threshold): inf is out of range"]),
], ids=["nan", "batch-0", "batch-negative-input", "inf-input"])
def test_predict_refuses_nonsense_options(capsys, tmp_path: Path, tiny_lora_run: Path, argv: list[str],
                                          fragments: list[str]) -> None:
    jsonl = write(tmp_path / "q.jsonl", json.dumps({"question": "What did it make?", "context": CONTEXT}) + "\n")
    argv = [a.replace("{jsonl}", str(jsonl)) for a in argv]
    mode = [] if "--input" in argv else ["--question", "What did it make?", "--context", CONTEXT]
    rc, stdout, err = cli(capsys, "predict", tiny_lora_run, *mode, *argv)
    assert_refused(rc, err, *fragments)
    assert stdout == ""


def test_python_api_inference_options_are_checked(tmp_path: Path, tiny_lora_run: Path) -> None:
    out = tmp_path / "eval"
    with pytest.raises(ConfigError, match=r"'null_threshold' \(--null-threshold\): nan is out of range"):
        qatune.evaluate(str(tiny_lora_run), str(SAMPLE / "dev.json"), output=str(out), null_threshold=float("nan"))
    with pytest.raises(ConfigError, match=r"'batch_size' \(--batch-size\): 0 is out of range"):
        qatune.evaluate(str(tiny_lora_run), str(SAMPLE / "dev.json"), output=str(out), batch_size=0)
    with pytest.raises(ConfigError, match=r"'max_eval_samples' \(--max-eval-samples\): 2\.5 is not a whole number"):
        qatune.evaluate(str(tiny_lora_run), str(SAMPLE / "dev.json"), output=str(out), max_eval_samples=2.5)
    assert not out.exists()
    with pytest.raises(ConfigError, match=r"'null_threshold' \(--null-threshold\): inf is out of range"):
        qatune.load(str(tiny_lora_run), null_threshold=float("inf"))
    with pytest.raises(ConfigError, match=r"'precision' \(--precision\): 'fp16' is not a precision"):
        qatune.load(str(tiny_lora_run), precision="fp16")
    pipe = qatune.load(str(tiny_lora_run), device="cpu", precision="fp32")
    pair = [("What did it make?", CONTEXT)]
    for kwargs, message in [({"batch_size": 0}, r"'batch_size' \(--batch-size\): 0 is out of range"),
                            ({"batch_size": "8"}, r"'batch_size' \(--batch-size\): '8' is not a whole number"),
                            ({"top_k": True}, r"'top_k' \(--top-k\): True is not a whole number")]:
        with pytest.raises(ConfigError, match=message):
            pipe.answer_batch(pair, **kwargs)
    # the happy path: in-range values answer
    best = pipe.answer_batch(pair, batch_size=1, top_k=2)[0]
    assert len(best) == 2 and all(0.0 <= a.score <= 1.0 for a in best)


@pytest.mark.parametrize("key, value, fragment", [
    ("n_best", 0, "run config (qatune.yaml) key 'n_best': 0 is out of range; it must be >= 1"),
    ("max_answer_length", "long", "run config (qatune.yaml) key 'max_answer_length': 'long' is not a whole number"),
    ("doc_stride", 500, "run config (qatune.yaml) key 'doc_stride': 500 is out of range; it must be in [0, 122]"),
    ("null_threshold", float("nan"), "run config (qatune.yaml) key 'null_threshold': nan is out of range"),
])
def test_run_config_decoding_settings_are_checked(key: str, value: Any, fragment: str) -> None:
    """A hand-edited qatune.yaml (n_best: 0 answers nothing) is refused when the pipeline is built."""
    from qatune.tasks.extractive_qa.predictor import QAPipeline

    with pytest.raises(ConfigError) as info:
        QAPipeline(runner=None, tokenizer=None, run_config={"max_seq_length": 128, key: value})  # type: ignore[arg-type]
    assert fragment in str(info.value)


def test_evaluate_happy_path_output_is_strict_json(capsys, tmp_path: Path, tiny_lora_run: Path) -> None:
    out = tmp_path / "eval"
    rc, stdout, err = cli(capsys, "evaluate", tiny_lora_run, "--data", SAMPLE / "dev.json", "--output", out,
                          "--no-progress", "--batch-size", "1", "--max-eval-samples", "3", "--null-threshold", "0.5")
    assert rc == 0, err
    metrics = strict_json(stdout)
    assert metrics["eval_questions"] == 3
    assert strict_json((out / "metrics.json").read_text()) == metrics


def test_print_json_refuses_non_finite_numbers(capsys) -> None:
    from qatune.cli.common import print_json

    with pytest.raises(ValueError, match=r"\['parity'\]\['tolerance'\] is inf \(not a finite number\); this is a qatune bug"):
        print_json({"output": "x", "parity": {"tolerance": float("inf")}})
    with pytest.raises(ValueError, match=r"\[1\] is nan"):
        print_json([1.0, float("nan")])
    assert capsys.readouterr().out == ""
    print_json({"f1": 1.5, "name": "é"})
    assert json.loads(capsys.readouterr().out) == {"f1": 1.5, "name": "é"}


def test_export_and_bench_refuse_nonsense_numbers(capsys, tmp_path: Path, tiny_lora_run: Path) -> None:
    out = tmp_path / "export"
    rc, _, err = cli(capsys, "export", tiny_lora_run, "--output", out, "--tolerance", "inf")
    assert_refused(rc, err, "--tolerance must be a finite number >= 0, got inf")
    assert not out.exists()
    rc, _, err = cli(capsys, "bench", tiny_lora_run, "--data", SAMPLE / "dev.json", "--backends", "torch-fp32",
                     "--threads", "-1")
    assert_refused(rc, err, "'threads' (--threads): -1 is out of range; it must be >= 1")


def test_train_with_a_dataclass_built_directly_is_validated(tmp_path: Path) -> None:
    from qatune.config import TrainConfig

    out = tmp_path / "run"
    with pytest.raises(ConfigError, match=r"config key 'warmup_ratio': 5\.0 is out of range; it must be in \[0, 1\]"):
        qatune.train(TrainConfig(train=str(SAMPLE / "train.json"), output=str(out), warmup_ratio=5))
    with pytest.raises(ConfigError, match=r"config key 'lora\.r': 0 is out of range"):
        qatune.train(TrainConfig(train=str(SAMPLE / "train.json"), output=str(out), method_options={"lora": {"r": 0}}))
    with pytest.raises(ConfigError, match=r"config key 'epochs': 'two' is not a valid int"):
        qatune.train(TrainConfig(train=str(SAMPLE / "train.json"), output=str(out), epochs="two"))  # type: ignore[arg-type]
    assert not out.exists()
