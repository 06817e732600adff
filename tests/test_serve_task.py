"""A task defined outside qatune is served at its own route: ``POST /v1/<Task.route>``, items checked by its
``parse_request``, answers from its predictor through ``format_response``, with the server's limits and
errors. The task is tests/test_custom_task.py's digit classifier; the run is trained here on the tiny model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from test_custom_task import DigitTask, texts

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

import qatune  # noqa: E402
from qatune.serve.app import create_app  # noqa: E402
from qatune.tasks import register_task, unregister_task  # noqa: E402


class ClassifyDigits(DigitTask):
    route = "classify"

    def format_response(self, prediction: Any) -> Any:
        return {"label": prediction["label"], "probability": round(prediction["probability"], 6)}


@pytest.fixture(scope="module")
def predictor(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    import torch

    register_task("has_digit", ClassifyDigits)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        folder = tmp_path_factory.mktemp("serve-task")
        train = folder / "train.jsonl"
        train.write_text("".join(json.dumps(r) + "\n" for r in texts(24, seed=1)))
        qatune.train({"task": "has_digit", "model": str(tiny_model_dir), "method": "full", "train": str(train),
                      "output": str(folder / "run"), "epochs": 1, "batch_size": 8, "max_seq_length": 32,
                      "tracking": False, "do_eval": False}, progress=False)
        yield qatune.load(str(folder / "run"), device="cpu")
    finally:
        torch.set_num_threads(threads)
        unregister_task("has_digit")


TEXTS = ["the cat sat 4 times", "a slow river", "blue 9 house"]


def expected(predictor: Any, items: list[dict[str, Any]]) -> list[Any]:
    return [predictor.task.format_response(p) for p in predictor.predict_batch(items)]


def test_the_task_route_answers_one_item_and_many(predictor: Any) -> None:
    app = create_app(predictor, max_questions=3)
    with TestClient(app) as client:
        one = client.post("/v1/classify", json={"text": TEXTS[0]})
        assert one.status_code == 200, one.text
        body = one.json()
        assert body.pop("took_ms") >= 0
        assert body == expected(predictor, [{"text": TEXTS[0]}])[0]
        many = client.post("/v1/classify", json={"items": [{"text": t} for t in TEXTS]})
        assert many.status_code == 200, many.text
        assert many.json()["results"] == expected(predictor, [{"text": t} for t in TEXTS])
        assert client.post("/v1/answer", json={"question": "q", "context": "c"}).status_code == 404
        assert "/v1/classify" in client.get("/openapi.json").json()["paths"]
        stats = client.get("/v1/model").json()["stats"]
        assert stats["jobs"] == 2 and stats["questions"] == 4  # both requests went through the batcher


def error(response: Any) -> dict[str, Any]:
    return response.json()["error"]


def test_items_are_checked_by_the_task_and_the_limits_hold(predictor: Any) -> None:
    app = create_app(predictor, max_questions=3, max_context_chars=40, max_request_chars=60, max_body_bytes=2000,
                     max_request_windows=2)
    with TestClient(app) as client:
        post = lambda body: client.post("/v1/classify", json=body)  # noqa: E731
        bad = post({"text": "  "})
        assert bad.status_code == 422 and error(bad)["message"] == "request: 'text' must be a non-empty string"
        bad = post({"items": [{"text": "a 1"}, {"text": 3}]})
        assert bad.status_code == 422 and error(bad)["field"] == "items[1]"
        assert "items[1]: 'text' must be a non-empty string" in error(bad)["message"]
        assert error(post({"items": []}))["code"] == "empty_field"
        assert error(post({"items": [{"text": "a"}], "text": "b"}))["code"] == "ambiguous"
        assert error(post(["a"]))["code"] == "wrong_type"
        assert error(post({"items": ["a"]}))["field"] == "items[0]"

        too_many = post({"items": [{"text": "a"}] * 4})
        assert too_many.status_code == 413 and "at most 3 per request (--max-questions)" in error(too_many)["message"]
        too_long = post({"items": [{"text": "a"}, {"text": "x" * 41}]})
        assert too_long.status_code == 413 and error(too_long)["field"] == "items[1].text"
        too_much = post({"items": [{"text": "x" * 35}, {"text": "y" * 35}]})
        assert too_much.status_code == 413 and error(too_much)["code"] == "too_much_work"
        windows = post({"items": [{"text": "a 1"}] * 3})  # one item is one window: 3 > --max-request-windows 2
        assert windows.status_code == 413 and "--max-request-windows 2" in error(windows)["message"]
        body = client.post("/v1/classify", content=b"{" + b" " * 2100 + b"}")
        assert body.status_code == 413 and error(body)["code"] == "body_too_large"
        assert client.post("/v1/classify", content=b"{nope").status_code == 400
        surrogate = client.post("/v1/classify", content=b'{"text": "a \\ud800"}')
        assert surrogate.status_code == 422 and error(surrogate)["code"] == "invalid_text"
        assert post({"text": "fine 2"}).status_code == 200  # the server still answers after every refusal


def test_a_server_that_is_not_running_answers_503(predictor: Any) -> None:
    client = TestClient(create_app(predictor))  # no lifespan: the batcher never started
    response = client.post("/v1/classify", json={"text": "a 1"})
    assert response.status_code == 503 and error(response)["code"] == "shutting_down"
