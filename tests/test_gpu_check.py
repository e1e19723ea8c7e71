"""benchmarks/gpu_check.sh in its CPU mode (toy sizes): every part runs and the JSON it writes holds each
measurement; the token design's candidate file is a float16 packaged file of the tokens design."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_runs_on_the_cpu_and_writes_every_measurement(tmp_path):
    from iclevr.weights import read_info

    out = tmp_path / "out"
    env = {**os.environ, "OUT": str(out), "PYTHON": sys.executable, "OMP_NUM_THREADS": "1", "TMPDIR": str(tmp_path)}
    done = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--cpu"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads((out / "gpu_check.json").read_text())
    assert summary["mode"].startswith("tiny") and summary["machine"]["cores"] >= 1

    rows = {(r["loop"], r["precision"]): r for r in summary["train_speed"]}
    assert set(rows) == {("seed", "fp16"), ("seed", "bf16"), ("ours", "fp16"), ("ours", "bf16")}
    assert all(r["images_per_s"] > 0 and r["peak_mib"] > 0 and r["batch"] == 8 for r in rows.values())
    assert rows["seed", "fp16"]["params_M"] == rows["ours", "fp16"]["params_M"]  # the same UNet in both loops

    sampling = {r["sampler"]: r for r in summary["sampling"]}
    assert set(sampling) == {"ddpm", "dpmpp-sde"} and sampling["dpmpp-sde"]["steps"] == 20
    assert all(r["images"] == 32 and r["seconds"] > 0 for r in sampling.values())

    tokens = summary["tokens64"]
    assert tokens["steps"] == 4 and set(tokens["accuracy"]) == {"val", "test", "new_test"}
    assert all(0 <= a <= 1 for a in tokens["accuracy"].values())
    info = read_info(out / tokens["file"])
    assert info.model.condition == "tokens" and info.packaged["steps"] == 4
    assert (out / "tokens_metrics.jsonl").is_file() and (out / "tokens.toml").is_file()
    # issue 29: no epoch budget, so on a GPU the cosine LR spans the time budget (not the preset's 100 epochs)
    trained = json.loads((out / "tokens_settings.json").read_text())
    assert trained["preset"] == "small-tokens" and trained["train"]["epochs"] is None
    assert 0 <= tokens["lr_last_over_peak"] < 1
    assert not list(tmp_path.glob("iclevr-gpu-check.*")), "the work folder was left behind"
