"""The fresh-machine sample command, timed: `iclevr sample --labels "red sphere,cyan cylinder,cyan cube"` as a new
process with an empty ICLEVR_HOME and no runs, so it loads the packaged pretrained model (target: <= 15 s on 2 cores).

    python benchmarks/sample_fresh.py [--repeats 3] [--threads N] [--model PATH] [--out JSON]

Each repeat gets its own empty ICLEVR_HOME, checkpoints folder and working folder; the wall time covers the
whole process (Python start, imports, loading the weights, sampling, writing the PNG). --model points
ICLEVR_PACKAGED_MODEL at another file (a dry run before the real one exists); --threads sets OMP_NUM_THREADS
for the child (default: torch's own choice, all cores). Results: benchmarks/results/sample_fresh.json.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results" / "sample_fresh.json"
REPO = Path(__file__).resolve().parents[1]  # result files name paths relative to it (iclevr.fileio.portable)
LABELS = "red sphere,cyan cylinder,cyan cube"


def command() -> list[str]:
    """The installed `iclevr` console script (what a user types), else `python -m iclevr`."""
    script = shutil.which("iclevr")
    return [script] if script else [sys.executable, "-m", "iclevr"]


def one_run(model: Path, threads: int | None) -> dict:
    """Time one fresh `iclevr sample` process; its seconds and the line naming the model."""
    with tempfile.TemporaryDirectory(prefix="iclevr-fresh-") as tmp:
        tmp = Path(tmp)
        env = {
            **os.environ,
            "ICLEVR_HOME": str(tmp / "home"),
            "ICLEVR_CHECKPOINTS": str(tmp / "checkpoints"),
            "ICLEVR_PACKAGED_MODEL": str(model),
        }
        if threads:
            env["OMP_NUM_THREADS"] = str(threads)
        began = time.perf_counter()
        done = subprocess.run(
            [*command(), "sample", "--labels", LABELS], cwd=tmp, env=env, capture_output=True, text=True, timeout=600
        )
        seconds = time.perf_counter() - began
        if done.returncode != 0 or not (tmp / "samples.png").is_file():
            raise SystemExit(
                f"error: iclevr sample failed (exit {done.returncode}): "
                f"{(done.stderr or done.stdout).strip().splitlines()[-1:]}"
            )
        if (tmp / "home" / "kits").exists():
            raise SystemExit("error: the sample command rendered a kit on a fresh home")
    line = next((x for x in done.stdout.splitlines() if x.startswith("model: ")), "")
    return {"seconds": round(seconds, 2), "model_line": line}


def main(argv=None) -> int:
    """Run the repeats and write the JSON."""
    from iclevr.fileio import write_result_json
    from iclevr.paths import packaged_model_path
    from iclevr.studies.demo import machine_info

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3, help="Fresh processes to time.")
    p.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS of the child (default: unset).")
    p.add_argument("--model", type=Path, default=None, help="Packaged model file (default: the packaged one).")
    p.add_argument("--out", type=Path, default=RESULTS, help="JSON results file.")
    args = p.parse_args(argv)
    model = (args.model or packaged_model_path()).resolve()
    if not model.is_file():
        print(
            f"error: no packaged model at {model}; package one first (benchmarks/package_model.py) or pass --model",
            file=sys.stderr,
        )
        return 2
    runs = [one_run(model, args.threads) for _ in range(args.repeats)]
    seconds = [r["seconds"] for r in runs]
    result = {
        "command": f'iclevr sample --labels "{LABELS}"',
        "model": str(model),
        "runs": runs,
        "seconds": seconds,
        "median_s": statistics.median(seconds),
        "max_s": max(seconds),
        "threads": args.threads or "unset (torch default)",
        "load_avg_1min": round(os.getloadavg()[0], 2),
        "machine": machine_info("cpu"),
        "when": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    write_result_json(args.out, result, base=REPO)
    print(
        f"{runs[0]['model_line']}\nfresh `iclevr sample`: {', '.join(f'{s:.1f}' for s in seconds)} s "
        f"(median {result['median_s']:.1f} s) -> {args.out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
