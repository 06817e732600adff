"""Hostile load for ``qatune serve``: one client sends maximal requests in a loop while normal clients send
ordinary ones. Reports the normal clients' p50/p95 latency, requests/s and errors, and what the hostile client
got back (status codes, timeouts), side by side for each server::

    python bench/serve_hostile.py /tmp/serve-run --servers before=/tmp/serve-before,after=. --duration 40

``--servers`` names checkouts to serve from (``label=path``; the server runs with ``PYTHONPATH=path``), so
the same command measures the old and the new code on the same model. The hostile request is ``--hostile``:

- ``issue``: 10 questions x 99,000-character contexts (under 1 MiB, inside the limits before issue 12);
- ``fits``: one 99,000-character context, the largest request the current default limits accept.

The hostile client gives up after ``--hostile-timeout`` seconds (it disconnects and sends the next one), as an
impatient or malicious client does; normal clients give up after ``--timeout`` seconds (counted as errors).
Contexts are generated filler text. Client and server share this machine's cores: say so with the numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_load import free_port, load_questions, wait_ready  # noqa: E402

FILLER = "The committee met again on Tuesday to discuss the budget for the coming year and the new roads. "


def hostile_body(kind: str) -> dict[str, Any]:
    ctx = (FILLER * (99_000 // len(FILLER) + 1))[:99_000]
    if kind == "issue":
        return {"questions": [{"question": f"What did the committee discuss ({i})?", "context": ctx}
                              for i in range(10)]}
    return {"question": "What did the committee discuss?", "context": ctx}


def start(run: str, repo: str, extra: list[str], log_path: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cmd = [sys.executable, "-m", "qatune", "serve", run, "--port", str(port), "--no-access-log",
           "--log-level", "warning", *extra]
    root = Path(repo).resolve()  # `python -m` puts the working directory first on sys.path: run from there
    env = {**os.environ, "PYTHONPATH": str(root)}
    proc = subprocess.Popen(cmd, stdout=log_path.open("w"), stderr=subprocess.STDOUT, env=env, cwd=root)
    url = f"http://127.0.0.1:{port}"
    wait_ready(url, proc, log_path)
    return proc, url


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:  # the old server keeps computing abandoned work: do not wait for it
        proc.kill()
        proc.wait()


async def normal_client(client: Any, url: str, questions: list[dict[str, str]], start_at: int, end_at: float,
                        timeout: float, out: dict[str, Any]) -> None:
    i = start_at
    while time.monotonic() < end_at:
        body = questions[i % len(questions)]
        i += 1
        t = time.perf_counter()
        try:
            r = await client.post(f"{url}/v1/answer", json=body, timeout=timeout)
            status = str(r.status_code)
        except Exception as exc:  # noqa: BLE001 - counted
            status = type(exc).__name__
        if status == "200":
            out["latencies"].append(time.perf_counter() - t)
        else:
            out["errors"][status] += 1


async def hostile_client(client: Any, url: str, body: bytes, end_at: float, timeout: float,
                         out: dict[str, Any]) -> None:
    while time.monotonic() < end_at:
        try:
            r = await client.post(f"{url}/v1/answer", content=body, timeout=timeout,
                                  headers={"Content-Type": "application/json"})
            status = str(r.status_code)
        except Exception as exc:  # noqa: BLE001 - a timeout is the client giving up (disconnecting)
            status = "gave up" if "Timeout" in type(exc).__name__ else type(exc).__name__
        out["hostile"][status] += 1


async def load(url: str, questions: list[dict[str, str]], args: argparse.Namespace) -> dict[str, Any]:
    import httpx

    out: dict[str, Any] = {"latencies": [], "errors": collections.Counter(), "hostile": collections.Counter()}
    body = json.dumps(hostile_body(args.hostile)).encode()
    limits = httpx.Limits(max_connections=args.clients + 2, max_keepalive_connections=args.clients + 2)
    async with httpx.AsyncClient(limits=limits) as normal, httpx.AsyncClient() as hostile:
        t0 = time.monotonic()
        end = t0 + args.duration
        tasks = [normal_client(normal, url, questions, k * 7, end, args.timeout, out) for k in range(args.clients)]
        if args.hostile != "none":
            tasks.append(hostile_client(hostile, url, body, end, args.hostile_timeout, out))
        await asyncio.gather(*tasks)
        out["duration"] = time.monotonic() - t0
    return out


def stats(url: str) -> dict[str, Any]:
    """The batcher's stats, and the window budget (None: a server from before issue 12 has none)."""
    import httpx

    try:
        out = dict(httpx.get(f"{url}/healthz", timeout=10).json().get("stats", {}))
        out["budget"] = httpx.get(f"{url}/v1/model", timeout=10).json()["serving"].get("max_request_windows")
        return out
    except (httpx.HTTPError, ValueError, KeyError):
        return {}


def row(label: str, out: dict[str, Any], server_stats: dict[str, Any]) -> dict[str, Any]:
    lat = sorted(out["latencies"])

    def pct(p: float) -> float | None:
        return round(1000 * lat[min(len(lat) - 1, int(p / 100 * len(lat)))]) if lat else None

    return {"server": label, "ok": len(lat), "req_per_s": round(len(lat) / out["duration"], 2),
            "p50_ms": pct(50), "p95_ms": pct(95), "errors": sum(out["errors"].values()),
            "error_kinds": dict(out["errors"]), "hostile": dict(out["hostile"]),
            "windows": server_stats.get("windows"), "dropped": server_stats.get("dropped"),
            "refused": server_stats.get("refused"), "window_budget": server_stats.get("budget"),
            "measured_s": round(out["duration"], 1)}


def print_side_by_side(rows: list[dict[str, Any]]) -> None:
    keys = ["ok", "req_per_s", "p50_ms", "p95_ms", "errors", "error_kinds", "hostile", "windows", "dropped",
            "refused", "window_budget", "measured_s"]
    width = max(24, *(len(json.dumps(r[k])) for r in rows for k in keys)) + 2
    print(f"{'':<12}" + "".join(f"{r['server']:>{width}}" for r in rows))
    for k in keys:
        print(f"{k:<12}" + "".join(f"{json.dumps(r[k]) if isinstance(r[k], dict) else str(r[k]):>{width}}"
                                    for r in rows))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="run directory to serve")
    p.add_argument("--servers", default="current=.", help="comma list of label=checkout to serve from")
    p.add_argument("--clients", type=int, default=16, help="normal clients (default 16)")
    p.add_argument("--hostile", choices=["issue", "fits", "none"], default="issue")
    p.add_argument("--duration", type=float, default=40.0, help="measured seconds per server")
    p.add_argument("--timeout", type=float, default=30.0, help="a normal client gives up after this (an error)")
    p.add_argument("--hostile-timeout", type=float, default=10.0, help="the hostile client gives up after this")
    p.add_argument("--data", help="SQuAD-format questions for normal clients (default: shared dev-v1.1)")
    p.add_argument("--questions", type=int, default=500)
    p.add_argument("--server-args", default="", help="extra `qatune serve` flags for every server")
    p.add_argument("--json", help="also write the rows to this JSON file")
    args = p.parse_args(argv)

    questions, source = load_questions(args.data, args.questions)
    servers = [s.split("=", 1) for s in args.servers.split(",") if s.strip()]
    print(f"# {args.clients} normal clients ({len(questions)} questions from {source}) + 1 hostile client "
          f"({args.hostile}); {args.duration:.0f} s per server; normal timeout {args.timeout:.0f} s, hostile "
          f"timeout {args.hostile_timeout:.0f} s; {os.cpu_count()} CPUs shared by clients and server", flush=True)
    rows = []
    for label, repo in servers:
        log_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"qatune-serve-hostile-{label}-{os.getpid()}.log"
        proc, url = start(str(Path(args.run).resolve()), repo, args.server_args.split(), log_path)
        try:
            out = asyncio.run(load(url, questions, args))
            rows.append(row(label, out, stats(url)))
        finally:
            stop(proc)
        r = rows[-1]
        print(f"  {label}: {r['req_per_s']} req/s, p50 {r['p50_ms']} ms, p95 {r['p95_ms']} ms, errors {r['errors']} "
              f"{r['error_kinds']}; hostile {r['hostile']}", flush=True)
    print()
    print_side_by_side(rows)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
