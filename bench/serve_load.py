"""Load test for ``qatune serve``: N concurrent clients for T seconds, batching vs no batching.

Starts the server itself (a subprocess on a free loopback port, once per mode) unless ``--url`` points at a
running one, then runs asyncio + httpx clients that post SQuAD questions back to back. Reports requests/s,
p50/p95/p99 latency, errors, the batcher's mean batch size and the server's RSS (psutil, the process and its
children) in the first and the last 10 s of each run, as a side-by-side table::

    python bench/serve_load.py runs/lora --clients 1,8,32 --duration 60
    python bench/serve_load.py runs/lora --clients 4 --duration 5 --questions 50        # smoke
    python bench/serve_load.py --url http://127.0.0.1:8000 --server-pid 1234 --clients 16

Questions come from ``--data`` (default ../shared/data/squad/dev-v1.1.json.gz beside the checkout, else the
bundled sample). Client and server share this machine's cores: on a small machine say so with the numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import DEV as SHARED_DEV  # noqa: E402

SAMPLE_DEV = REPO / "qatune" / "resources" / "sample" / "dev.json"


# -- questions ----------------------------------------------------------------------------------------
def load_questions(data: str | None, n: int, seed: int = 0) -> tuple[list[dict[str, str]], str]:
    from qatune.data.squad.squad_schema import load_qa_examples

    path = Path(data) if data else (SHARED_DEV if SHARED_DEV.is_file() else SAMPLE_DEV)
    examples, _ = load_qa_examples(str(path), max_samples=None, split="validation")
    rng = random.Random(seed)
    rng.shuffle(examples)
    return [{"question": ex.question, "context": ex.context} for ex in examples[:n]], str(path)


# -- server process -----------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(run_dir: str, batching: bool, extra: list[str], log_path: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cmd = [sys.executable, "-m", "qatune", "serve", run_dir, "--port", str(port), "--no-access-log",
           "--log-level", "warning", *extra]
    if not batching:
        cmd.append("--no-batching")
    log = log_path.open("w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": str(REPO)})
    url = f"http://127.0.0.1:{port}"
    wait_ready(url, proc, log_path)
    return proc, url


def wait_ready(url: str, proc: subprocess.Popen | None = None, log_path: Path | None = None,
               timeout: float = 300) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise SystemExit(f"server exited ({proc.returncode}):\n{log_path.read_text() if log_path else ''}")
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise SystemExit(f"server at {url} not ready after {timeout:.0f} s")


def stop_server(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# -- RSS sampling -------------------------------------------------------------------------------------
class RssSampler(threading.Thread):
    def __init__(self, pid: int | None, interval: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.samples: list[tuple[float, float]] = []  # (time, MiB)
        self.halt = threading.Event()

    def run(self) -> None:
        if self.pid is None:
            return
        import psutil

        try:
            proc = psutil.Process(self.pid)
        except psutil.Error:
            return
        while not self.halt.is_set():
            try:
                rss = proc.memory_info().rss + sum(c.memory_info().rss for c in proc.children(recursive=True))
            except psutil.Error:
                return
            self.samples.append((time.monotonic(), rss / 2**20))
            self.halt.wait(self.interval)

    def window(self, t0: float, t1: float, first: bool, span: float = 10.0) -> float | None:
        lo, hi = (t0, t0 + span) if first else (t1 - span, t1)
        vals = [mb for t, mb in self.samples if lo <= t <= hi]
        return max(vals) if vals else None


# -- load ---------------------------------------------------------------------------------------------
@dataclass
class RunResult:
    mode: str
    clients: int
    duration: float = 0.0
    latencies: list[float] = field(default_factory=list)  # seconds, successful requests
    errors: int = 0
    error_examples: list[str] = field(default_factory=list)
    mean_batch: float | None = None
    rss_first_mb: float | None = None
    rss_last_mb: float | None = None

    def row(self) -> dict[str, Any]:
        lat = sorted(self.latencies)

        def pct(p: float) -> float | None:
            return round(1000 * lat[min(len(lat) - 1, int(p / 100 * len(lat)))], 1) if lat else None

        return {"mode": self.mode, "clients": self.clients, "requests": len(lat),
                "req_per_s": round(len(lat) / self.duration, 2) if self.duration else 0.0,
                "p50_ms": pct(50), "p95_ms": pct(95), "p99_ms": pct(99), "errors": self.errors,
                "mean_batch": self.mean_batch, "rss_first10s_mb": _r(self.rss_first_mb),
                "rss_last10s_mb": _r(self.rss_last_mb)}


def _r(x: float | None) -> float | None:
    return round(x, 1) if x is not None else None


async def _client_loop(client: Any, url: str, questions: list[dict[str, str]], start: int, end_at: float,
                       result: RunResult, headers: dict[str, str]) -> None:
    i = start
    while time.monotonic() < end_at:
        body = questions[i % len(questions)]
        i += 1
        t = time.perf_counter()
        try:
            r = await client.post(f"{url}/v1/answer", json=body, headers=headers)
            ok = r.status_code == 200
            if not ok and len(result.error_examples) < 3:
                result.error_examples.append(f"{r.status_code} {r.text[:200]}")
        except Exception as exc:  # noqa: BLE001 - counted, the run goes on
            ok = False
            if len(result.error_examples) < 3:
                result.error_examples.append(f"{type(exc).__name__}: {exc}")
        if ok:
            result.latencies.append(time.perf_counter() - t)
        else:
            result.errors += 1


async def run_load(url: str, questions: list[dict[str, str]], clients: int, duration: float, warmup: float,
                   headers: dict[str, str], result: RunResult) -> None:
    import httpx

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:
        if warmup > 0:  # not measured: connections, first-call costs
            scratch = RunResult(result.mode, clients)
            end = time.monotonic() + warmup
            await asyncio.gather(*(_client_loop(client, url, questions, k * 7, end, scratch, headers)
                                   for k in range(clients)))
        t0 = time.monotonic()
        end = t0 + duration
        await asyncio.gather(*(_client_loop(client, url, questions, k * 7, end, result, headers)
                               for k in range(clients)))
        result.duration = time.monotonic() - t0


def batcher_stats(url: str, headers: dict[str, str]) -> dict[str, Any]:
    import httpx

    try:
        return httpx.get(f"{url}/healthz", headers=headers, timeout=10).json().get("stats", {})
    except (httpx.HTTPError, ValueError):
        return {}


def measure(url: str, pid: int | None, mode: str, clients: int, args: argparse.Namespace,
            questions: list[dict[str, str]], headers: dict[str, str]) -> RunResult:
    result = RunResult(mode, clients)
    sampler = RssSampler(pid)
    sampler.start()
    before = batcher_stats(url, headers)
    t0 = time.monotonic()
    asyncio.run(run_load(url, questions, clients, args.duration, args.warmup, headers, result))
    t1 = time.monotonic()
    sampler.halt.set()
    sampler.join()
    after = batcher_stats(url, headers)
    batches = after.get("batches", 0) - before.get("batches", 0)
    if batches > 0:  # windows per step (servers before issue 12 counted questions per batch)
        unit = "windows" if "windows" in after else "questions"
        result.mean_batch = round((after.get(unit, 0) - before.get(unit, 0)) / batches, 2)
    result.rss_first_mb = sampler.window(t0, t1, first=True)
    result.rss_last_mb = sampler.window(t0, t1, first=False)
    return result


# -- report -------------------------------------------------------------------------------------------
COLUMNS = ["mode", "clients", "requests", "req_per_s", "p50_ms", "p95_ms", "p99_ms", "errors", "mean_batch",
           "rss_first10s_mb", "rss_last10s_mb"]


def print_table(rows: list[dict[str, Any]]) -> None:
    cells = [[str(r.get(c) if r.get(c) is not None else "-") for c in COLUMNS] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(COLUMNS)]
    print("  ".join(c.rjust(w) for c, w in zip(COLUMNS, widths, strict=True)))
    for row in cells:
        print("  ".join(v.rjust(w) for v, w in zip(row, widths, strict=True)))


def print_side_by_side(rows: list[dict[str, Any]]) -> None:
    by = {(r["mode"], r["clients"]): r for r in rows}
    levels = sorted({r["clients"] for r in rows})
    if not (any(m == "batching" for m, _ in by) and any(m == "no-batching" for m, _ in by)):
        return
    print("\nbatching vs no batching (req/s, p95 ms):")
    print(f"{'clients':>7}  {'batching':>18}  {'no-batching':>18}  {'speed-up':>8}")
    for n in levels:
        b, nb = by.get(("batching", n)), by.get(("no-batching", n))
        if not b or not nb:
            continue
        speed = f"{b['req_per_s'] / nb['req_per_s']:.2f}x" if nb["req_per_s"] else "-"
        print(f"{n:>7}  {b['req_per_s']:>8} / {str(b['p95_ms']):>7}  {nb['req_per_s']:>8} / {str(nb['p95_ms']):>7}  "
              f"{speed:>8}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", nargs="?", help="run directory to serve (not needed with --url)")
    p.add_argument("--url", help="benchmark this running server instead of starting one")
    p.add_argument("--server-pid", type=int, help="with --url: the server's pid, for RSS")
    p.add_argument("--modes", default="batching,no-batching", help="comma list of batching,no-batching")
    p.add_argument("--clients", default="1,8,32", help="comma list of concurrent client counts")
    p.add_argument("--duration", type=float, default=30.0, help="measured seconds per client count")
    p.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds before each run")
    p.add_argument("--data", help="SQuAD-format questions (default: shared dev-v1.1, else the bundled sample)")
    p.add_argument("--questions", type=int, default=500, help="distinct questions to cycle through")
    p.add_argument("--server-args", default="", help="extra `qatune serve` flags, e.g. '--threads 4 --max-batch 64'")
    p.add_argument("--api-key-env", help="send the key in this environment variable (and pass it to the server)")
    p.add_argument("--json", help="also write the rows to this JSON file")
    args = p.parse_args(argv)

    if not args.url and not args.run:
        p.error("give a run directory to serve, or --url of a running server")
    questions, source = load_questions(args.data, args.questions)
    levels = [int(x) for x in args.clients.split(",") if x.strip()]
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if any(m not in ("batching", "no-batching") for m in modes):
        p.error("--modes takes batching and/or no-batching")
    headers: dict[str, str] = {}
    extra = args.server_args.split()
    if args.api_key_env:
        headers["Authorization"] = f"Bearer {os.environ[args.api_key_env]}"
        extra += ["--api-key-env", args.api_key_env]
    import psutil

    print(f"# {len(questions)} questions from {source}; {args.duration:.0f} s per run, clients {levels}; "
          f"machine: {psutil.cpu_count()} CPUs, load generator on the same machine", flush=True)
    rows: list[dict[str, Any]] = []
    if args.url:
        wait_ready(args.url, timeout=30)
        for n in levels:
            res = measure(args.url, args.server_pid, "running-server", n, args, questions, headers)
            rows.append(res.row())
            _progress(res)
    else:
        log_dir = Path(os.environ.get("TMPDIR", "/tmp"))
        for mode in modes:
            log_path = log_dir / f"qatune-serve-load-{mode}-{os.getpid()}.log"
            proc, url = start_server(args.run, mode == "batching", extra, log_path)
            try:
                for n in levels:
                    res = measure(url, proc.pid, mode, n, args, questions, headers)
                    rows.append(res.row())
                    _progress(res)
            finally:
                stop_server(proc)
    print()
    print_table(rows)
    print_side_by_side(rows)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 1 if any(r["errors"] for r in rows) else 0


def _progress(res: RunResult) -> None:
    row = res.row()
    print(f"  {row['mode']:>12} clients={row['clients']:<3} {row['req_per_s']:>8} req/s  p50 {row['p50_ms']} ms  "
          f"p95 {row['p95_ms']} ms  errors {row['errors']}  mean batch {row['mean_batch']}", flush=True)
    for e in res.error_examples:
        print(f"    error: {e}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
