"""Intake throughput of `handler-cli serve` against a bare endpoint on the same stack.

    python bench/bench_serve.py [--requests 5000] [--concurrency 50] [--workers 2] [--rounds 3]
                                [--drain]

Starts two servers on loopback, each in its own process: a bare Starlette app on uvicorn
that reads the body and answers 202 without storing anything, and `serve` itself (local
backends, a temporary data dir, bearer token). This process is the client: `--concurrency`
keep-alive connections posting distinct support requests, with a small raw HTTP/1.1 client
so the client is not what is measured. It prints throughput and p50/p99 latency of both,
their ratio, and checks that every 202 is in the store (stored == accepted, no id twice).
Both endpoints get the same warm-up first, then rounds alternate between them (so noise from
other processes falls on both) and the median round of each is reported.
Aims (issue 4): intake >= 60% of the bare endpoint's throughput, p99 < 50 ms.

`--drain` then waits for the workers to run the whole chain on every request and counts
the tickets. `--signed` signs each request (Standard Webhooks) instead of a bearer token.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TOKEN = "bench-token-0123456789abcdef"
SECRET = "whsec_MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="
ROOT = Path(__file__).resolve().parents[1]


# --- the bare endpoint (run in its own process with --bare-server) --------------------------


def bare_server(port: int) -> None:
    """Same stack and uvicorn options as `serve`; reads the body, stores nothing."""
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def receive(request: Request) -> JSONResponse:
        await request.body()
        return JSONResponse({"request_id": "req_bare", "status_url": "/requests/req_bare",
                             "status": "queued"}, status_code=202)

    app = Starlette(routes=[Route("/webhook/request", receive, methods=["POST"])])
    uvicorn.run(app, host="127.0.0.1", port=port, lifespan="on", access_log=False,
                server_header=False, log_level="warning")


# --- the client -----------------------------------------------------------------------------


@dataclass
class Result:
    status: int
    latency: float
    body: bytes


def payloads(n: int, start: int) -> list[bytes]:
    return [json.dumps({
        "source": "contact",
        "objet": "Paiement refusé",
        "description": ("Bonjour, mon paiement par carte a été refusé hier alors que ma carte "
                        f"est valide. Pouvez-vous vérifier mon compte ? Merci. (n°{start + i})"),
        "user_email": f"client{(start + i) % 500}@example.fr",
        "user_name": "Claire Martin",
    }, ensure_ascii=False).encode() for i in range(n)]


def request_bytes(port: int, body: bytes, signed: bool, n: int) -> bytes:
    headers = {"Host": f"127.0.0.1:{port}", "Content-Type": "application/json",
               "Content-Length": str(len(body))}
    if signed:
        from handler_cli.webhook_auth import signed_headers

        headers.update(signed_headers(SECRET, f"msg_{n}", body))
    else:
        headers["Authorization"] = f"Bearer {TOKEN}"
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return f"POST /webhook/request HTTP/1.1\r\n{head}\r\n".encode() + body


async def _connection(port: int, jobs: list[bytes], results: list[Result]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while jobs:
            raw = jobs.pop()
            started = time.perf_counter()
            writer.write(raw)
            status = int((await reader.readline()).split()[1])
            length = 0
            while (line := await reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            body = await reader.readexactly(length)
            results.append(Result(status, time.perf_counter() - started, body))
    finally:
        writer.close()


async def _load(port: int, raws: list[bytes], concurrency: int) -> tuple[float, list[Result]]:
    jobs = list(reversed(raws))
    results: list[Result] = []
    started = time.perf_counter()
    await asyncio.gather(*(_connection(port, jobs, results) for _ in range(concurrency)))
    return time.perf_counter() - started, results


def load(port: int, bodies: list[bytes], concurrency: int, signed: bool, first: int
         ) -> tuple[float, list[Result]]:
    raws = [request_bytes(port, b, signed, first + i) for i, b in enumerate(bodies)]
    return asyncio.run(_load(port, raws, concurrency))


# --- orchestration ----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_up(port: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise SystemExit("server did not start")


def summary(name: str, wall: float, results: list[Result]) -> dict[str, Any]:
    lat = sorted(r.latency for r in results)
    return {
        "endpoint": name,
        "requests": len(results),
        "seconds": round(wall, 3),
        "throughput_rps": round(len(results) / wall, 1),
        "p50_ms": round(statistics.median(lat) * 1000, 2),
        "p99_ms": round(lat[max(0, int(len(lat) * 0.99) - 1)] * 1000, 2),
        "codes": sorted({r.status for r in results}),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--workers", type=int, default=2, help="worker threads of serve")
    parser.add_argument("--warmup", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds; median")
    parser.add_argument("--signed", action="store_true")
    parser.add_argument("--drain", action="store_true")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--bare-server", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.bare_server:
        bare_server(args.bare_server)
        return 0

    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        data_dir = Path(tmp) / "data"
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("HUBSPOT_", "R2_", "CLICKUP_", "SMTP_", "ANTHROPIC_",
                                    "HANDLER_", "WEBHOOK_", "IMAP_"))}
        env.update(HANDLER_DATA_DIR=str(data_dir), HANDLER_ENV_FILE=str(Path(tmp) / "no.env"),
                   HANDLER_LOG_LEVEL="WARNING", PYTHONPATH=str(ROOT))
        env.update(WEBHOOK_SECRET=SECRET) if args.signed else env.update(WEBHOOK_TOKEN=TOKEN)

        bare_port, serve_port = free_port(), free_port()
        bare = subprocess.Popen([sys.executable, __file__, "--bare-server", str(bare_port)],
                                env=env)
        serve = subprocess.Popen(
            [sys.executable, "-m", "handler_cli.server", "--port", str(serve_port),
             "--workers", str(args.workers)], env=env, stderr=subprocess.DEVNULL)
        try:
            wait_up(bare_port, bare)
            wait_up(serve_port, serve)
            warm = payloads(args.warmup, 0)
            for port in (bare_port, serve_port):
                load(port, warm, args.concurrency, args.signed, 0)
            # Rounds alternate the two endpoints, so a noisy neighbour hits both alike;
            # each endpoint's round with the median throughput is reported.
            rounds: dict[str, list[tuple[float, list[Result]]]] = {"bare": [], "serve": []}
            for n in range(args.rounds):
                first = args.warmup + n * args.requests
                bodies = payloads(args.requests, first)
                for name, port in (("bare", bare_port), ("serve", serve_port)):
                    rounds[name].append(load(port, bodies, args.concurrency, args.signed,
                                             first))
            stats = []
            for name, runs in rounds.items():
                runs.sort(key=lambda run: run[0])
                wall, results = runs[len(runs) // 2]
                stats.append({**summary(name, wall, results),
                              "rounds_rps": [round(len(r) / w, 1) for w, r in runs]})

            accepted = [json.loads(r.body)["request_id"] for _, results in rounds["serve"]
                        for r in results if r.status == 202]
            with sqlite3.connect(data_dir / "requests.sqlite3") as db:
                stored = {rid for (rid,) in db.execute("SELECT request_id FROM requests")}
            check = {
                "accepted": len(accepted),
                "distinct_ids": len(set(accepted)),
                "stored": len(stored) - args.warmup,  # the serve warm-up posts are stored too
                "all_accepted_stored": set(accepted) <= stored,
            }
            drained: dict[str, Any] = {}
            if args.drain:
                started = time.perf_counter()
                total = len(stored)
                while True:
                    with sqlite3.connect(data_dir / "requests.sqlite3") as db:
                        done = db.execute("SELECT COUNT(*) FROM requests WHERE status IN "
                                          "('done', 'failed')").fetchone()[0]
                    if done == total:
                        break
                    time.sleep(0.5)
                with sqlite3.connect(data_dir / "crm.sqlite3") as db:
                    tickets = db.execute("SELECT COUNT(*) FROM tickets").fetchone()[0]
                drained = {"processed": total, "tickets": tickets,
                           "drain_seconds_after_load": round(time.perf_counter() - started, 1)}
        finally:
            for proc in (bare, serve):
                proc.terminate()
                proc.wait(30)

    ratio = stats[1]["throughput_rps"] / stats[0]["throughput_rps"]
    ok_store = (check["accepted"] == args.requests * args.rounds == check["distinct_ids"]
                == check["stored"] and check["all_accepted_stored"])
    report = {"requests": args.requests, "concurrency": args.concurrency,
              "workers": args.workers, "auth": "signature" if args.signed else "bearer",
              "cpus": os.cpu_count(), "endpoints": stats, "ratio": round(ratio, 3),
              "store_check": check, **({"drain": drained} if drained else {})}
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"{args.requests} posts x {args.rounds} rounds, concurrency {args.concurrency}, "
              f"serve with {args.workers} worker thread(s) (in its worker process), {report['auth']} auth, "
              f"{os.cpu_count()} CPUs (median round shown)")
        print(f"{'endpoint':<8} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8}  codes  rounds req/s")
        for s in stats:
            print(f"{s['endpoint']:<8} {s['throughput_rps']:>9.1f} {s['p50_ms']:>8.2f} "
                  f"{s['p99_ms']:>8.2f}  {s['codes']}  {s['rounds_rps']}")
        print(f"intake / bare throughput: {ratio:.0%} (aim >= 60%); serve p99 "
              f"{stats[1]['p99_ms']} ms (aim < 50 ms)")
        print(f"stored == accepted: {check['stored']} == {check['accepted']} "
              f"({check['distinct_ids']} distinct ids) -> {'OK' if ok_store else 'MISMATCH'}")
        if drained:
            print(f"drained: {drained['processed']} requests processed, {drained['tickets']} "
                  f"tickets, {drained['drain_seconds_after_load']} s after the load ended")
    return 0 if ok_store else 1


if __name__ == "__main__":
    sys.exit(main())
