"""Tests for the HTTP server (qatune.serve): answers, every bad input, API keys, long contexts, micro-batching
and graceful shutdown. A tiny LoRA run is trained once for the module (a few seconds on CPU)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

fastapi = pytest.importorskip("fastapi", reason="the server tests need the 'serve' extra (fastapi, uvicorn, httpx)")
uvicorn = pytest.importorskip("uvicorn", reason="the server tests need the 'serve' extra (fastapi, uvicorn, httpx)")
httpx = pytest.importorskip("httpx", reason="the server tests need the 'serve' extra (fastapi, uvicorn, httpx)")

from fastapi.testclient import TestClient  # noqa: E402

import qatune  # noqa: E402
from qatune.serve import BatcherClosed, MicroBatcher, ServeSettings, create_app  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SAMPLE = Path(qatune.__file__).resolve().parent / "resources" / "sample"

FILLER = "The committee met again on Tuesday to discuss the budget for the coming year. "
TAIL = "Much later, the old captain buried the treasure on Zanzibar island."


def long_context(chars: int = 20_000) -> str:
    """~``chars`` characters of filler with the only mention of the answer in the last sentence."""
    return FILLER * (chars // len(FILLER)) + TAIL


# -- fixtures -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def run_dir(tiny_lora_run: Path) -> Path:
    return tiny_lora_run


@pytest.fixture(scope="module")
def pipeline(run_dir: Path) -> Any:
    return qatune.load(str(run_dir), device="cpu", precision="fp32")  # fp32: same answers whatever the batch


@pytest.fixture(scope="module")
def client(pipeline: Any, run_dir: Path) -> Any:
    app = create_app(pipeline, run_dir=run_dir, max_questions=4, max_context_chars=30_000,
                     max_question_chars=200)
    with TestClient(app) as c:
        yield c


def same(got: list[dict[str, Any]], expected: list[Any]) -> bool:
    """Server answers equal the pipeline's: same spans, scores equal up to float noise."""
    exp = [e.to_dict() for e in expected]
    return len(got) == len(exp) and all(
        {k: v for k, v in g.items() if k != "score"} == {k: v for k, v in e.items() if k != "score"}
        and g["score"] == pytest.approx(e["score"], rel=1e-4, abs=1e-6) for g, e in zip(got, exp, strict=True))


def post(client: Any, body: Any, **kw: Any) -> Any:
    content = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return client.post("/v1/answer", content=content, **kw)


class ServerThread:
    """A real uvicorn server on a free loopback port, in a thread (signals are not touched there)."""

    def __init__(self, app: Any, graceful_timeout: float = 20.0) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=graceful_timeout)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> "ServerThread":
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True  # what uvicorn's SIGTERM/SIGINT handler does
        self.thread.join(30)

    def __exit__(self, *exc: Any) -> None:
        self.stop()
        self.sock.close()


class CountingPipeline:
    """Wraps a pipeline: counts answer_batch calls and their sizes; the first call can be held at a gate."""

    def __init__(self, inner: Any, gate: threading.Event | None = None) -> None:
        self.inner = inner
        self.gate = gate
        self.entered = threading.Event()
        self.calls: list[int] = []
        self.entered_sizes: list[int] = []
        self.n_best = inner.n_best
        self.info = inner.info

    def answer_batch(self, pairs: Any, batch_size: int = 32, top_k: int = 1, progress: bool = False) -> Any:
        self.entered_sizes.append(len(pairs))
        self.entered.set()
        if self.gate is not None:
            assert self.gate.wait(30), "test gate never opened"
        self.calls.append(len(pairs))
        return self.inner.answer_batch(pairs, batch_size=batch_size, top_k=top_k)


# -- answers ------------------------------------------------------------------------------------------
def test_answer_one_question(client: Any, pipeline: Any) -> None:
    ctx = "Foxes live in forests and fields. A red fox can run at fifty kilometres per hour."
    r = post(client, {"question": "Where do foxes live?", "context": ctx})
    assert r.status_code == 200, r.text
    body = r.json()
    best = body["answer"]
    assert set(best) == {"text", "score", "start", "end", "no_answer"}
    assert ctx[best["start"]: best["end"]] == best["text"]
    assert 0.0 <= best["score"] <= 1.0
    assert body["answers"] == [best]
    assert body["took_ms"] >= 0
    direct = pipeline.answer("Where do foxes live?", ctx)
    assert same([best], [direct])


def test_answer_many_questions_with_top_k(client: Any, pipeline: Any) -> None:
    ctx1 = "The Nile flows north through Egypt into the Mediterranean Sea."
    ctx2 = "The arctic fox grows white fur in winter and brown fur in summer."
    r = post(client, {"top_k": 2, "questions": [
        {"question": "Where does the Nile flow?", "context": ctx1},
        {"question": "What colour is the fur in winter?", "context": ctx2, "top_k": 3},
        {"question": "Which sea?", "context": ctx1, "top_k": 1},
    ]})
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [len(x["answers"]) for x in results] == [2, 3, 1]
    for res, ctx in zip(results, [ctx1, ctx2, ctx1], strict=True):
        assert res["answer"] == res["answers"][0]
        for a in res["answers"]:
            assert ctx[a["start"]: a["end"]] == a["text"]
    direct = pipeline.answer("What colour is the fur in winter?", ctx2, top_k=3)
    assert same(results[1]["answers"], direct)


def test_curl_style_form_content_type_is_accepted(client: Any) -> None:
    # `curl -d '{...}'` sends application/x-www-form-urlencoded; the body is still JSON
    r = post(client, {"question": "Who?", "context": "Alice met Bob."},
             headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert r.status_code == 200, r.text


def test_model_health_docs_and_page(client: Any, run_dir: Path) -> None:
    info = client.get("/v1/model").json()
    assert info["method"] == "lora"
    assert info["model"]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert info["metrics"] == metrics and "train_loss" in info["metrics"]
    assert info["serving"]["max_questions"] == 4 and "api_key" not in info["serving"]
    assert info["max_seq_length"] == 128
    health = client.get("/healthz")
    assert health.status_code == 200 and health.json()["status"] == "ok"
    assert client.get("/docs").status_code == 200
    spec = client.get("/openapi.json").json()
    assert "requestBody" in spec["paths"]["/v1/answer"]["post"]
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "<mark" not in page.text or "createElement(\"mark\")" in page.text
    assert "http://" not in page.text and "https://" not in page.text  # no CDN, nothing remote


def test_unknown_route_and_method_are_json_errors(client: Any) -> None:
    r = client.get("/nope")
    assert r.status_code == 404 and r.json()["error"]["status"] == 404
    r = client.get("/v1/answer")
    assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"


# -- bad input ----------------------------------------------------------------------------------------
OK = {"question": "Who?", "context": "Alice met Bob."}
BAD_INPUTS = [  # (id, body, status, code, field, words in the message)
    ("empty body", b"", 400, "empty_body", None, "empty"),
    ("whitespace body", b"  \n", 400, "empty_body", None, "empty"),
    ("not utf-8", b'{"question": "\xff\xfe", "context": "x"}', 400, "not_utf8", None, "UTF-8"),
    ("latin-1", '{"question": "caf\u00e9?", "context": "x"}'.encode("latin-1"), 400, "not_utf8", None, "UTF-8"),
    ("not json", b"{question: 1", 400, "invalid_json", None, "not valid JSON"),
    ("NaN", b'{"question": "q", "context": "c", "top_k": NaN}', 400, "invalid_json", None, "NaN"),
    ("array body", [OK], 422, "wrong_type", None, "JSON object"),
    ("string body", "just text", 400, "invalid_json", None, "JSON"),
    ("missing question", {"context": "x"}, 422, "missing_field", "question", "'question' is required"),
    ("missing context", {"question": "q"}, 422, "missing_field", "context", "'context' is required"),
    ("empty question", {"question": "  ", "context": "x"}, 422, "empty_field", "question", "'question' is empty"),
    ("empty context", {"question": "q", "context": ""}, 422, "empty_field", "context", "'context' is empty"),
    ("number question", {"question": 7, "context": "x"}, 422, "wrong_type", "question", "must be a string, got number"),
    ("array context", {"question": "q", "context": ["x"]}, 422, "wrong_type", "context", "got array"),
    ("null context", {"question": "q", "context": None}, 422, "wrong_type", "context", "got null"),
    ("string top_k", {**OK, "top_k": "3"}, 422, "wrong_type", "top_k", "must be an integer, got string"),
    ("float top_k", {**OK, "top_k": 1.5}, 422, "wrong_type", "top_k", "integer"),
    ("bool top_k", {**OK, "top_k": True}, 422, "wrong_type", "top_k", "got boolean"),
    ("zero top_k", {**OK, "top_k": 0}, 422, "out_of_range", "top_k", "between 1 and 20"),
    ("huge top_k", {**OK, "top_k": 21}, 422, "out_of_range", "top_k", "between 1 and 20"),
    ("unknown field", {**OK, "contxt": "x"}, 422, "unknown_field", "contxt", "unknown field 'contxt'"),
    ("both forms", {**OK, "questions": [OK]}, 422, "ambiguous", "questions", "not both"),
    ("questions not a list", {"questions": "q"}, 422, "wrong_type", "questions", "must be an array"),
    ("questions empty", {"questions": []}, 422, "empty_field", "questions", "'questions' is empty"),
    ("item not an object", {"questions": [OK, "q"]}, 422, "wrong_type", "questions[1]", "got string"),
    ("item missing context", {"questions": [OK, {"question": "q"}]}, 422, "missing_field", "questions[1].context",
     "'questions[1].context' is required"),
    ("item bad top_k", {"questions": [{**OK, "top_k": -1}]}, 422, "out_of_range", "questions[0].top_k", "between"),
    ("too many questions", {"questions": [OK] * 5}, 413, "too_many", "questions", "at most 4"),
    ("context too long", {"question": "q", "context": "x " * 15_001}, 413, "too_long", "context",
     "--max-context-chars"),
    ("question too long", {"question": "q" * 201, "context": "x"}, 413, "too_long", "question",
     "--max-question-chars"),
]


@pytest.mark.parametrize("body,status,code,field,words", [b[1:] for b in BAD_INPUTS], ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_is_a_clear_json_error(client: Any, body: Any, status: int, code: str, field: str | None,
                                         words: str) -> None:
    r = post(client, body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["status"] == status
    assert err["code"] == code
    assert err.get("field") == field
    assert words in err["message"]


def test_body_size_limit(pipeline: Any) -> None:
    app = create_app(pipeline, max_body_bytes=1000)
    with TestClient(app) as c:
        big = json.dumps({"question": "q", "context": "x" * 2000})
        r = post(c, big)
        assert r.status_code == 413
        assert r.json()["error"]["code"] == "body_too_large" and "--max-body-bytes" in r.json()["error"]["message"]

        def chunks():  # no Content-Length: the limit must hold while streaming too
            for _ in range(10):
                yield b" " * 200

        r = c.post("/v1/answer", content=chunks())
        assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"
        assert post(c, {"question": "q", "context": "x" * 100}).status_code == 200


def test_settings_are_validated() -> None:
    with pytest.raises(ValueError, match="max_batch"):
        ServeSettings(max_batch=0)
    with pytest.raises(ValueError, match="max_wait_ms"):
        ServeSettings(max_wait_ms=-1)


# -- API key ------------------------------------------------------------------------------------------
def test_api_key(pipeline: Any) -> None:
    app = create_app(pipeline, api_key="s3cret-key")
    with TestClient(app) as c:
        r = post(c, OK)
        assert r.status_code == 401
        assert r.json()["error"]["code"] == "missing_api_key" and "Authorization: Bearer" in r.json()["error"]["message"]
        assert r.headers["www-authenticate"] == "Bearer"
        r = post(c, OK, headers={"Authorization": "Bearer wrong"})
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        assert post(c, OK, headers={"X-API-Key": "nope"}).status_code == 401
        assert post(c, OK, headers={"Authorization": "Basic s3cret-key"}).status_code == 401
        assert post(c, OK, headers={"Authorization": "Bearer s3cret-key"}).status_code == 200
        assert post(c, OK, headers={"X-API-Key": "s3cret-key"}).status_code == 200
        assert c.get("/v1/model").status_code == 401
        assert c.get("/v1/model", headers={"X-API-Key": "s3cret-key"}).json()["serving"]["auth"] is True
        # the key is checked before the body is read: no key + bad body is still 401
        assert post(c, b"\xff").status_code == 401
        assert c.get("/healthz").status_code == 200  # liveness and the page stay open
        assert c.get("/").status_code == 200


def test_serve_cli_refuses_an_unset_api_key_env(run_dir: Path, capsys: pytest.CaptureFixture[str],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from qatune.cli import main

    monkeypatch.delenv("QATUNE_TEST_NO_SUCH_KEY", raising=False)
    assert main(["serve", str(run_dir), "--api-key-env", "QATUNE_TEST_NO_SUCH_KEY"]) == 2
    assert "QATUNE_TEST_NO_SUCH_KEY" in capsys.readouterr().err
    assert main(["serve", str(run_dir), "--max-batch", "0"]) == 2
    assert "--max-batch must be >= 1" in capsys.readouterr().err


# -- long contexts ------------------------------------------------------------------------------------
class ForcedRunner:
    """A stand-in model: high start/end logits exactly on the tokens of one character span of the context."""

    def __init__(self, start_char: int, end_char: int) -> None:
        self.start_char, self.end_char = start_char, end_char
        self.windows = 0

    def __call__(self, features: Any, batch_size: int, progress: bool = False) -> Any:
        starts, ends = [], []
        for offs in features.offsets:
            s = np.where(offs[:, 0] == self.start_char, 10.0, -10.0).astype(np.float32)
            e = np.where(offs[:, 1] == self.end_char, 10.0, -10.0).astype(np.float32)
            starts.append(s)
            ends.append(e)
        self.windows += len(features)
        return starts, ends


def test_long_context_answer_in_the_last_window_is_found(pipeline: Any) -> None:
    from qatune.tasks.extractive_qa.predictor import QAPipeline

    ctx = long_context()
    assert len(ctx) > 20_000
    start = ctx.rindex("Zanzibar")
    runner = ForcedRunner(start, start + len("Zanzibar"))
    forced = QAPipeline(runner, pipeline.tokenizer, pipeline.run_config)
    with TestClient(create_app(forced)) as c:
        r = post(c, {"question": "Where was the treasure buried?", "context": ctx})
    assert r.status_code == 200, r.text
    best = r.json()["answer"]
    assert runner.windows > 20  # many windows: the answer is only in the last ones
    assert (best["text"], best["start"], best["end"]) == ("Zanzibar", start, start + len("Zanzibar"))
    assert ctx[best["start"]: best["end"]] == "Zanzibar"


def test_long_context_windows_cover_every_character(pipeline: Any) -> None:
    from qatune.data.squad.squad_types import QAExample
    from qatune.tasks.extractive_qa.features import build_features

    ctx = long_context()
    feats = build_features([QAExample("0", "Where was the treasure buried?", ctx)], pipeline.tokenizer,
                           pipeline.max_seq_length, pipeline.doc_stride, use_cache=False, progress=False)
    covered = np.zeros(len(ctx), dtype=bool)
    for offs in feats.offsets:
        for s, e in offs:
            if s >= 0:
                covered[s:e] = True
    missing = [i for i, ch in enumerate(ctx) if not ch.isspace() and not covered[i]]
    assert missing == [], f"characters outside every window: {missing[:10]}"
    assert covered[len(ctx) - 1]  # the final '.'


def test_long_context_with_the_real_model(client: Any) -> None:
    ctx = long_context()
    r = post(client, {"question": "Where was the treasure buried?", "context": ctx, "top_k": 5})
    assert r.status_code == 200, r.text
    for a in r.json()["answers"]:
        assert 0 <= a["start"] < a["end"] <= len(ctx)
        assert ctx[a["start"]: a["end"]] == a["text"]


# -- micro-batching -----------------------------------------------------------------------------------
def _concurrent_requests(url: str, bodies: list[dict[str, Any]]) -> tuple[list[threading.Thread], list[Any]]:
    results: list[Any] = [None] * len(bodies)

    def send(i: int) -> None:
        with httpx.Client(timeout=60) as c:
            results[i] = c.post(f"{url}/v1/answer", json=bodies[i])

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(bodies))]
    for t in threads:
        t.start()
    return threads, results


def _bodies(n: int) -> list[dict[str, Any]]:
    ctx = "Alice met Bob in Paris in 1999. They talked about foxes, rivers and the weather for hours."
    return [{"question": f"Question number {i}: who met Bob?", "context": ctx} for i in range(n)]


@pytest.mark.parametrize("batching", [True, False], ids=["batching", "no-batching"])
def test_concurrent_requests_are_micro_batched(pipeline: Any, batching: bool) -> None:
    n = 12
    gate = threading.Event()
    counting = CountingPipeline(pipeline, gate)
    app = create_app(counting, batching=batching, max_batch=32, max_wait_ms=5)
    bodies = _bodies(n)
    with ServerThread(app) as server:
        threads, results = _concurrent_requests(server.url, bodies)
        assert counting.entered.wait(30)
        batcher = app.state.batcher
        deadline = time.monotonic() + 30  # hold the first batch until every other request is queued
        while batcher.queued + sum(counting.entered_sizes) < n and time.monotonic() < deadline:
            time.sleep(0.01)
        gate.set()
        for t in threads:
            t.join(60)
        stats = batcher.stats.to_dict()
    assert all(r is not None and r.status_code == 200 for r in results), [getattr(r, "text", r) for r in results]
    assert sum(counting.calls) == n
    if batching:
        assert len(counting.calls) < n, counting.calls
        assert len(counting.calls) <= 2 and max(counting.calls) > 1
        assert stats["largest_batch"] > 1
    else:
        assert counting.calls == [1] * n
    expected = pipeline.answer_batch([(b["question"], b["context"]) for b in bodies])
    for r, exp in zip(results, expected, strict=True):
        assert same([r.json()["answer"]], [exp])


def test_batcher_respects_max_batch_and_isolates_failures() -> None:
    sizes: list[int] = []

    def fn(pairs: Any, top_k: int) -> list[list[str]]:
        sizes.append(len(pairs))
        if any(q == "boom" for q, _ in pairs):
            raise ValueError("boom")
        return [[f"{q}|{c}|{top_k}"] for q, c in pairs]

    async def scenario() -> list[Any]:
        b = MicroBatcher(fn, max_batch=4, max_wait_ms=20)
        await b.start()
        jobs = [b.submit([(f"q{i}", "c")], 1) for i in range(9)]
        jobs.append(b.submit([("boom", "c")], 1))
        jobs.append(b.submit([("q9", "c"), ("q10", "c")], 2))
        out = await asyncio.gather(*jobs, return_exceptions=True)
        await b.stop()
        with pytest.raises(BatcherClosed):
            await b.submit([("late", "c")], 1)
        return out

    out = asyncio.run(scenario())
    assert [o[0][0] for o in out[:9]] == [f"q{i}|c|1" for i in range(9)]
    assert isinstance(out[9], ValueError)
    assert out[10] == [["q9|c|2"], ["q10|c|2"]]
    assert max(sizes) <= 4
    assert len(sizes) < 11 + 3  # batched (the failing batch is retried job by job)


def test_batcher_stop_drains_queued_jobs() -> None:
    def fn(pairs: Any, top_k: int) -> list[list[str]]:
        time.sleep(0.05)
        return [[q] for q, _ in pairs]

    async def scenario() -> list[Any]:
        b = MicroBatcher(fn, max_batch=2, max_wait_ms=1)
        await b.start()
        tasks = [asyncio.create_task(b.submit([(f"q{i}", "c")], 1)) for i in range(7)]
        await asyncio.sleep(0)  # all submitted
        await b.stop(timeout=30)
        return [t.result() for t in tasks]

    assert asyncio.run(scenario()) == [[[f"q{i}"]] for i in range(7)]


# -- graceful shutdown --------------------------------------------------------------------------------
def test_graceful_shutdown_answers_in_flight_requests(pipeline: Any) -> None:
    gate = threading.Event()
    counting = CountingPipeline(pipeline, gate)
    app = create_app(counting, batching=False)
    bodies = _bodies(3)
    server = ServerThread(app)
    with server:
        threads, results = _concurrent_requests(server.url, bodies)
        assert counting.entered.wait(30)  # one request is inside the model, the others wait in the queue
        deadline = time.monotonic() + 30
        while app.state.batcher.queued < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        server.server.should_exit = True  # shutdown starts with all three in flight
        time.sleep(0.3)
        with pytest.raises(httpx.ConnectError):  # no new connections once shutdown began
            httpx.get(f"{server.url}/healthz", timeout=5)
        gate.set()
        for t in threads:
            t.join(60)
        server.thread.join(30)
        assert not server.thread.is_alive()
    assert [r.status_code for r in results] == [200, 200, 200]
    assert counting.calls == [1, 1, 1]
    assert app.state.batcher.closed


@pytest.mark.slow
def test_serve_cli_sigterm_exits_cleanly(run_dir: Path, tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    log = tmp_path / "serve.log"
    with log.open("w") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "qatune", "serve", str(run_dir), "--port", str(port),
                                 "--device", "cpu", "--threads", "1"], stdout=fh, stderr=subprocess.STDOUT, env=env)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "server did not start: " + log.read_text()
            time.sleep(0.2)
        r = httpx.post(f"{url}/v1/answer", json=OK, timeout=30)
        assert r.status_code == 200
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
    text = log.read_text()
    assert code in (0, -signal.SIGTERM), text  # uvicorn re-raises the signal after its graceful shutdown
    assert "batcher drained" in text and "Application shutdown complete" in text, text
