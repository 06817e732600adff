"""The HTTP server: a FastAPI app over a run's predictor, at ``POST /v1/<route>`` of the run's task.

A predictor with a window engine or ``answer_batch`` (extractive QA's ``QAPipeline``) answers the question
schema below, scheduled per window. Any other task's predictor answers one request item (an object of the
task's ``request_fields``) or ``{"items": [...]}``, each checked by ``Task.parse_request`` and answered with
``Task.format_response`` (see :func:`parse_items_request`), scheduled per item with the same limits.

Endpoints::

    POST /v1/answer   {"question": Q, "context": C, "top_k": 1}  or  {"questions": [{...}, ...], "top_k": 1}
    POST /v1/<route>  another task: {field: value, ...}  or  {"items": [{...}, ...]}
    GET  /v1/model    model name, method, window settings, the run's metrics.json, limits, batcher stats
    GET  /healthz     liveness (503 while shutting down)
    GET  /            a web page: paste a context, ask, see the answer highlighted
    GET  /docs        OpenAPI docs (/openapi.json)

Concurrent requests are micro-batched and interleaved window by window (:mod:`qatune.serve.batcher`); the
work of one request is bounded (``--max-request-chars``, ``--max-request-windows``) and a request whose client
disconnected is dropped before its windows are computed. Every bad input gets a 4xx JSON error
``{"error": {"status": 422, "code": "...", "message": "...", "field": "questions[2].context"}}``: a body that
is too big, not UTF-8 or not JSON (nested too deeply included); missing, empty, too long, wrongly typed fields
or text with lone UTF-16 surrogates; too many questions or too much work.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import math
import time
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, replace
from importlib import resources
from pathlib import Path
from typing import Any, AsyncIterator

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from qatune import __version__
from qatune.errors import QatuneError
from qatune.serve.batcher import BatcherClosed, ItemEngine, MicroBatcher, WorkTooLarge, pipeline_batch_fn, text_chars
from qatune.tasks.base import task_route

log = logging.getLogger("qatune.serve")

SINGLE_KEYS = ("question", "context", "top_k")
BATCH_KEYS = ("questions", "top_k")


@dataclass
class ServeSettings:
    """Batching and input limits; each has a ``qatune serve`` flag of the same name."""

    batching: bool = True
    max_batch: int = 32  # questions per answer_batch call
    max_wait_ms: float = 5.0  # how long the batcher waits for more requests
    batch_size: int = 32  # windows per forward pass inside answer_batch
    max_body_bytes: int = 1 << 20
    max_context_chars: int = 100_000
    max_question_chars: int = 2_000
    max_questions: int = 64  # in one {"questions": [...]} request
    max_top_k: int = 20
    # The work one request may cause: characters of all its contexts (bounds tokenizing, checked before it)
    # and windows after tokenizing (bounds the model's work; a 100,000-character context is about 80-100).
    max_request_chars: int = 100_000
    max_request_windows: int = 128
    # Windows of one request per step: a heavy request adds this much to the step small ones wait for
    # (lower: small requests pass heavy ones sooner; higher: a lone long request runs in bigger batches).
    request_step_windows: int = 1
    drain_timeout_s: float = 30.0  # at shutdown, how long queued work may take to finish
    api_key: str | None = None  # None: no authentication

    def __post_init__(self) -> None:
        for name in ("max_batch", "batch_size", "max_body_bytes", "max_context_chars", "max_question_chars",
                     "max_questions", "max_top_k", "max_request_chars", "max_request_windows",
                     "request_step_windows"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{name} must be a whole number, got {value!r}")
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        _check_number("max_wait_ms", self.max_wait_ms, 0.0, MAX_WAIT_MS_LIMIT)
        _check_number("drain_timeout_s", self.drain_timeout_s, 0.0, None)
        if self.api_key is not None and not self.api_key.strip():
            raise ValueError("api_key is empty")

    def public(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("api_key")
        out["auth"] = self.api_key is not None
        return out


MAX_WAIT_MS_LIMIT = 1000.0  # a batch that waits longer for company only adds latency


def _check_number(name: str, value: Any, low: float, high: float | None) -> None:
    """``value`` is a finite number in [low, high]; NaN and infinity are refused (they compare as neither)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if value < low or (high is not None and value > high):
        bound = f"between {low:g} and {high:g}" if high is not None else f">= {low:g}"
        raise ValueError(f"{name} must be {bound}, got {value:g}")


class ApiError(Exception):
    """A client error answered as ``{"error": {...}}`` with this status."""

    def __init__(self, status: int, message: str, field: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.field = field
        self.code = code or _CODES.get(status, "error")


_CODES = {400: "bad_request", 401: "unauthorized", 404: "not_found", 405: "method_not_allowed",
          413: "too_large", 422: "invalid_field", 500: "internal_error", 503: "unavailable"}


def error_body(status: int, message: str, field: str | None = None, code: str | None = None) -> dict[str, Any]:
    err: dict[str, Any] = {"status": status, "code": code or _CODES.get(status, "error"), "message": message}
    if field is not None:
        err["field"] = field
    return {"error": err}


# -- request parsing ----------------------------------------------------------------------------------
def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def decode_json_body(raw: bytes) -> Any:
    if not raw.strip():
        raise ApiError(400, "the request body is empty; send a JSON object such as "
                            '{"question": "...", "context": "..."}', code="empty_body")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ApiError(400, f"the request body is not UTF-8 text (invalid byte 0x{raw[exc.start]:02x} at "
                            f"position {exc.start}); send JSON encoded as UTF-8", code="not_utf8") from None
    try:
        return json.loads(text.lstrip("\ufeff"), parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        raise ApiError(400, f"the request body is not valid JSON: {exc.msg} at line {exc.lineno} column "
                            f"{exc.colno}", code="invalid_json") from None
    except RecursionError:  # valid JSON, but [[[[...]]]] thousands deep exhausts the parser's stack
        raise ApiError(400, "the request body is nested too deeply to parse; a request is one object with "
                            "'question' and 'context' strings (or a 'questions' list of them)",
                       code="invalid_json") from None
    except ValueError as exc:
        raise ApiError(400, f"the request body is not valid JSON: {exc}", code="invalid_json") from None


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed in JSON")


def _text_field(obj: dict[str, Any], key: str, prefix: str, limit: int, flag: str) -> str:
    name = f"{prefix}{key}"
    if key not in obj:
        raise ApiError(422, f"field '{name}' is required", field=name, code="missing_field")
    value = obj[key]
    if not isinstance(value, str):
        raise ApiError(422, f"field '{name}' must be a string, got {_type_name(value)}", field=name,
                       code="wrong_type")
    if not value.strip():
        raise ApiError(422, f"field '{name}' is empty", field=name, code="empty_field")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:  # JSON can escape half a UTF-16 pair ("\ud800"): not text
        raise ApiError(422, f"field '{name}' has a lone UTF-16 surrogate (\\u{ord(value[exc.start]):04x}) at "
                            f"character {exc.start}; send valid Unicode text", field=name,
                       code="invalid_text") from None
    if len(value) > limit:
        raise ApiError(413, f"field '{name}' is {len(value):,} characters; this server accepts at most "
                            f"{limit:,} ({flag})", field=name, code="too_long")
    return value


def _top_k(obj: dict[str, Any], prefix: str, default: int, max_top_k: int) -> int:
    name = f"{prefix}top_k"
    if "top_k" not in obj or obj["top_k"] is None:
        return default
    value = obj["top_k"]
    if isinstance(value, bool) or not isinstance(value, int):
        raise ApiError(422, f"field '{name}' must be an integer, got {_type_name(value)}", field=name,
                       code="wrong_type")
    if not 1 <= value <= max_top_k:
        raise ApiError(422, f"field '{name}' must be between 1 and {max_top_k}, got {value}", field=name,
                       code="out_of_range")
    return value


def _no_unknown_keys(obj: dict[str, Any], allowed: tuple[str, ...], prefix: str) -> None:
    for key in obj:
        if key not in allowed:
            raise ApiError(422, f"unknown field '{prefix}{key}'; expected {', '.join(allowed)}",
                           field=f"{prefix}{key}", code="unknown_field")


@dataclass
class ParsedRequest:
    pairs: list[tuple[str, str]]
    top_ks: list[int]
    single: bool


def parse_answer_request(data: Any, settings: ServeSettings) -> ParsedRequest:
    """Validate a decoded /v1/answer body; every problem is an :class:`ApiError` naming the field."""
    if not isinstance(data, dict):
        raise ApiError(422, "the request body must be a JSON object: {\"question\": ..., \"context\": ...} or "
                            f"{{\"questions\": [...]}}, got {_type_name(data)}", code="wrong_type")

    def item(obj: dict[str, Any], prefix: str, default_k: int) -> tuple[str, str, int]:
        question = _text_field(obj, "question", prefix, settings.max_question_chars, "--max-question-chars")
        context = _text_field(obj, "context", prefix, settings.max_context_chars, "--max-context-chars")
        return question, context, _top_k(obj, prefix, default_k, settings.max_top_k)

    if "questions" not in data:
        _no_unknown_keys(data, SINGLE_KEYS, "")
        q, c, k = item(data, "", 1)
        _check_request_chars([(q, c)], settings, "context")
        return ParsedRequest([(q, c)], [k], single=True)
    if "question" in data or "context" in data:
        raise ApiError(422, "give either 'question' and 'context', or a 'questions' list, not both",
                       field="questions", code="ambiguous")
    _no_unknown_keys(data, BATCH_KEYS, "")
    items = data["questions"]
    if not isinstance(items, list):
        raise ApiError(422, f"field 'questions' must be an array of {{\"question\", \"context\"}} objects, got "
                            f"{_type_name(items)}", field="questions", code="wrong_type")
    if not items:
        raise ApiError(422, "field 'questions' is empty", field="questions", code="empty_field")
    if len(items) > settings.max_questions:
        raise ApiError(413, f"field 'questions' has {len(items)} questions; this server accepts at most "
                            f"{settings.max_questions} per request (--max-questions)", field="questions",
                       code="too_many")
    default_k = _top_k(data, "", 1, settings.max_top_k)
    pairs, ks = [], []
    for i, obj in enumerate(items):
        prefix = f"questions[{i}]."
        if not isinstance(obj, dict):
            raise ApiError(422, f"field 'questions[{i}]' must be an object with 'question' and 'context', got "
                                f"{_type_name(obj)}", field=f"questions[{i}]", code="wrong_type")
        _no_unknown_keys(obj, SINGLE_KEYS, prefix)
        q, c, k = item(obj, prefix, default_k)
        pairs.append((q, c))
        ks.append(k)
    _check_request_chars(pairs, settings, "questions")
    return ParsedRequest(pairs, ks, single=False)


def _check_request_chars(pairs: list[tuple[str, str]], settings: ServeSettings, field: str) -> None:
    total = sum(len(c) for _, c in pairs)
    if total > settings.max_request_chars:
        raise ApiError(413, f"the contexts of this request are {total:,} characters in all; this server accepts "
                            f"at most {settings.max_request_chars:,} per request (--max-request-chars); send fewer "
                            "or shorter contexts, or split the request", field=field,
                       code="too_much_work")


def _check_texts(value: Any, field: str, limit: int) -> None:
    """Every string in a request item is valid Unicode and at most ``limit`` characters (413 naming it)."""
    if isinstance(value, dict):
        for key, inner in value.items():
            _check_texts(inner, f"{field}.{key}" if field else str(key), limit)
    elif isinstance(value, list):
        for i, inner in enumerate(value):
            _check_texts(inner, f"{field}[{i}]", limit)
    elif isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ApiError(422, f"field '{field}' has a lone UTF-16 surrogate (\\u{ord(value[exc.start]):04x}) at "
                                f"character {exc.start}; send valid Unicode text", field=field,
                           code="invalid_text") from None
        if len(value) > limit:
            raise ApiError(413, f"field '{field}' is {len(value):,} characters; this server accepts at most "
                                f"{limit:,} (--max-context-chars)", field=field, code="too_long")


def parse_items_request(data: Any, task: Any, settings: ServeSettings) -> tuple[list[Any], bool]:
    """Validate a decoded body for a task without a question schema: one item object, or ``{"items": [...]}``.

    Limits as for questions: at most ``max_questions`` items (413), every string at most ``max_context_chars``
    and all of them together at most ``max_request_chars`` (413); each item through ``task.parse_request``
    (its DataError -> 422 naming the item). Returns the items as sent (the predictor parses them again) and
    whether the request was a single item."""
    fields = ", ".join(task.request_fields) or "the task's fields"
    if not isinstance(data, dict):
        raise ApiError(422, f"the request body must be a JSON object: one item ({fields}) or {{\"items\": [...]}}, "
                            f"got {_type_name(data)}", code="wrong_type")
    if "items" in data and "items" not in task.request_fields:
        if len(data) > 1:
            raise ApiError(422, "give either one item's fields or an 'items' list, not both", field="items",
                           code="ambiguous")
        items = data["items"]
        if not isinstance(items, list):
            raise ApiError(422, f"field 'items' must be an array of objects ({fields}), got {_type_name(items)}",
                           field="items", code="wrong_type")
        if not items:
            raise ApiError(422, "field 'items' is empty", field="items", code="empty_field")
        if len(items) > settings.max_questions:
            raise ApiError(413, f"field 'items' has {len(items)} items; this server accepts at most "
                                f"{settings.max_questions} per request (--max-questions)", field="items",
                           code="too_many")
        named = [(f"items[{i}]", item) for i, item in enumerate(items)]
        single = False
    else:
        named, single = [("", data)], True
    for name, item in named:
        if not isinstance(item, dict):
            raise ApiError(422, f"field '{name}' must be an object ({fields}), got {_type_name(item)}", field=name,
                           code="wrong_type")
        _check_texts(item, name, settings.max_context_chars)
    total = sum(text_chars(item) for _, item in named)
    if total > settings.max_request_chars:
        raise ApiError(413, f"the texts of this request are {total:,} characters in all; this server accepts at "
                            f"most {settings.max_request_chars:,} per request (--max-request-chars); send fewer or "
                            "shorter items, or split the request", field=None if single else "items",
                       code="too_much_work")
    for name, item in named:
        try:
            task.parse_request(item, name or "request")
        except QatuneError as exc:
            raise ApiError(422, str(exc), field=name or None, code="invalid_field") from None
    return [item for _, item in named], single


def _answer_dict(answer: Any) -> dict[str, Any]:
    d = answer.to_dict() if hasattr(answer, "to_dict") else dict(answer)
    score = float(d.get("score", 0.0))
    d["score"] = score if math.isfinite(score) else 0.0
    return d


def _result(answers: list[Any]) -> dict[str, Any]:
    items = [_answer_dict(a) for a in answers]
    return {"answer": items[0] if items else None, "answers": items}


# -- the app ------------------------------------------------------------------------------------------
def read_metrics(run_dir: str | Path | None) -> dict[str, Any]:
    if run_dir is None:
        return {}
    path = Path(run_dir) / "metrics.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def index_html() -> str:
    try:
        return resources.files("qatune.serve").joinpath("static/index.html").read_text(encoding="utf-8")
    except (FileNotFoundError, OSError):  # an install without package data: the API still works
        return ("<!doctype html><title>qatune</title><p>The web page is missing from this installation "
                "(qatune/serve/static/index.html). The API works: POST /v1/answer; see <a href=\"docs\">/docs</a>.")


_REQUEST_SCHEMA: dict[str, Any] = {
    "oneOf": [
        {"type": "object", "title": "One question", "required": ["question", "context"],
         "properties": {"question": {"type": "string"}, "context": {"type": "string"},
                        "top_k": {"type": "integer", "minimum": 1, "default": 1}},
         "additionalProperties": False},
        {"type": "object", "title": "Many questions", "required": ["questions"],
         "properties": {
             "questions": {"type": "array", "minItems": 1, "items": {
                 "type": "object", "required": ["question", "context"],
                 "properties": {"question": {"type": "string"}, "context": {"type": "string"},
                                "top_k": {"type": "integer", "minimum": 1}},
                 "additionalProperties": False}},
             "top_k": {"type": "integer", "minimum": 1, "default": 1}},
         "additionalProperties": False},
    ],
    "example": {"question": "Where do foxes live?", "context": "Foxes live in forests and fields.", "top_k": 1},
}
_ANSWER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"text": {"type": "string"}, "score": {"type": "number"},
                   "start": {"type": "integer", "description": "character offset in the context, -1: no answer"},
                   "end": {"type": "integer"}, "no_answer": {"type": "boolean"}},
}
_RESULT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"answer": _ANSWER_SCHEMA, "answers": {"type": "array", "items": _ANSWER_SCHEMA},
                   "results": {"type": "array", "description": "for a 'questions' request: one per question",
                               "items": {"type": "object", "properties": {
                                   "answer": _ANSWER_SCHEMA,
                                   "answers": {"type": "array", "items": _ANSWER_SCHEMA}}}},
                   "took_ms": {"type": "number"}},
}
_ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"error": {"type": "object", "properties": {
        "status": {"type": "integer"}, "code": {"type": "string"}, "message": {"type": "string"},
        "field": {"type": "string"}}}},
}


def _json_response(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def answers_questions(pipeline: Any) -> bool:
    """Whether the predictor takes the question schema (a window engine or ``answer_batch``: extractive QA)."""
    return callable(getattr(pipeline, "window_engine", None)) or callable(getattr(pipeline, "answer_batch", None))


def make_engine(pipeline: Any, batch_size: int) -> Any:
    """Per-window scheduling when the predictor offers a window engine (the task's, e.g. QAPipeline's);
    anything else with ``answer_batch`` runs per question, any other predictor per item (``predict_batch``)."""
    window_engine = getattr(pipeline, "window_engine", None)
    if callable(window_engine):
        return window_engine(batch_size)
    if callable(getattr(pipeline, "answer_batch", None)):
        return pipeline_batch_fn(pipeline, batch_size)
    if getattr(pipeline, "task", None) is None or not callable(getattr(pipeline, "predict_batch", None)):
        raise TypeError("create_app needs a predictor: predict_batch and task (or a QA answer_batch)")
    return ItemEngine(pipeline, batch_size)


def _items_schema(task: Any) -> dict[str, Any]:
    """OpenAPI request schema of a task's route, from its ``request_fields``."""
    item = {"type": "object", "required": list(task.request_fields),
            "properties": {name: {"description": text} for name, text in task.request_fields.items()}}
    return {"oneOf": [{**item, "title": "One item"},
                      {"type": "object", "title": "Many items", "required": ["items"],
                       "properties": {"items": {"type": "array", "minItems": 1, "items": item}},
                       "additionalProperties": False}]}


class SafeJSONResponse(JSONResponse):
    """JSON with non-ASCII escaped: an error message may quote client text that is not valid Unicode."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode("ascii")


async def wait_for_disconnect(request: Request) -> None:
    """Return when the client has gone away (the ASGI server sends ``http.disconnect``).

    Called once the body has been read, so the only message left to receive is the disconnect; the server
    sends it the moment the connection drops, not when the response is ready.
    """
    while True:
        message = await request.receive()
        if message.get("type") == "http.disconnect":
            return


def create_app(pipeline: Any, settings: ServeSettings | None = None, *, run_dir: str | Path | None = None,
               metrics: dict[str, Any] | None = None, **overrides: Any) -> FastAPI:
    """A FastAPI app answering with ``pipeline`` (anything with ``answer_batch`` and ``info``).

    ``settings`` (or keyword ``overrides`` of its fields) set batching and limits; ``metrics`` (or
    ``run_dir``/metrics.json) is what ``GET /v1/model`` reports.
    """
    settings = replace(settings or ServeSettings(), **overrides)
    run_metrics = dict(metrics) if metrics is not None else read_metrics(run_dir)
    task = getattr(pipeline, "task", None)
    questions = answers_questions(pipeline)
    route = task_route(task) if task is not None else "answer"
    n_best = int(getattr(pipeline, "n_best", 20))
    batcher = MicroBatcher(make_engine(pipeline, settings.batch_size), max_batch=settings.max_batch,
                           max_wait_ms=settings.max_wait_ms, enabled=settings.batching, n_best=n_best,
                           max_windows=settings.max_request_windows, step_chars=settings.max_request_chars,
                           per_job=settings.request_step_windows)
    page = index_html()
    api_key = settings.api_key.encode() if settings.api_key else None

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await batcher.start()
        log.info("qatune: batching %s (max %d questions, %.1f ms window)",
                 "on" if settings.batching else "off", settings.max_batch, settings.max_wait_ms)
        try:
            yield
        finally:
            # uvicorn has already let in-flight requests finish; answer anything still queued, then stop
            await batcher.stop(timeout=settings.drain_timeout_s)
            log.info("qatune: batcher drained (%s)", batcher.stats.to_dict())

    what = "Question answering" if questions else f"The {task.name} task"
    app = FastAPI(title="qatune server", version=__version__, lifespan=lifespan,
                  description=f"{what} with a qatune run at POST /v1/{route}. Errors are "
                              "`{\"error\": {status, code, message, field}}`.")
    app.state.batcher = batcher
    app.state.settings = settings
    app.state.pipeline = pipeline
    app.state.route = f"/v1/{route}"

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return SafeJSONResponse(error_body(exc.status, exc.message, exc.field, exc.code), status_code=exc.status,
                                headers=headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return SafeJSONResponse(error_body(exc.status_code, str(exc.detail)), status_code=exc.status_code,
                                headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        field = ".".join(str(p) for p in first.get("loc", ()) if p not in ("body", "query"))
        return SafeJSONResponse(error_body(422, f"{field or 'request'}: {first.get('msg', 'invalid')}",
                                           field or None), status_code=422)

    async def require_key(request: Request) -> None:  # async: a sync dependency costs a thread hop per request
        if api_key is None:
            return
        given = request.headers.get("x-api-key")
        auth = request.headers.get("authorization")
        if given is None and auth:
            scheme, _, token = auth.partition(" ")
            if scheme.lower() == "bearer":
                given = token.strip()
        if not given:
            raise ApiError(401, "this server needs an API key: send 'Authorization: Bearer <key>' or "
                                "'X-API-Key: <key>'", code="missing_api_key")
        if not hmac.compare_digest(given.encode(), api_key):
            raise ApiError(401, "the API key is not valid", code="invalid_api_key")

    async def read_body(request: Request) -> bytes:
        limit = settings.max_body_bytes
        length = request.headers.get("content-length")
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                raise ApiError(400, "the Content-Length header is not a number") from None
            if declared > limit:
                raise ApiError(413, f"the request body is {declared:,} bytes; this server accepts at most "
                                    f"{limit:,} (--max-body-bytes)", code="body_too_large")
        chunks, total = [], 0
        async for chunk in request.stream():
            total += len(chunk)
            if total > limit:
                raise ApiError(413, f"the request body is over {limit:,} bytes, the most this server accepts "
                                    "(--max-body-bytes)", code="body_too_large")
            chunks.append(chunk)
        return b"".join(chunks)

    async def run_job(request: Request, items: list[Any], top_ks: list[int], field: str | None
                      ) -> list[Any] | JSONResponse:
        """Submit one request's items to the batcher and wait for them, dropping the work if the client goes
        away; the refusals every route shares (413 over the window budget, 503 at shutdown, 422, 500)."""
        work = asyncio.ensure_future(batcher.submit(items, top_ks))
        gone = asyncio.ensure_future(wait_for_disconnect(request))
        try:
            await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
            if not work.done():  # the client went away: drop its work before the batcher computes it
                work.cancel()
                log.info("qatune: client disconnected; its request was dropped")
                return SafeJSONResponse(error_body(499, "the client closed the connection", code="client_gone"),
                                        status_code=499)
            return work.result()
        except asyncio.CancelledError:
            # uvicorn cancels requests still running when --graceful-timeout is over: answer as documented
            work.cancel()
            return SafeJSONResponse(error_body(503, "the server shut down before this request was answered "
                                                    "(--graceful-timeout)", code="shutting_down"), status_code=503)
        except BatcherClosed as exc:
            raise ApiError(503, str(exc), code="shutting_down") from None
        except WorkTooLarge as exc:
            raise ApiError(413, f"{exc} (--max-request-windows {exc.limit}); send shorter texts or fewer "
                                "items, or split the request", field=field, code="too_much_work") from None
        except QatuneError as exc:
            raise ApiError(422, str(exc)) from None
        except Exception as exc:  # noqa: BLE001
            log.exception("qatune: answering failed")
            raise ApiError(500, f"internal error while answering: {type(exc).__name__}") from None
        finally:
            gone.cancel()

    async def read_request(request: Request, parse: Any) -> Any:
        try:
            with batcher.arriving_request():  # a forming batch may wait for this request
                return parse(decode_json_body(await read_body(request)))
        except ClientDisconnect:  # gone before the body arrived: nothing to answer, nothing to compute
            return SafeJSONResponse(error_body(499, "the client closed the connection", code="client_gone"),
                                    status_code=499)

    errors = {400: _json_response(_ERROR_SCHEMA, "body is empty, not UTF-8 or not JSON"),
              401: _json_response(_ERROR_SCHEMA, "missing or wrong API key"),
              413: _json_response(_ERROR_SCHEMA, "body, a text, the number of items or the work too large"),
              422: _json_response(_ERROR_SCHEMA, "missing, empty or wrongly typed field"),
              503: _json_response(_ERROR_SCHEMA, "the server is shutting down")}

    async def answer(request: Request) -> JSONResponse:
        """Extract the answer to each question from its context: text, probability-like score and character
        offsets (``context[start:end] == text``; -1 and ``no_answer: true`` when the model abstains)."""
        t0 = time.perf_counter()
        parsed = await read_request(request, lambda data: parse_answer_request(data, settings))
        if isinstance(parsed, JSONResponse):
            return parsed
        results = await run_job(request, parsed.pairs, parsed.top_ks, "context" if parsed.single else "questions")
        if isinstance(results, JSONResponse):
            return results
        took = round((time.perf_counter() - t0) * 1000, 2)
        if parsed.single:
            body = _result(results[0])
        else:
            body = {"results": [_result(r) for r in results]}
        body["took_ms"] = took
        return JSONResponse(body)

    async def predict_items(request: Request) -> JSONResponse:
        """The task's predictions: one per item, as the task formats them (``Task.format_response``)."""
        t0 = time.perf_counter()
        parsed = await read_request(request, lambda data: parse_items_request(data, task, settings))
        if isinstance(parsed, JSONResponse):
            return parsed
        items, single = parsed
        results = await run_job(request, items, [1] * len(items), None if single else "items")
        if isinstance(results, JSONResponse):
            return results
        formatted = [task.format_response(r) for r in results]
        body: dict[str, Any]
        if single:
            body = dict(formatted[0]) if isinstance(formatted[0], dict) else {"result": formatted[0]}
        else:
            body = {"results": formatted}
        body["took_ms"] = round((time.perf_counter() - t0) * 1000, 2)
        return SafeJSONResponse(body)

    if questions:
        app.post(f"/v1/{route}", dependencies=[Depends(require_key)], summary="Answer one or many questions",
                 openapi_extra={"requestBody": {"required": True,
                                                "content": {"application/json": {"schema": _REQUEST_SCHEMA}}}},
                 responses={200: _json_response(_RESULT_SCHEMA, "the answers, best first"), **errors})(answer)
    else:
        app.post(f"/v1/{route}", dependencies=[Depends(require_key)],
                 summary=f"Predict with the {task.name} task (one item or many)",
                 openapi_extra={"requestBody": {"required": True, "content": {
                     "application/json": {"schema": _items_schema(task)}}}},
                 responses={200: _json_response({"type": "object"}, "the task's prediction(s) and took_ms"),
                            **errors})(predict_items)

    @app.get("/v1/model", dependencies=[Depends(require_key)], summary="The model being served")
    async def model() -> dict[str, Any]:
        info = dict(getattr(pipeline, "info", {}) or {})
        for key in ("max_seq_length", "doc_stride", "max_answer_length", "n_best"):
            if hasattr(pipeline, key):
                info[key] = getattr(pipeline, key)
        info["metrics"] = run_metrics
        info["serving"] = settings.public()
        info["stats"] = batcher.stats.to_dict()
        info["qatune_version"] = __version__
        return info

    @app.get("/healthz", summary="Liveness: 200 while serving, 503 while shutting down")
    async def healthz() -> JSONResponse:
        status = 503 if batcher.closed else 200
        return JSONResponse({"status": "ok" if status == 200 else "shutting_down", "queued": batcher.queued,
                             "busy": batcher.busy, "stats": batcher.stats.to_dict()}, status_code=status)

    @app.get("/", include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(page, headers={
            "Content-Security-Policy": "default-src 'none'; script-src 'unsafe-inline'; style-src "
                                       "'unsafe-inline'; connect-src 'self'; img-src 'self' data:; "
                                       "base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
            "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"})

    return app
