"""`iclevr eval` on a tiny random-weight model, `--images` mode, and `iclevr evaluator train|export`."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from iclevr.cli.app import app

runner = CliRunner()


@pytest.fixture
def tiny_run(tiny_model_cfg) -> Path:
    """A run folder under $ICLEVR_CHECKPOINTS holding a tiny random-weight UNet."""
    from iclevr.weights import save_weights
    from iclevr.model import build_model
    from iclevr.settings import SamplerSettings, ScheduleSettings

    torch.manual_seed(0)
    run = Path(os.environ["ICLEVR_CHECKPOINTS"]) / "tiny-run"
    save_weights(build_model(tiny_model_cfg), run / "weights" / "ema.safetensors", model_cfg=tiny_model_cfg,
                 schedule_cfg=ScheduleSettings(), sampler_cfg=SamplerSettings(sampler="ddim", steps=2),
                 preset="tiny", step=1)
    return run


@pytest.fixture
def random_evaluator(tmp_path) -> Path:
    """A random-weight evaluator in our safetensors format."""
    from iclevr.evaluation.evaluator import build_evaluator, save_own

    torch.manual_seed(0)
    return save_own(build_evaluator().eval(), tmp_path / "ev.safetensors", {"heldout": {}})


def _ok(result):
    assert result.exit_code == 0, result.output
    return result.output


def test_eval_writes_images_grids_and_report(tiny_run, course_kit, random_evaluator, tmp_path):
    out = tmp_path / "eval"
    text = _ok(runner.invoke(app, ["eval", "--data-dir", str(course_kit), "--evaluator", str(random_evaluator),
                                   "--seeds", "0,1", "--steps", "2", "--out", str(out), "--device", "cpu"]))
    for split in ("test", "new_test"):
        names = sorted(p.name for p in (out / "images" / split).iterdir())
        assert names == sorted(f"{i}.png" for i in range(32))
        assert (out / f"{split}_grid.png").is_file()
    from PIL import Image

    with Image.open(out / "images" / "test" / "0.png") as img:
        assert img.size == (64, 64)  # the 16x16 model's output is upsampled to the course size
    with Image.open(out / "test_grid.png") as img:
        assert img.size == (8 * 66 + 2, 4 * 66 + 2)  # make_grid: 8 per row, 4 rows, padding 2
    report = json.loads((out / "report.json").read_text())
    tests = json.loads((course_kit / "test.json").read_text())
    for split in ("test", "new_test"):
        r = report["splits"][split]
        assert [run["seed"] for run in r["runs"]] == [0, 1] and len(r["accuracy"]) == 2
        assert r["total"] == 2 * r["objects"] and 0 <= r["hits"] <= r["total"]
        assert all(len(run["per_condition"]) == 32 for run in r["runs"])
        assert set(r["per_class_recall"]) >= {"gray cube", "yellow cylinder"} and "binding" in r
        assert f"{r['mean']:.4f} ± {r['std']:.4f}" in text
    assert report["splits"]["test"]["conditions"] == tests
    assert report["splits"]["test"]["objects"] == sum(len(c) for c in tests)
    assert report["evaluator"]["kind"] == "own" and report["checkpoint"].endswith("ema.safetensors")
    assert report["sampler"]["sampler"] == "ddim" and report["sampler"]["steps"] == 2
    assert "most often missed" in text and "binding" in text


def test_eval_images_mode_with_course_checkpoint_in_data_dir(tiny_run, course_kit, tmp_path):
    from iclevr.evaluation.evaluator import build_evaluator

    torch.save({"model": build_evaluator().state_dict()}, course_kit / "checkpoint.pth")
    flat = tmp_path / "flat"
    flat.mkdir()
    from PIL import Image

    for i in range(32):
        Image.new("RGB", (128, 96), (10 * (i % 20), 100, 50)).save(flat / f"{i}.png")
    out = tmp_path / "ev-out"
    text = _ok(runner.invoke(app, ["eval", "--images", str(flat), "--split", "test", "--data-dir", str(course_kit),
                                   "--out", str(out)]))
    report = json.loads((out / "report.json").read_text())
    assert list(report["splits"]) == ["test"] and report["evaluator"]["kind"] == "course"
    assert report["evaluator"]["path"].endswith("checkpoint.pth") and report["checkpoint"] is None
    assert [run["seed"] for run in report["splits"]["test"]["runs"]] == ["images"]
    assert (out / "test_grid.png").is_file() and not (out / "images").exists()
    assert "hits / total" in text
    (flat / "31.png").unlink()
    result = runner.invoke(app, ["eval", "--images", str(flat), "--split", "test", "--data-dir", str(course_kit)])
    assert result.exit_code == 2 and "31.png" in result.output


def test_eval_default_out_and_first_use_own_evaluator(tiny_run, course_kit, tmp_path):
    config = tmp_path / "eval.toml"
    config.write_text("[own_evaluator]\npool = 16\nmax_steps = 1\nheldout = 4\nbatch_size = 8\nworkers = 1\n")
    text = _ok(runner.invoke(app, ["eval", "--data-dir", str(course_kit), "--split", "new_test", "--seeds", "3",
                                   "--steps", "1", "--config", str(config)]))
    assert "training the project's own evaluator" in text
    from iclevr.evaluation.evaluator import own_default_path

    assert own_default_path().is_file()
    report = json.loads((tiny_run / "eval" / "report.json").read_text())  # default: <run folder>/eval
    assert list(report["splits"]) == ["new_test"] and report["splits"]["new_test"]["runs"][0]["seed"] == 3
    assert len(list((tiny_run / "eval" / "images" / "new_test").glob("*.png"))) == 32
    # --images on the per-split folder just written scores the same split without sampling
    text = _ok(runner.invoke(app, ["eval", "--images", str(tiny_run / "eval" / "images"), "--split", "new_test",
                                   "--data-dir", str(course_kit), "--out", str(tmp_path / "again")]))
    assert "training the project's own evaluator" not in text  # cached
    assert (tmp_path / "again" / "report.json").is_file()


def test_malicious_evaluator_is_refused_and_never_runs(course_kit, tmp_path):
    class Evil:
        def __reduce__(self):
            return (open, (str(tmp_path / "pwned.txt"), "w"))

    torch.save({"model": Evil()}, tmp_path / "checkpoint.pth")
    result = runner.invoke(app, ["evaluator", "export", "--evaluator", str(tmp_path / "checkpoint.pth"),
                                 "--out", str(tmp_path / "copy.pth")])
    assert result.exit_code == 2 and "refused" in result.output
    assert not (tmp_path / "pwned.txt").exists() and not (tmp_path / "copy.pth").exists()
    shutil.copy(tmp_path / "checkpoint.pth", course_kit / "checkpoint.pth")
    result = runner.invoke(app, ["eval", "--images", str(tmp_path), "--split", "test", "--data-dir",
                                 str(course_kit)])
    assert result.exit_code == 2 and not (tmp_path / "pwned.txt").exists()


def test_evaluator_train_and_export(tmp_path):
    out = tmp_path / "own.safetensors"
    text = _ok(runner.invoke(app, ["evaluator", "train", "--pool", "16", "--steps", "1", "--heldout", "4",
                                   "--out", str(out), "--config", str(_write(tmp_path / "c.json",
                                                                             {"batch_size": 8, "workers": 1}))]))
    assert out.is_file() and "held-out" in text and "1-3 objects, 64x48 -> 64x64" in text
    text = _ok(runner.invoke(app, ["evaluator", "export", "--evaluator", str(out), "--out",
                                   str(tmp_path / "checkpoint.pth")]))
    raw = torch.load(tmp_path / "checkpoint.pth", weights_only=True)
    assert list(raw) == ["model"] and raw["model"]["fc.0.weight"].shape == (24, 512)
    result = runner.invoke(app, ["evaluator", "export", "--out", str(tmp_path / "x.pth")])
    assert result.exit_code == 2 and "iclevr evaluator train" in result.output  # no cached evaluator yet


def _write(path: Path, data: dict) -> Path:
    path.write_text(json.dumps(data))
    return path
