"""Async micro-batcher that schedules work per *window*, fairly across requests.

Each request submits a *job* (its (question, context) pairs and their ``top_k``). One consumer task runs
*steps*, one at a time, in a single worker thread (the model uses every torch thread; the tokenizer is not
meant for concurrent use). A step:

1. tokenizes new jobs into windows (the run's ``max_seq_length``/``doc_stride``): the oldest, then the
   others smallest first up to ``step_chars`` characters; a job over ``max_windows`` windows fails with
   :class:`WorkTooLarge` before any of it is computed;
2. takes at most ``per_job`` windows of each job, the job with the fewest windows left first, at most
   ``max_batch`` in all: a small request gets a slot in the next step whatever a heavy one still has to do,
   and a heavy request adds only ``per_job`` windows to the step the small ones wait for;
3. runs the model once over those windows (the runner splits them into forward passes of ``batch_size``);
4. decodes the jobs whose last window was computed and answers them.

So a small request sent while a heavy one runs waits for the step in progress plus its own step (a few
windows each), not for the whole heavy request; every request advances in every step it is part of. Under load the queue fills while a
step runs and the next step is fuller: throughput grows with load. Before a step that has room, the
consumer waits up to ``max_wait_ms`` for requests that are still being read (not at all when none is).

A job whose request was cancelled (the client disconnected, see :mod:`qatune.serve.app`) is dropped before
the next step: at most the one step already running computes any of its windows.

With ``enabled=False`` each step takes windows from one job only, for comparison.

``stop()`` refuses new jobs, finishes every job already submitted and then ends the consumer, so a graceful
server shutdown answers all in-flight requests.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Protocol, Sequence

# answer_batch(pairs, top_k) -> one list of answers (best first) per pair
BatchFn = Callable[[Sequence[tuple[str, str]], int], list[list[Any]]]


class BatcherClosed(RuntimeError):
    """The batcher is shutting down and takes no new work."""


class WorkTooLarge(ValueError):
    """A request needs more windows than the per-request budget (``max_windows``)."""

    def __init__(self, windows: int, limit: int, detail: str = "") -> None:
        super().__init__(f"this request needs {windows:,} windows{detail}; at most {limit:,} are computed per "
                         "request")
        self.windows = windows
        self.limit = limit
        self.detail = detail


# -- engines: what a step runs ------------------------------------------------------------------------
class Work(Protocol):
    """One job's work as an engine sees it: ``windows`` is known once ``tokenize`` has run."""

    windows: int


class Engine(Protocol):
    """Tokenizes jobs into windows, computes any windows of any jobs together, decodes finished jobs.

    All three run in the batcher's one worker thread, never at the same time.
    """

    def tokenize(self, pairs: Sequence[tuple[str, str]], top_ks: Sequence[int]) -> Work: ...

    def compute(self, parts: Sequence[tuple[Work, int, int]]) -> None:
        """Compute windows ``[lo, hi)`` of each work item, in one model call where possible."""

    def finish(self, work: Work) -> list[list[Any]]:
        """The answers (a best-first list per pair) once every window has been computed."""

    def describe(self, work: Work) -> str:
        """Why the work has that many windows, for a refusal message."""


@dataclass
class _PairWork:
    pairs: list[tuple[str, str]]
    top_ks: list[int]
    windows: int
    results: list[list[Any] | None]


class PairEngine:
    """An ``answer_batch(pairs, top_k)`` function as an engine: one question is one window.

    For pipelines that are not a :class:`~qatune.tasks.extractive_qa.predictor.QAPipeline` (wrappers, stand-ins);
    the window budget then counts questions.
    """

    def __init__(self, fn: BatchFn, n_best: int = 20) -> None:
        self.fn = fn
        self.n_best = n_best  # any top_k up to this gives the same answers whatever top_k the call runs with

    def tokenize(self, pairs: Sequence[tuple[str, str]], top_ks: Sequence[int]) -> _PairWork:
        return _PairWork(list(pairs), list(top_ks), len(pairs), [None] * len(pairs))

    def compute(self, parts: Sequence[tuple[Any, int, int]]) -> None:
        groups: dict[int, list[tuple[_PairWork, int]]] = {}
        for work, lo, hi in parts:
            for i in range(lo, hi):
                k = work.top_ks[i]
                groups.setdefault(k if k > self.n_best else 0, []).append((work, i))
        for items in groups.values():
            top_k = max(w.top_ks[i] for w, i in items)
            out = self.fn([w.pairs[i] for w, i in items], top_k)
            if len(out) != len(items):
                raise RuntimeError(f"answer_batch returned {len(out)} results for {len(items)} questions")
            for (w, i), answers in zip(items, out, strict=True):
                w.results[i] = answers

    def finish(self, work: _PairWork) -> list[list[Any]]:
        return [list(r or [])[:k] for r, k in zip(work.results, work.top_ks, strict=True)]

    def describe(self, work: _PairWork) -> str:
        return " (one per question)"


def text_chars(value: Any) -> int:
    """Characters of every string in a request item (a pair, an object, nested lists): its tokenizing work."""
    if isinstance(value, str):
        return len(value)
    if isinstance(value, dict):
        return sum(text_chars(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(text_chars(v) for v in value)
    return 0


class ItemEngine:
    """A predictor without a window engine (``predict_batch(items, batch_size)``): one request item is one
    window, so the batcher's budgets (``max_windows``, ``max_batch``) count items and requests are still
    interleaved fairly, a few items of each per step. Results are the predictor's, one per item."""

    def __init__(self, predictor: Any, batch_size: int = 32) -> None:
        self.predictor = predictor
        self.batch_size = batch_size

    def tokenize(self, items: Sequence[Any], top_ks: Sequence[int]) -> _PairWork:
        return _PairWork(list(items), list(top_ks), len(items), [None] * len(items))

    def compute(self, parts: Sequence[tuple[Any, int, int]]) -> None:
        from qatune.runtime import release_free_memory

        flat = [(work, i) for work, lo, hi in parts for i in range(lo, hi)]
        out = self.predictor.predict_batch([work.pairs[i] for work, i in flat], batch_size=self.batch_size)
        if len(out) != len(flat):
            raise RuntimeError(f"predict_batch returned {len(out)} results for {len(flat)} items")
        for (work, i), result in zip(flat, out, strict=True):
            work.results[i] = result
        release_free_memory()

    def finish(self, work: _PairWork) -> list[Any]:
        return list(work.results)

    def describe(self, work: _PairWork) -> str:
        return " (one per item)"


def pipeline_batch_fn(pipeline: Any, batch_size: int = 32) -> BatchFn:
    """Adapt ``answer_batch`` (an Answer for top_k=1, a list otherwise) to lists of answers."""

    from qatune.runtime import release_free_memory

    def run(pairs: Sequence[tuple[str, str]], top_k: int) -> list[list[Any]]:
        out = pipeline.answer_batch(list(pairs), batch_size=batch_size, top_k=top_k)
        release_free_memory()  # every batch has other shapes: return freed heap pages so RSS stays flat
        return [r if isinstance(r, list) else [r] for r in out]

    return run


# -- jobs and stats -----------------------------------------------------------------------------------
_SEQ = itertools.count()


@dataclass
class _Job:
    pairs: list[tuple[str, str]]
    top_ks: list[int]
    future: asyncio.Future
    chars: int = 0
    seq: int = field(default_factory=lambda: next(_SEQ))
    enqueued: float = field(default_factory=time.perf_counter)
    dropped: bool = False  # the request was cancelled: set on the loop thread, read by the worker
    work: Any = None
    done_windows: int = 0
    result: list[list[Any]] | None = None
    error: BaseException | None = None

    @property
    def remaining(self) -> int:
        return self.work.windows - self.done_windows if self.work is not None else 0

    @property
    def finished(self) -> bool:
        return self.result is not None or self.error is not None


@dataclass
class BatcherStats:
    jobs: int = 0  # requests answered (or failed)
    questions: int = 0  # questions answered
    windows: int = 0  # windows computed by the model
    batches: int = 0  # steps that ran the model
    largest_batch: int = 0  # most windows in one step
    errors: int = 0
    refused: int = 0  # jobs over the window budget (answered 413 before any compute)
    dropped: int = 0  # jobs whose client went away before they were answered
    busy_s: float = 0.0  # time spent in steps

    def to_dict(self) -> dict[str, Any]:
        return {"jobs": self.jobs, "questions": self.questions, "windows": self.windows, "batches": self.batches,
                "largest_batch": self.largest_batch, "errors": self.errors, "refused": self.refused,
                "dropped": self.dropped, "busy_s": round(self.busy_s, 3),
                "mean_batch": round(self.windows / self.batches, 2) if self.batches else 0.0}


def plan_windows(jobs: Sequence[_Job], budget: int, per_job: int = 2) -> list[tuple[_Job, int]]:
    """This step's windows: at most ``per_job`` of each job, the job with the fewest windows left first, at
    most ``budget`` in all.

    A job with one window gets it in the next step whatever the others still have to do, and a heavy job
    adds at most ``per_job`` windows to a step that small ones share: the step, and so the wait of every
    request in it, stays short. Each job advances every step it is in (none starves).
    """
    order = sorted((j for j in jobs if j.remaining > 0), key=lambda j: (j.remaining, j.seq))
    plan: list[tuple[_Job, int]] = []
    for j in order:
        if budget <= 0:
            break
        take = min(per_job, j.remaining, budget)
        plan.append((j, take))
        budget -= take
    return plan


# -- the batcher --------------------------------------------------------------------------------------
class MicroBatcher:
    def __init__(self, engine: Engine | BatchFn, max_batch: int = 32, max_wait_ms: float = 5.0,
                 enabled: bool = True, n_best: int = 20, max_windows: int | None = None,
                 step_chars: int = 100_000, per_job: int | None = None) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be >= 1")
        if max_wait_ms < 0:
            raise ValueError("max_wait_ms must be >= 0")
        self.engine: Engine = engine if hasattr(engine, "tokenize") else PairEngine(engine, n_best)  # type: ignore[assignment,arg-type]
        self.max_batch = max_batch  # windows per step
        self.per_job = per_job or max_batch  # windows of one job per step
        self.max_wait = max_wait_ms / 1000.0
        self.enabled = enabled
        self.max_windows = max_windows  # per request; None: no budget
        self.step_chars = step_chars  # characters tokenized per step (at least one job's)
        self.stats = BatcherStats()
        self._pending: list[_Job] = []  # submitted, not yet taken by the consumer
        self._active: list[_Job] = []  # taken: being tokenized / computed
        self._in_step: set[int] = set()  # ids of the jobs the running step computes windows of
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._closed = True
        self._stopping = False
        self._busy = False
        # Requests the server has started reading but not yet submitted (see arriving_request()): while
        # there are none, a step does not wait out the window, so a lone client pays no batching delay.
        self.arriving = 0

    # -- lifecycle ---------------------------------------------------------------------------------
    async def start(self) -> None:
        if self._task is not None:
            return
        self._wakeup = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="qatune-batch")
        self._closed = False
        self._stopping = False
        self._task = asyncio.create_task(self._consume(), name="qatune-batcher")

    async def stop(self, timeout: float | None = None) -> None:
        """Refuse new jobs, finish the submitted ones, then stop the worker (waiting at most ``timeout`` s)."""
        if self._task is None:
            return
        self._closed = True
        self._stopping = True
        self._signal()
        try:
            await asyncio.wait_for(asyncio.shield(self._task), timeout)
        except asyncio.TimeoutError:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        finally:
            self._fail_all(BatcherClosed("the server shut down before this request was answered"))
            assert self._executor is not None
            self._executor.shutdown(wait=False)
            self._task = None

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def queued(self) -> int:
        """Requests submitted, not yet answered and not being computed in the step running."""
        return sum(1 for j in itertools.chain(self._pending, self._active)
                   if not j.dropped and id(j) not in self._in_step)

    @property
    def busy(self) -> bool:
        return self._busy

    # -- submitting --------------------------------------------------------------------------------
    async def submit(self, pairs: Sequence[tuple[str, str]], top_k: int | Sequence[int] = 1) -> list[list[Any]]:
        """Answers (a best-first list per pair) for one request's pairs; ``top_k`` is one int or one per pair.

        Cancelling the awaiting task drops the job: none of its windows is computed after the step running.
        """
        if self._closed:
            raise BatcherClosed("the server is shutting down")
        pairs = list(pairs)
        top_ks = [int(top_k)] * len(pairs) if isinstance(top_k, int) else [int(k) for k in top_k]
        if len(top_ks) != len(pairs):
            raise ValueError(f"{len(top_ks)} top_k values for {len(pairs)} questions")
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        job = _Job(pairs, top_ks, future, chars=sum(text_chars(item) for item in pairs))
        future.add_done_callback(lambda f: self._on_done(job, f))
        self._pending.append(job)
        self._signal()
        return await future

    def _on_done(self, job: _Job, future: asyncio.Future) -> None:
        if future.cancelled():
            job.dropped = True
            self.stats.dropped += 1
            self._signal()

    @contextmanager
    def arriving_request(self) -> Iterator[None]:
        """Marks a request that is being read and will likely ``submit`` soon: steps wait for it."""
        self.arriving += 1
        try:
            yield
        finally:
            self.arriving -= 1
            self._signal()  # re-check whether the window is still worth waiting for

    def _signal(self) -> None:
        if self._wakeup is not None:
            self._wakeup.set()

    async def _wait_wakeup(self, timeout: float | None) -> None:
        """Wait for the next submit, cancellation or arriving-request change, or ``timeout`` seconds."""
        assert self._wakeup is not None
        self._wakeup.clear()
        try:
            await asyncio.wait_for(self._wakeup.wait(), timeout)
        except asyncio.TimeoutError:
            pass

    # -- the consumer ------------------------------------------------------------------------------
    def _take_pending(self) -> None:
        self._active.extend(self._pending)
        self._pending.clear()
        self._active = [j for j in self._active if not j.dropped]

    def _ready_windows(self) -> int:
        return sum(min(self.per_job, j.remaining) if j.work is not None else 1 for j in self._active)

    async def _consume(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self._take_pending()
            if not self._active:
                if self._stopping:
                    break
                await self._wait_wakeup(None)
                continue
            if self.enabled and not self._stopping:
                deadline = loop.time() + self.max_wait
                # wait out the window only while there is room in the step and a request is on its way in
                while self.arriving > 0 and self._ready_windows() < self.max_batch:
                    remaining = deadline - loop.time()
                    if remaining <= 0:
                        break
                    await self._wait_wakeup(remaining)
                    self._take_pending()
                if not self._active:
                    continue
            jobs = list(self._active)
            assert self._executor is not None
            self._busy = True
            t0 = time.perf_counter()
            try:
                windows = await loop.run_in_executor(self._executor, self._step, jobs)
            except asyncio.CancelledError:  # stop() ran out of time: do not leave these requests hanging
                self._fail_all(BatcherClosed("the server shut down before this request was answered"))
                raise
            finally:
                self._busy = False
                self._in_step = set()
            self.stats.busy_s += time.perf_counter() - t0
            if windows:
                self.stats.batches += 1
                self.stats.windows += windows
                self.stats.largest_batch = max(self.stats.largest_batch, windows)
            for job in jobs:
                if job.finished:
                    self._resolve(job)
            self._active = [j for j in self._active if not j.finished and not j.dropped]

    def _resolve(self, job: _Job) -> None:
        self.stats.jobs += 1
        if job.error is not None:
            if not isinstance(job.error, WorkTooLarge):
                self.stats.errors += 1
            if not job.future.done():
                job.future.set_exception(job.error)
        else:
            self.stats.questions += len(job.pairs)
            if not job.future.done():
                job.future.set_result(job.result)

    # -- one step, in the worker thread --------------------------------------------------------------
    def _step(self, jobs: list[_Job]) -> int:
        """Tokenize, compute one step's windows, finish; returns the windows computed."""
        self._tokenize(jobs)
        live = [j for j in jobs if j.work is not None and not j.finished and not j.dropped]
        if not self.enabled:
            live = sorted(live, key=lambda j: (j.remaining, j.seq))[:1]
        plan = plan_windows(live, self.max_batch, self.per_job)
        self._in_step = {id(j) for j, _ in plan}
        parts = [(j, j.done_windows, j.done_windows + n) for j, n in plan]
        self._compute(parts)
        for j, _, hi in parts:
            if j.error is None:
                j.done_windows = hi
            if j.remaining == 0 and not j.finished:
                try:
                    j.result = self.engine.finish(j.work)
                except Exception as exc:  # noqa: BLE001 - handed to the waiting request
                    j.error = exc
        from qatune.runtime import release_free_memory

        release_free_memory()  # every step has other shapes: return freed heap pages so RSS stays flat
        return sum(hi - lo for _, lo, hi in parts)

    def _tokenize(self, jobs: list[_Job]) -> None:
        """Tokenize the oldest waiting job, then the others smallest first while under ``step_chars``.

        The oldest goes first whatever its size, so a long request is not passed over for ever by short
        ones that keep arriving; a step tokenizes at most that job and ``step_chars`` more.
        """
        new = [j for j in jobs if j.work is None and not j.dropped and not j.finished]
        if not new:
            return
        oldest = min(new, key=lambda j: j.seq)
        rest = sorted((j for j in new if j is not oldest), key=lambda j: (j.chars, j.seq))
        chars = 0
        for j in [oldest, *rest]:
            if j is not oldest:
                if chars + j.chars > self.step_chars:
                    break  # the rest waits for the next step
                chars += j.chars
            try:
                work = self.engine.tokenize(j.pairs, j.top_ks)
            except Exception as exc:  # noqa: BLE001 - handed to the waiting request
                j.error = exc
                continue
            if self.max_windows is not None and work.windows > self.max_windows:
                j.error = WorkTooLarge(work.windows, self.max_windows, self.engine.describe(work))
                self.stats.refused += 1
                continue
            j.work = work

    def _compute(self, parts: list[tuple[_Job, int, int]]) -> None:
        if not parts:
            return
        try:
            self.engine.compute([(j.work, lo, hi) for j, lo, hi in parts])
        except Exception as exc:  # noqa: BLE001 - handed to the waiting request
            if len(parts) > 1:  # one bad request must not fail its neighbours: retry them one by one
                for part in parts:
                    self._compute([part])
            else:
                parts[0][0].error = exc

    def _fail_all(self, exc: Exception) -> None:
        for job in itertools.chain(self._pending, self._active):
            if not job.future.done():
                self.stats.jobs += 1
                job.future.set_exception(exc)
        self._pending.clear()
        self._active.clear()
