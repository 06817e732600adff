"""The classification task (text + tabular columns) end to end on a tiny random BERT: every method, each
fusion, the saved head and transform, predict's request forms, metrics against scikit-learn, and each bad
input named by file, row and column.

The data is synthetic (written here): the label is decided by a keyword in the title or body, a numeric
column and a categorical column carry a weaker signal, dates come in two formats, some cells are empty.
"""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import assert_clean_error, cli

import qatune
from qatune.errors import ConfigError, DataError, ModelError
from qatune.methods import registry
from qatune.tasks import get_task

WORDS = "the a cat dog sat ran on under blue green house tree river stone quick slow".split()
KEYWORD = {"open": "python", "off topic": "recipe", "not constructive": "best"}
RECIPE = """date_formats: ["%m/%d/%Y %H:%M:%S", "%Y-%m-%d"]
derived:
  AccountAgeDays: {op: days_between, start: OwnerCreationDate, end: PostCreationDate}
  NumTags: {op: count_nonempty, columns: [Tag1, Tag2]}
  TitleWords: {op: word_count, column: Title}
"""


def rows(n: int = 240, seed: int = 0) -> list[dict[str, str]]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        label = list(KEYWORD)[i % 3]
        words = [rng.choice(WORDS) for _ in range(7)] + [KEYWORD[label]]
        rng.shuffle(words)
        created = f"0{1 + i % 9}/1{i % 9}/2010 10:00:00" if i % 2 else f"2010-0{1 + i % 9}-2{i % 9}"
        out.append({"PostId": str(100 + i), "PostCreationDate": "12/01/2011 00:00:00", "OwnerCreationDate": created,
                    "Rep": "" if i % 17 == 0 else str(rng.randint(-3, 900) + (500 if label == "open" else 0)),
                    "Title": " ".join(words[:4]), "Body": " ".join(words[4:]),
                    "Tag1": rng.choice(["py", "js", "c", "go"]), "Tag2": "" if i % 4 else "x", "OpenStatus": label})
    return out


def write_csv(path: Path, records: list[dict[str, str]]) -> Path:
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(records[0]))
        writer.writeheader()
        writer.writerows(records)
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("so-like")
    (folder / "recipe.yaml").write_text(RECIPE)
    return write_csv(folder / "data.csv", rows()), folder / "recipe.yaml"


def section(recipe: Path, **overrides: Any) -> dict[str, Any]:
    return {"text_columns": "Title,Body", "label_column": "OpenStatus", "numeric_columns": "Rep,AccountAgeDays,NumTags,"
            "TitleWords", "categorical_columns": "Tag1", "log_scale": "Rep", "split_column": "PostId",
            "recipe": str(recipe), **overrides}


def train(model: Path, data: tuple[Path, Path], out: Path, method: str = "full", epochs: int = 3,
          lr: float = 3e-3, **classify: Any) -> Any:
    csv_file, recipe = data
    return qatune.train({"task": "classify", "model": str(model), "method": method, "train": str(csv_file),
                         "eval": str(csv_file), "output": str(out), "epochs": epochs, "batch_size": 8,
                         "learning_rate": lr, "max_seq_length": 32, "tracking": False,
                         "classify": section(recipe, **classify)}, progress=False)


@pytest.fixture(scope="module")
def concat_run(tiny_model_dir: Path, data: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch

    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("cls") / "full-concat"
    train(tiny_model_dir, data, out)
    return out


def test_a_trained_run_evaluates_reloads_and_predicts_the_same(concat_run: Path, data: tuple[Path, Path],
                                                               tmp_path: Path) -> None:
    metrics = json.loads((concat_run / "metrics.json").read_text())
    assert metrics["accuracy"] >= 90.0 and metrics["eval_examples"] == 24  # PostId % 10 == 1
    assert set(metrics["per_class"]) == set(KEYWORD) and "roc_auc" not in metrics  # 3 classes: no AUC
    matrix = np.array(metrics["confusion_matrix"]["rows_gold_columns_predicted"])
    assert matrix.sum() == 24 and np.trace(matrix) == round(metrics["accuracy"] * 24 / 100)
    assert (concat_run / "confusion_matrix.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for name in ("classifier_head.safetensors", "model.safetensors", "predictions.json"):
        assert (concat_run / name).is_file(), name
    manifest = json.loads((concat_run / ".qatune-files.json").read_text())
    assert "classifier_head.safetensors" in json.dumps(manifest)
    state = __import__("yaml").safe_load((concat_run / "qatune.yaml").read_text())["classify_state"]
    assert state["labels"] == sorted(KEYWORD) and state["vocab"] == [sorted(["py", "js", "c", "go"],
                                                                            key=state["vocab"][0].index)]
    assert len(state["numeric_mean"]) == 4 and state["recipe"]["derived"]["NumTags"]["op"] == "count_nonempty"

    # evaluate on the test split (PostId % 10 == 0) from the saved run; same answers through qatune.load
    test_metrics = qatune.evaluate(str(concat_run), str(data[0]), output=str(tmp_path / "ev"), split="test",
                                   progress=False)
    assert test_metrics["eval_examples"] == 24 and test_metrics["accuracy"] >= 80.0
    saved = json.loads((tmp_path / "ev" / "predictions.json").read_text())
    predictor = qatune.load(str(concat_run))
    test_rows = [r for r in rows() if int(r["PostId"]) % 10 == 0]
    # the text columns by name (TitleWords is derived from the title alone), the recipe's inputs as features
    requests = [{"Title": r["Title"], "Body": r["Body"],
                 "features": {k: r[k] for k in ("Rep", "Tag1", "Tag2", "OwnerCreationDate", "PostCreationDate")}}
                for r in test_rows]
    answers = predictor.predict_batch(requests, batch_size=5)
    ids = [f"row-{int(r['PostId']) - 99}" for r in test_rows]
    assert [a["label"] for a in answers] == [saved[i]["label"] for i in ids]
    for answer, i in zip(answers, ids, strict=True):
        assert answer["probabilities"] == pytest.approx(saved[i]["probabilities"], abs=1e-5)


def test_request_forms_cli_string_and_json_give_the_same_answer(concat_run: Path) -> None:
    predictor = qatune.load(str(concat_run))
    task = predictor.task
    as_string = task.parse_request({"text": "cat python tree", "features": "Rep=700,Tag1=py"}, "request")
    as_json = task.parse_request({"text": "cat python tree", "features": {"Rep": 700, "Tag1": "py"}}, "request")
    assert as_string.numeric[0] == as_json.numeric[0] == 700.0 and as_string.categorical == ["py"]
    assert as_string.numeric[1] != as_string.numeric[1]  # no dates given: AccountAgeDays missing (imputed, flagged)
    one, two = predictor.predict_batch([as_string, {"text": "cat python tree", "features": '{"Rep": 700, "Tag1": "py"}'}])
    assert one == two and one["label"] in KEYWORD and sum(one["probabilities"].values()) == pytest.approx(1, abs=1e-5)
    assert task.format_response(one) == one
    with pytest.raises(DataError, match=r"item 0: 'features': unknown column\(s\) Reputation"):
        predictor.predict_batch([{"text": "x", "features": "Reputation=3"}])
    with pytest.raises(DataError, match=r"request: 'features': 'Rep' is not NAME=VALUE"):
        task.parse_request({"text": "x", "features": "Rep"}, "request")
    with pytest.raises(DataError, match="request: column 'Rep': 'many' is not a number"):
        task.parse_request({"text": "x", "features": "Rep=many"}, "request")
    with pytest.raises(DataError, match="request: 'text' must be a non-empty string"):
        task.parse_request({"text": "  ", "features": "Rep=1"}, "request")
    with pytest.raises(DataError, match=r"request: unknown field\(s\) question"):
        task.parse_request({"question": "x"}, "request")
    # "text" fills the first text column, so TitleWords counts its words; AccountAgeDays (no dates) is left out
    assert task.to_request(as_json) == {"text": "cat python tree", "features": {"Rep": 700.0, "NumTags": 1.0,
                                                                                "TitleWords": 3.0, "Tag1": "py"}}


@pytest.mark.parametrize("method", registry.names())
def test_every_method_trains_saves_and_reloads_with_its_head(method: str, tiny_model_dir: Path,
                                                             data: tuple[Path, Path], tmp_path: Path,
                                                             one_thread: None) -> None:
    out = tmp_path / method
    options = {"peft": {"peft_type": "LoraConfig", "r": 2, "target_modules": ["query", "value"]}} \
        if method == "peft" else {}
    csv_file, recipe = data
    result = qatune.train({"task": "classify", "model": str(tiny_model_dir), "method": method, "train": str(csv_file),
                           "eval": str(csv_file), "output": str(out), "epochs": 1, "batch_size": 16,
                           "max_seq_length": 24, "tracking": False, "max_train_samples": 48,
                           "classify": section(recipe), **options}, progress=False)
    assert 0 < result.metrics["trainable_params"] <= result.metrics["total_params"]
    saved = json.loads((out / "predictions.json").read_text())
    reloaded = qatune.evaluate(str(out), str(csv_file), progress=False)  # validation split, as in training
    assert reloaded["accuracy"] == pytest.approx(result.metrics["accuracy"])
    assert reloaded["log_loss"] == pytest.approx(result.metrics["log_loss"], abs=1e-4)
    assert len(saved) == reloaded["eval_examples"] == 24


@pytest.mark.parametrize("fusion", ["none", "concat", "text"])
def test_each_fusion_feeds_the_columns_its_way(fusion: str, tiny_model_dir: Path, data: tuple[Path, Path],
                                              tmp_path: Path, one_thread: None,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / fusion
    train(tiny_model_dir, data, out, method="lora", epochs=1, fusion=fusion)
    predictor = qatune.load(str(out))
    task, module = predictor.task, predictor.runner.span_model
    width = module.classifier.in_features
    assert width == (32 + 2 * 4 + 4 if fusion == "concat" else 32)  # pooled text [+ 4 numbers, 4 flags, Tag1: 4]
    assert [e.name for e in task.export_signature.extra_inputs] == (["numeric", "categorical"] if fusion == "concat"
                                                                    else [])
    example = task.parse_request({"text": "blue house", "features": "Rep=5,Tag1=go"}, "r")
    features = task.features([example], predictor.tokenizer, None, 64, training=False)
    decoded = predictor.tokenizer.decode(features.input_ids[0])
    assert ("tag1 : go" in decoded) == (fusion == "text"), decoded
    # columns written as text that fill most of a short budget get a note while training, not at inference
    capsys.readouterr()
    task.features([example] * 3, predictor.tokenizer, None, 64, training=True)
    task.features([example] * 3, predictor.tokenizer, None, 8, training=False)
    assert "fusion text" not in capsys.readouterr().err
    task.features([example] * 3, predictor.tokenizer, None, 8, training=True)
    note = capsys.readouterr().err
    assert ("fusion text: the tabular columns written as text take" in note) == (fusion == "text"), note
    if fusion == "text":
        assert "of the 8 tokens (median of 3 rows)" in note and "use fusion concat" in note
    task.features([example] * 3, predictor.tokenizer, None, 8, training=True)  # training's second split
    assert "fusion text" not in capsys.readouterr().err  # said once
    feeds = task.feeds(features, [0], predictor.tokenizer.pad_token_id)
    assert ("categorical" in feeds) == (fusion == "concat")
    if fusion == "concat":
        assert feeds["categorical"].tolist() == [[task.state["vocab"][0].index("go") + 1]]
        assert feeds["numeric"].shape == (1, 8) and feeds["numeric"][0, 4:].tolist() == [0.0, 1.0, 0.0, 0.0]


def test_binary_target_class_weights_and_roc_auc(tiny_model_dir: Path, data: tuple[Path, Path], tmp_path: Path,
                                                 one_thread: None) -> None:
    out = tmp_path / "binary"
    result = train(tiny_model_dir, data, out, epochs=2, positive_label="open", class_weights="balanced")
    state = __import__("yaml").safe_load((out / "qatune.yaml").read_text())["classify_state"]
    assert state["labels"] == ["not_open", "open"]
    assert state["class_weights"] == pytest.approx([192 / (2 * 128), 192 / (2 * 64)])  # 2:1 train classes
    assert 0.0 <= result.metrics["roc_auc"] <= 1.0 and result.metrics["per_class"]["open"]["support"] == 8


def test_metrics_match_scikit_learn() -> None:
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, log_loss, roc_auc_score

    from qatune.tasks.classification.metrics import classification_metrics, softmax

    rng = np.random.default_rng(0)
    logits = rng.normal(size=(200, 3)).astype(np.float32)
    gold = rng.integers(0, 3, size=200)
    m = classification_metrics(logits, gold, ["a", "b", "c"])
    probs = softmax(logits.astype(np.float64))
    assert m["accuracy"] == pytest.approx(100 * accuracy_score(gold, probs.argmax(1)))
    assert m["macro_f1"] == pytest.approx(100 * f1_score(gold, probs.argmax(1), average="macro"))
    assert m["log_loss"] == pytest.approx(log_loss(gold, probs), rel=1e-6)
    assert m["confusion_matrix"]["rows_gold_columns_predicted"] == confusion_matrix(gold, probs.argmax(1)).tolist()
    binary = rng.normal(size=(300, 2))
    binary[:5] = binary[5:10]  # ties
    y = rng.integers(0, 2, size=300)
    b = classification_metrics(binary, y, ["no", "yes"])
    assert b["roc_auc"] == pytest.approx(roc_auc_score(y, softmax(binary)[:, 1]))


def test_recipe_parses_both_date_formats_and_derives_columns() -> None:
    from qatune.data.tabular import load_recipe, recipe_from_dict

    recipe = recipe_from_dict(__import__("yaml").safe_load(RECIPE), "test")
    out = recipe.apply({"OwnerCreationDate": "2010-01-01", "PostCreationDate": "01/03/2010 12:00:00",
                        "Tag1": "py", "Tag2": " ", "Title": "three short words"}, "f.csv: row 1")
    assert out["AccountAgeDays"] == pytest.approx(2.5) and out["NumTags"] == 1 and out["TitleWords"] == 3
    with pytest.raises(DataError, match=r"f.csv: row 7: column 'OwnerCreationDate': date '2010.01.01' matches none"):
        recipe.apply({"OwnerCreationDate": "2010.01.01", "PostCreationDate": "2010-01-02"}, "f.csv: row 7")
    with pytest.raises(ConfigError, match="derived column 'X': 'op' must be one of"):
        recipe_from_dict({"derived": {"X": {"op": "mean"}}}, "r")
    with pytest.raises(ConfigError, match=r"\(word_count\) takes column; missing column"):
        recipe_from_dict({"derived": {"X": {"op": "word_count"}}}, "r")
    with pytest.raises(ConfigError, match="recipe nowhere.yaml: no such file"):
        load_recipe("nowhere.yaml")


def _broken(data: tuple[Path, Path], tmp_path: Path, row: int, column: str, value: str) -> Path:
    records = rows()
    records[row][column] = value
    return write_csv(tmp_path / "broken.csv", records)


@pytest.mark.parametrize(("row", "column", "value", "message"), [
    (4, "Rep", "12k", r"broken.csv: row 5: column 'Rep': '12k' is not a number"),
    (6, "OwnerCreationDate", "31.12.2009", r"broken.csv: row 7: column 'OwnerCreationDate': date '31.12.2009' "
                                           r"matches none of the formats"),
    (2, "Title", "", None),  # the body still holds text: not an error
    (8, "PostId", "abc", r"broken.csv: row 9: column 'PostId': 'abc' is not a number"),
])
def test_bad_cells_name_file_row_and_column(row: int, column: str, value: str, message: str | None,
                                            data: tuple[Path, Path], tmp_path: Path) -> None:
    task = get_task("classify").bind({"classify": section(data[1])})
    broken = _broken(data, tmp_path, row, column, value)
    if message is None:
        examples, _ = task.read(str(broken), None)
        assert len(examples) == 192
        return
    with pytest.raises(DataError, match=message):
        task.read(str(broken), None)


def test_empty_text_missing_column_and_unseen_label_are_refused(data: tuple[Path, Path], tmp_path: Path,
                                                                 tiny_model_dir: Path, capsys: Any) -> None:
    task = get_task("classify").bind({"classify": section(data[1])})
    records = rows()
    records[3]["Title"] = records[3]["Body"] = " "
    with pytest.raises(DataError, match=r"broken.csv: row 4: column\(s\) Title, Body: the text is empty"):
        task.read(str(write_csv(tmp_path / "broken.csv", records)), None)
    with pytest.raises(DataError, match=r"missing column\(s\) Score"):
        get_task("classify").bind({"classify": section(data[1], numeric_columns="Score", log_scale="")}).read(str(data[0]), None)
    # an evaluation label the model never saw: refused before training (exit 2, one line), naming where it is
    records = rows()
    records[11]["OpenStatus"] = "too localized"  # PostId 111: the validation split
    evalfile = write_csv(tmp_path / "eval.csv", records)
    config = tmp_path / "cls.yaml"
    config.write_text(__import__("yaml").safe_dump({
        "task": "classify", "model": str(tiny_model_dir), "method": "full", "train": str(data[0]),
        "eval": str(evalfile), "output": str(tmp_path / "never"), "tracking": False,
        "classify": {"text_columns": ["Title", "Body"], "label_column": "OpenStatus", "split_column": "PostId"}}))
    rc, _, err = cli(capsys, "train", "--config", config)
    assert_clean_error(rc, err, "eval.csv: row 12: column 'OpenStatus': label 'too localized' is not one the model "
                       "was trained on")
    assert not (tmp_path / "never").exists()


def test_options_are_checked_with_the_key_named() -> None:
    from qatune.config import config_from_dict

    cfg = config_from_dict({"task": "classify", "text_columns": "Title, Body", "fusion": "text"})
    assert cfg.task_options["text_columns"] == ["Title", "Body"] and cfg.task_options["fusion"] == "text"
    for bad, message in [({"fusion": "early"}, "classify.fusion': 'early' is not one of none, concat, text"),
                         ({"log_scale": "Rep"}, "classify.log_scale': 'Rep' is not one of numeric_columns"),
                         ({"split_column": "Id", "test_split": "1"}, "share bucket 1"),
                         ({"class_weights": "1,x"}, "class_weights': '1,x' is not none, balanced"),
                         ({"numeric_columns": "A", "categorical_columns": "A"}, r"column\(s\) A named twice")]:
        with pytest.raises(ConfigError, match=message):
            config_from_dict({"task": "classify", "classify": bad})


def test_keep_best_puts_back_the_epoch_with_the_lowest_validation_loss() -> None:
    import torch

    from qatune.tasks.base import EvalResult
    from qatune.training.trainer import _BestEpoch

    module = torch.nn.Linear(2, 1)
    best = _BestEpoch(module)
    with torch.no_grad():
        module.weight.fill_(1.0)
    best.offer(1, EvalResult({"eval_loss": 0.5}))
    with torch.no_grad():
        module.weight.fill_(2.0)
    best.offer(2, EvalResult({"eval_loss": 0.7}))  # worse: not kept
    kept = best.restore(EvalResult({"eval_loss": 0.7}), last_epoch=2)
    assert best.epoch == 1 and kept.metrics["eval_loss"] == 0.5 and module.weight.tolist() == [[1.0, 1.0]]


def test_a_trained_run_without_its_head_file_is_refused(concat_run: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(concat_run, copy)
    (copy / "classifier_head.safetensors").unlink()
    with pytest.raises(ModelError, match="classifier_head.safetensors is missing"):
        qatune.load(str(copy))
