"""Async micro-batcher: concurrent requests share one ``answer_batch`` call.

Each request submits a *job* (its (question, context) pairs and ``top_k``) to an asyncio queue. One
consumer task takes the first waiting job, then keeps collecting jobs for up to ``max_wait_ms`` or until
``max_batch`` questions are gathered (it does not wait when no other request is on its way in), and runs a single ``answer_batch`` over all of them in a worker
thread. Only one batch runs at a time (the model uses all torch threads; the tokenizer is not meant for
concurrent use), so under load the queue fills while a batch runs and the next batch is bigger: throughput
grows with load while a lone request waits at most ``max_wait_ms`` extra.

With ``enabled=False`` every job runs on its own (same single worker), for comparison.

``stop()`` refuses new jobs, finishes every job already queued and then ends the consumer, so a graceful
server shutdown answers all in-flight requests.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

# answer_batch(pairs, top_k) -> one list of answers (best first) per pair
BatchFn = Callable[[Sequence[tuple[str, str]], int], list[list[Any]]]


class BatcherClosed(RuntimeError):
    """The batcher is shutting down and takes no new work."""


@dataclass
class _Job:
    pairs: list[tuple[str, str]]
    top_k: int
    future: asyncio.Future
    enqueued: float = field(default_factory=time.perf_counter)


@dataclass
class BatcherStats:
    jobs: int = 0  # requests answered (or failed)
    questions: int = 0
    batches: int = 0  # answer_batch calls
    largest_batch: int = 0  # most questions in one call
    errors: int = 0
    busy_s: float = 0.0  # time spent inside answer_batch

    def to_dict(self) -> dict[str, Any]:
        return {"jobs": self.jobs, "questions": self.questions, "batches": self.batches,
                "largest_batch": self.largest_batch, "errors": self.errors, "busy_s": round(self.busy_s, 3),
                "mean_batch": round(self.questions / self.batches, 2) if self.batches else 0.0}


def pipeline_batch_fn(pipeline: Any, batch_size: int = 32) -> BatchFn:
    """Adapt ``QAPipeline.answer_batch`` (an Answer for top_k=1, a list otherwise) to lists of answers."""

    from qatune.runtime import release_free_memory

    def run(pairs: Sequence[tuple[str, str]], top_k: int) -> list[list[Any]]:
        out = pipeline.answer_batch(list(pairs), batch_size=batch_size, top_k=top_k)
        release_free_memory()  # every batch has other shapes: return freed heap pages so RSS stays flat
        return [r if isinstance(r, list) else [r] for r in out]

    return run


class MicroBatcher:
    def __init__(self, fn: BatchFn, max_batch: int = 32, max_wait_ms: float = 5.0, enabled: bool = True,
                 n_best: int = 20) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be >= 1")
        if max_wait_ms < 0:
            raise ValueError("max_wait_ms must be >= 0")
        self.fn = fn
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000.0
        self.enabled = enabled
        self.n_best = n_best  # any top_k up to this gives the same answers whatever top_k the batch runs with
        self.stats = BatcherStats()
        self._pending: deque[_Job | None] = deque()  # None: the stop marker
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._closed = True
        self._busy = False
        # Requests the server has started reading but not yet submitted (see arriving()): while there are
        # none, a batch does not wait out its window, so a lone client pays no batching delay.
        self.arriving = 0

    # -- lifecycle ---------------------------------------------------------------------------------
    async def start(self) -> None:
        if self._task is not None:
            return
        self._wakeup = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="qatune-batch")
        self._closed = False
        self._task = asyncio.create_task(self._consume(), name="qatune-batcher")

    async def stop(self, timeout: float | None = None) -> None:
        """Refuse new jobs, finish the queued ones, then stop the worker (waiting at most ``timeout`` s)."""
        if self._task is None:
            return
        self._closed = True
        self._put(None)  # FIFO: every job queued before the marker is answered first
        try:
            await asyncio.wait_for(asyncio.shield(self._task), timeout)
        except asyncio.TimeoutError:
            self._task.cancel()
            self._fail_pending(BatcherClosed("the server shut down before this request was answered"))
        finally:
            assert self._executor is not None
            self._executor.shutdown(wait=False)
            self._task = None

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def queued(self) -> int:
        """Jobs waiting for a batch (not counting the one running)."""
        return sum(1 for j in self._pending if j is not None)

    @property
    def busy(self) -> bool:
        return self._busy

    # -- submitting --------------------------------------------------------------------------------
    async def submit(self, pairs: Sequence[tuple[str, str]], top_k: int = 1) -> list[list[Any]]:
        """Answers (a best-first list per pair) for one request's pairs, batched with other requests."""
        if self._closed:
            raise BatcherClosed("the server is shutting down")
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        self._put(_Job(list(pairs), int(top_k), future))
        return await future

    @contextmanager
    def arriving_request(self) -> Iterator[None]:
        """Marks a request that is being read and will likely ``submit`` soon: batches wait for it."""
        self.arriving += 1
        try:
            yield
        finally:
            self.arriving -= 1
            if self._wakeup is not None:
                self._wakeup.set()  # re-check whether the window is still worth waiting for

    def _put(self, job: _Job | None) -> None:
        self._pending.append(job)
        assert self._wakeup is not None
        self._wakeup.set()

    async def _wait_for_work(self) -> None:
        """Wait until a job (or the stop marker) is pending."""
        while not self._pending:
            await self._wait_wakeup(None)

    async def _wait_wakeup(self, timeout: float | None) -> None:
        """Wait for the next submit or arriving-request change, or ``timeout`` seconds."""
        assert self._wakeup is not None
        self._wakeup.clear()
        try:
            await asyncio.wait_for(self._wakeup.wait(), timeout)
        except asyncio.TimeoutError:
            pass

    # -- the consumer ------------------------------------------------------------------------------
    async def _consume(self) -> None:
        loop = asyncio.get_running_loop()
        carry: _Job | None = None  # a job that did not fit into the previous batch starts the next one
        stopping = False
        while True:
            if carry is not None:
                job, carry = carry, None
            elif stopping:
                break
            else:
                await self._wait_for_work()
                job = self._pending.popleft()
                if job is None:
                    break
            batch = [job]
            size = len(job.pairs)
            if self.enabled:
                deadline = loop.time() + self.max_wait
                while size < self.max_batch and not stopping:
                    # jobs already pending are taken at once; otherwise wait out the rest of the window
                    if not self._pending:
                        remaining = deadline - loop.time()
                        if self.arriving <= 0 or remaining <= 0:
                            break  # nothing on its way in, or the window is over
                        await self._wait_wakeup(remaining)
                        continue
                    nxt = self._pending.popleft()
                    if nxt is None:
                        stopping = True  # answer what we have, then stop
                    elif size + len(nxt.pairs) > self.max_batch:
                        carry = nxt  # keep batches within max_batch
                        break
                    else:
                        batch.append(nxt)
                        size += len(nxt.pairs)
            await self._run(batch, loop)

    async def _run(self, jobs: list[_Job], loop: asyncio.AbstractEventLoop) -> None:
        jobs = [j for j in jobs if not j.future.done()]  # the client went away: skip its work
        if not jobs:
            return
        # Jobs whose top_k gives identical answers when run together (any top_k <= n_best) share a call.
        groups: dict[int, list[_Job]] = {}
        for j in jobs:
            groups.setdefault(j.top_k if j.top_k > self.n_best else 0, []).append(j)
        for group in groups.values():
            await self._run_group(group, loop)

    async def _run_group(self, jobs: list[_Job], loop: asyncio.AbstractEventLoop) -> None:
        top_k = max(j.top_k for j in jobs)
        pairs = [p for j in jobs for p in j.pairs]
        assert self._executor is not None
        self._busy = True
        t0 = time.perf_counter()
        try:
            results = await loop.run_in_executor(self._executor, self.fn, pairs, top_k)
            if len(results) != len(pairs):
                raise RuntimeError(f"answer_batch returned {len(results)} results for {len(pairs)} questions")
        except asyncio.CancelledError:  # stop() ran out of time: do not leave these requests hanging
            for j in jobs:
                if not j.future.done():
                    j.future.set_exception(BatcherClosed("the server shut down before this request was answered"))
            raise
        except Exception as exc:  # noqa: BLE001 - handed to the waiting request
            self._account(len(pairs), t0)
            if len(jobs) > 1:  # one bad request must not fail its neighbours: retry them one by one
                for j in jobs:
                    await self._run_group([j], loop)
                return
            self.stats.errors += 1
            self.stats.jobs += 1
            if not jobs[0].future.done():
                jobs[0].future.set_exception(exc)
            return
        finally:
            self._busy = False
        self._account(len(pairs), t0)
        pos = 0
        for j in jobs:
            part = results[pos: pos + len(j.pairs)]
            pos += len(j.pairs)
            self.stats.jobs += 1
            if not j.future.done():
                j.future.set_result([answers[: j.top_k] for answers in part])

    def _account(self, n: int, t0: float) -> None:
        self.stats.batches += 1
        self.stats.questions += n
        self.stats.largest_batch = max(self.stats.largest_batch, n)
        self.stats.busy_s += time.perf_counter() - t0

    def _fail_pending(self, exc: Exception) -> None:
        while self._pending:
            job = self._pending.popleft()
            if job is not None and not job.future.done():
                job.future.set_exception(exc)
