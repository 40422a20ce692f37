"""`runner serve` under load: requests/s and latency at several client concurrencies, with
batching on and off, and the server's peak memory. Loopback only, bounded in requests and
time.

    python benchmarks/serve.py                      # trains a digits run first (about 20 s)
    python benchmarks/serve.py --run runs/digits --requests 3000 --time-limit 30

Each mode starts its own `runner serve` process (batching on: --max-batch 32 --wait-ms 2;
off: --max-batch 1), then for each concurrency C, C asyncio clients (aiohttp, the
lighter of the async clients runner's dependencies bring, one connection each) post one 28x28 PNG digit per request, back to back, until `--requests`
answers or `--time-limit` seconds. Latency is per request, send to answer, as the client
sees it; peak RSS is the server's VmHWM from /proc at the end. The client runs on the same
machine: on 2 cores its own work is part of what is measured.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]
MODES = {"on": ["--max-batch", "32", "--wait-ms", "2"], "off": ["--max-batch", "1"]}


def digit_png() -> bytes:
    from PIL import Image
    from sklearn.datasets import load_digits

    digit = (load_digits().images[7] * 16).clip(0, 255).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(digit).resize((28, 28)).save(out, format="PNG")
    return out.getvalue()


def train(folder: Path) -> Path:
    run = folder / "digits"
    command = [sys.executable, "-m", "runner", "run", str(REPO / "jobs" / "digits.toml"), "--set", "epochs=2",
               "--set", f"checkpoint.dir={run}", "--set", "threads=1", "--quiet"]  # fmt: skip
    subprocess.run(command, check=True, cwd=folder, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True)
    return run


def start(run: Path, args: list[str], threads: int) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "runner", "serve", str(run), "--port", "0", "--threads", str(threads), "--watch", "0", *args],
        env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    for line in proc.stdout:
        if m := re.search(r"Uvicorn running on (http://127\.0\.0\.1:\d+)", line):
            url = m.group(1)
            break
    else:
        raise SystemExit(f"runner serve did not start (exit {proc.wait()})")
    while httpx.get(f"{url}/readyz").status_code != 200:
        time.sleep(0.05)
    return proc, url


def peak_rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) / 1024  # type: ignore[union-attr]


async def load(url: str, body: bytes, concurrency: int, requests: int, time_limit: float) -> dict[str, float]:
    import aiohttp

    latencies: list[float] = []
    failures = 0
    deadline = time.monotonic() + time_limit
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(url, connector=connector, timeout=aiohttp.ClientTimeout(total=30)) as client:

        async def one_client() -> None:
            nonlocal failures
            while len(latencies) + failures < requests and time.monotonic() < deadline:
                sent = time.perf_counter()
                async with client.post("/v1/predict", data=body, headers={"Content-Type": "image/png"}) as r:
                    await r.read()
                    if r.status == 200:
                        latencies.append(time.perf_counter() - sent)
                    else:
                        failures += 1

        began = time.perf_counter()
        await asyncio.gather(*(one_client() for _ in range(concurrency)))
        elapsed = time.perf_counter() - began
    q = statistics.quantiles(latencies, n=100)
    return {"requests": len(latencies), "failures": failures, "rps": len(latencies) / elapsed,
            "p50_ms": q[49] * 1000, "p99_ms": q[98] * 1000}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, help="a trained run directory (default: train a digits run first)")
    parser.add_argument("--concurrency", default="1,16,64")
    parser.add_argument("--requests", type=int, default=2000, help="per concurrency level, at most")
    parser.add_argument("--time-limit", type=float, default=20, help="seconds per concurrency level, at most")
    parser.add_argument("--threads", type=int, default=1, help="the server's torch threads")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run = args.run or train(Path(tmp))
        body = digit_png()
        rows = []
        for mode, flags in MODES.items():
            proc, url = start(run, flags, args.threads)
            try:
                for c in map(int, args.concurrency.split(",")):
                    asyncio.run(load(url, body, c, 50, 10))  # warm-up
                    before = httpx.get(f"{url}/v1/model").json()["served"]
                    r = asyncio.run(load(url, body, c, args.requests, args.time_limit))
                    after = httpx.get(f"{url}/v1/model").json()["served"]
                    r["per_batch"] = (after["images"] - before["images"]) / (after["batches"] - before["batches"])
                    print(f"batching {mode}, {c} clients: {r}", file=sys.stderr)
                    rows.append((mode, c, r))
                rss = peak_rss_mb(proc.pid)
            finally:
                proc.terminate()
                proc.wait(30)
            rows = [(m, c, {**r, "rss": rss}) if m == mode else (m, c, r) for m, c, r in rows]
    print(
        "| batching | clients | requests | failed | requests/s | p50 ms | p99 ms | images per pass | server peak RSS |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for mode, c, r in rows:
        print(f"| {mode} | {c} | {r['requests']} | {r['failures']} | {r['rps']:,.0f} | {r['p50_ms']:.1f} | "
              f"{r['p99_ms']:.1f} | {r['per_batch']:.1f} | {r['rss']:.0f} MB |")  # fmt: skip


if __name__ == "__main__":
    main()
