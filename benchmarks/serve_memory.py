"""Does `iclevr serve` keep its memory over a hundred requests in a row? (issue 28)

Starts `python -m iclevr serve --port 0` with the packaged model from an empty folder, then sends --requests
generate requests one after the other over HTTP (one image each, the model's default sampler, a new seed
each time, the scene cycling through the course's test-like conditions). Every --abandon-th request is
dropped after its first frame, like a browser closed mid-generation, which exercises the cancel path. The
server's resident memory (VmRSS from /proc) is read after each request; the growth that matters is from
request 10 (warm: allocator pools and caches filled) to the last.

    python benchmarks/serve_memory.py [--requests 100] [--abandon 10]

Results go to benchmarks/results/serve_memory.json.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "serve_memory.json"
SCENES = [
    ["red sphere"],
    ["cyan cube", "gray cylinder"],
    ["red sphere", "cyan cylinder", "cyan cube"],
    ["yellow cube", "purple sphere", "blue cylinder"],
]


def rss_mib(pid: int) -> float:
    """Resident memory of a process in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def full(url: str, body: dict) -> str:
    """One request read to its terminal event; returns that event's type."""
    req = urllib.request.Request(url + "api/generate", data=json.dumps(body).encode(), method="POST")
    with urllib.request.urlopen(req, timeout=300) as r:
        return json.loads(r.read().decode().strip().splitlines()[-1])["type"]


def abandoned(url: str, body: dict) -> str:
    """One request dropped after its first frame (a closed browser tab)."""
    host, port = url.removeprefix("http://").rstrip("/").split(":")
    data = json.dumps(body).encode()
    with socket.create_connection((host, int(port)), timeout=300) as s:
        s.sendall(
            b"POST /api/generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(data)}\r\n\r\n".encode()
            + data
        )
        seen = b""
        while b'"frame"' not in seen:
            seen += s.recv(65536)
    return "abandoned"


def main() -> None:
    """Start the server, send the requests, record RSS, write the JSON."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=100)
    ap.add_argument("--abandon", type=int, default=10, help="Drop every N-th request after its first frame.")
    args = ap.parse_args()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ICLEVR_")}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as folder:
        proc = subprocess.Popen(
            [sys.executable, "-m", "iclevr", "serve", "--port", "0"],
            cwd=folder,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        url = next(line.split()[2] for line in proc.stdout if line.startswith("serving on "))
        rows, began = [], time.perf_counter()
        try:
            for k in range(1, args.requests + 1):
                body = {"objects": SCENES[k % len(SCENES)], "seed": k, "num": 1}
                end = abandoned(url, body) if args.abandon and k % args.abandon == 0 else full(url, body)
                rows.append({"request": k, "end": end, "rss_mib": round(rss_mib(proc.pid), 1)})
                print(rows[-1], flush=True)
        finally:
            proc.terminate()
            code = proc.wait(60)
    rss = {r["request"]: r["rss_mib"] for r in rows}
    warm = min(10, args.requests)
    out = {
        "command": "python benchmarks/serve_memory.py " + " ".join(sys.argv[1:]),
        "model": "the packaged model, its stored sampler, one image per request",
        "load_1min_before_after": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "seconds": round(time.perf_counter() - began, 1),
        "exit_code_after_sigterm": code,
        "ends": {e: sum(r["end"] == e for r in rows) for e in {r["end"] for r in rows}},
        "rss_mib_first": rss[1],
        "rss_mib_at_warm": rss[warm],
        "rss_mib_last": rss[args.requests],
        "rss_mib_max": max(rss.values()),
        "growth_warm_to_last_mib": round(rss[args.requests] - rss[warm], 1),
        "rows": rows,
    }
    RESULTS.write_text(json.dumps(out, indent=2) + "\n")
    print({k: v for k, v in out.items() if k != "rows"})


if __name__ == "__main__":
    main()
