"""`iclevr train` through the CLI: every run-folder file, protection, resume, dry run, two processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TINY_MODEL
from typer.testing import CliRunner

from iclevr.cli.app import app
from iclevr.settings import CPU_PRESET

runner = CliRunner()


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_config(tmp_path: Path) -> Path:
    """A settings file for the 16x16 test UNet with object tokens like the CPU preset, on pixels (the CPU preset's
    latents would need an autoencoder trained on the test kit); no preset in it, so the CLI picks one."""
    cfg = tmp_path / "cfg.json"
    model = {
        **TINY_MODEL,
        "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"],
        "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"],
        "condition": "tokens",
        "design": "pixels",
    }
    cfg.write_text(
        json.dumps({"model": model, "sampler": {"sampler": "ddim", "steps": 2}, "train": {"log_every": 2, "lr": 1e-3}})
    )
    return cfg


def flat(text: str) -> str:
    return " ".join(text.split())  # Rich wraps long lines at the terminal width


def test_train_writes_the_run_folder_then_protects_and_resumes_it(course_kit, tmp_path, monkeypatch):
    from iclevr.weights import load_weights, read_info

    monkeypatch.setattr("iclevr.device.has_gpu", lambda: False)
    run = tmp_path / "run"
    args = [
        "train",
        "--config",
        str(tiny_config(tmp_path)),
        "--data-dir",
        str(course_kit),
        "--out",
        str(run),
        "--max-steps",
        "4",
        "--batch-size",
        "4",
        "--device",
        "cpu",
        "--p-uncond",
        "0.3",
    ]
    r = runner.invoke(app, args)
    out = flat(r.output)
    assert r.exit_code == 0, r.output + r.stderr
    assert out.startswith(f"iclevr train: preset {CPU_PRESET} (no --preset given and no CUDA GPU found")
    assert "12 images, 4 per step" in out and "3 steps/epoch" in out
    assert "done: max_steps=4 reached at step 4" in out
    settings = json.loads((run / "settings.json").read_text())
    assert settings["preset"] == CPU_PRESET and settings["train"]["p_uncond"] == 0.3 and settings["out"] == str(run)
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in rows] == [2, 4]
    assert set(rows[0]) == {"step", "epoch", "loss", "lr", "grad_norm", "images_per_s", "wall_s", "skipped_steps"}
    assert f"loss {rows[-1]['loss']:.4f}" in out
    assert list((run / "tb").glob("events.out.tfevents.*"))
    assert (run / "samples" / "epoch-0001.png").is_file() is False  # tiny: sample_every = 0, grid at the end
    assert [p.name for p in (run / "samples").iterdir()] == ["step-00000004.png"]
    assert sorted(p.name for p in (run / "state").iterdir()) == ["step-00000003.pt", "step-00000004.pt"]
    info = read_info(run / "weights" / "ema.safetensors")
    assert info.preset == CPU_PRESET and info.step == 4 and info.model.sample_size == 16
    model, _ = load_weights(run / "weights" / "model.safetensors")
    assert model.cfg.block_out_channels == tuple(TINY_MODEL["block_out_channels"])
    assert json.loads((run / "progress.json").read_text())["finished"] is True

    r = runner.invoke(app, args)  # the same command again must not clobber the run
    assert r.exit_code == 2
    assert f"pass --resume {run} to continue it, or --overwrite" in flat(r.stderr)

    r = runner.invoke(app, ["train", "--resume", str(run), "--max-steps", "6"])  # settings come from the run
    assert r.exit_code == 0, r.output + r.stderr
    assert "resuming" in flat(r.output) and "done: max_steps=6 reached at step 6" in flat(r.output)
    assert [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()] == [2, 4, 6]
    r = runner.invoke(app, ["train", "--resume", str(run), "--max-steps", "6"])
    assert r.exit_code == 0 and "nothing to train" in flat(r.output)


def test_dry_run_prints_resolved_settings(tmp_path):
    r = runner.invoke(
        app,
        [
            "train",
            "--preset",
            "seed",
            "--dry-run",
            "--lr",
            "3e-4",
            "--schedule",
            "cosine",
            "--prediction-type",
            "v_prediction",
            "--batch-size",
            "16",
            "--epochs",
            "3",
        ],
    )
    assert r.exit_code == 0, r.output
    s = json.loads(r.output)
    assert s["preset"] == "seed" and s["model"]["block_out_channels"] == [128, 128, 256, 256, 512, 512]
    assert s["train"]["lr"] == 3e-4 and s["train"]["batch_size"] == 16 and s["train"]["epochs"] == 3
    assert s["schedule"] == {
        "name": "cosine",
        "num_train_timesteps": 1000,
        "prediction_type": "v_prediction",
        "shift": 1.0,
    }


@pytest.mark.parametrize(
    "args,message",
    [
        (["--schedule", "cosinus"], "unknown noise schedule"),
        (["--prediction-type", "x0"], "prediction_type"),
        (["--batch-size", "64"], "exceeds the 12 training images"),
    ],
)
def test_bad_flags_are_one_line_errors(course_kit, tmp_path, args, message):
    r = runner.invoke(
        app,
        [
            "train",
            "--preset",
            "tiny",
            "--config",
            str(tiny_config(tmp_path)),
            "--data-dir",
            str(course_kit),
            "--out",
            str(tmp_path / "run"),
            "--max-steps",
            "1",
            *args,
        ],
    )
    assert r.exit_code == 2 and message in flat(r.stderr)
    assert "Traceback" not in r.output + r.stderr


@pytest.mark.slow
def test_two_processes_through_accelerate(course_kit, tmp_path):
    """`accelerate launch --multi_gpu --num_processes 2 ... --device cpu`: DDP over gloo on the CPU."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "-m",
        "iclevr",
        "train",
        "--preset",
        "tiny",
        "--config",
        str(tiny_config(tmp_path)),
        "--data-dir",
        str(course_kit),
        "--out",
        str(tmp_path / "run"),
        "--max-steps",
        "3",
        "--batch-size",
        "2",
        "--device",
        "cpu",
    ]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    out = flat(done.stdout)
    assert out.count("iclevr train: preset tiny") == 1  # printed by the main process only
    assert "4 per step (2 x 2 process(es)" in out
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in rows] == [2, 3]
    assert (tmp_path / "run" / "weights" / "ema.safetensors").is_file()
