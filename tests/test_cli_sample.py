"""`iclevr sample` and `iclevr denoise-trace` through the CLI: files written, numbers printed, clear errors."""

import json
import os
from pathlib import Path

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from iclevr.cli.app import app

runner = CliRunner()


@pytest.fixture
def weights(tmp_path, tiny_model_cfg):
    """A random-weight tiny model saved with our metadata (stored sampler: ddim, 6 steps)."""
    from iclevr.model import build_model
    from iclevr.settings import SamplerSettings, ScheduleSettings
    from iclevr.weights import save_weights

    torch.manual_seed(0)
    return save_weights(
        build_model(tiny_model_cfg),
        tmp_path / "w.safetensors",
        model_cfg=tiny_model_cfg,
        schedule_cfg=ScheduleSettings(),
        sampler_cfg=SamplerSettings(sampler="ddim", steps=6),
    )


def run(*args):
    r = runner.invoke(app, [str(a) for a in args])
    assert "Traceback" not in r.output, r.output
    return r


def test_sample_writes_grid_and_individual_images(weights, tmp_path):
    out = tmp_path / "out" / "grid.png"
    r = run(
        "sample",
        "--checkpoint",
        weights,
        "--labels",
        "red sphere,cyan cylinder,cyan cube",
        "--num",
        "10",
        "--save-individual",
        "--out",
        out,
        "--device",
        "cpu",
    )
    assert r.exit_code == 0, r.output
    assert "10 image(s)" in r.output and "ddim (6 steps, guidance 2)" in r.output  # the weights' defaults
    assert "images/s" in r.output and str(out) in r.output.replace("\n", "")
    assert Image.open(out).size == (8 * 66 + 2, 2 * 66 + 2)
    files = sorted((tmp_path / "out" / "grid").glob("*.png"), key=lambda p: int(p.stem))
    assert [p.name for p in files] == [f"{i}.png" for i in range(10)]
    assert Image.open(files[0]).size == (64, 64)


def test_sample_labels_file_flags_and_newest_run(weights, tmp_path):
    run_dir = Path(os.environ["ICLEVR_CHECKPOINTS"]) / "tiny-run" / "weights"
    run_dir.mkdir(parents=True)
    (run_dir / "ema.safetensors").write_bytes(weights.read_bytes())
    conds = tmp_path / "test.json"
    conds.write_text(json.dumps([["red sphere"], ["gray cube", "blue cylinder"], ["yellow sphere"]]))
    out = tmp_path / "g.png"
    r = run(
        "sample",
        "--labels-file",
        conds,
        "--sampler",
        "dpmpp",
        "--steps",
        "3",
        "--guidance-scale",
        "1",
        "--out",
        out,
        "--save-individual",
    )
    assert r.exit_code == 0, r.output
    assert "3 image(s)" in r.output and "tiny-run" in r.output and "dpmpp (3 steps, guidance 1)" in r.output
    assert len(list((tmp_path / "g").glob("*.png"))) == 3
    r = run("sample", "--labels", "red cube", "--sampler", "unipc", "--print-config")
    assert r.exit_code == 0 and json.loads(r.output)["sampler"]["steps"] is None  # not ddim's 6 steps


def test_sample_writes_each_batch_of_pngs_before_drawing_the_next(weights, tmp_path, monkeypatch):
    import iclevr.sampling as S
    from iclevr.generate import SampleSettings, run_sample
    from iclevr.settings import SamplerSettings

    real, seen = S.sample_batches, []

    def watching(*args, **kwargs):
        for start, x0 in real(*args, **kwargs):
            seen.append(sorted(int(p.stem) for p in (tmp_path / "grid").glob("*.png")))  # on disk so far
            yield start, x0

    monkeypatch.setattr(S, "sample_batches", watching)
    conds = tmp_path / "c.json"
    conds.write_text(json.dumps([["red sphere"], ["cyan cube", "gray cylinder"]] * 3))
    r = run_sample(
        SampleSettings(
            checkpoint=weights,
            labels_file=conds,
            out=tmp_path / "grid.png",
            save_individual=True,
            sampler=SamplerSettings(steps=2, batch_size=4, device="cpu"),
        )
    )
    assert seen == [[], [0, 1, 2, 3]] and r["images"] == 6
    assert sorted(int(p.stem) for p in (tmp_path / "grid").glob("*.png")) == list(range(6))
    assert Image.open(tmp_path / "grid.png").size == (6 * 66 + 2, 66 + 2)


@pytest.mark.parametrize(
    "case, message",
    [
        ("bad_label", 'unknown label "red spere" — did you mean "red sphere"'),
        ("conflict", "--labels and --labels-file conflict"),
        ("no_labels", "name what to draw"),
        ("missing", "checkpoint not found"),
        ("pickle", "is not a .safetensors file"),
        ("foreign", "without iclevr metadata"),
        ("truncated", "not a readable safetensors file"),
        ("no_runs", "no trained model found"),
        ("bad_file", "condition 1: unknown label"),
        ("bad_sampler", 'unknown sampler "euler"'),
    ],
)
def test_sample_errors_are_one_clear_line(weights, tmp_path, case, message):
    from safetensors.torch import save_file

    labels = ["--labels", "red sphere"]
    ckpt = ["--checkpoint", weights]
    if case == "bad_label":
        labels = ["--labels", "red spere"]
    elif case == "conflict":
        labels += ["--labels-file", weights]
    elif case == "no_labels":
        labels = []
    elif case == "missing":
        ckpt = ["--checkpoint", tmp_path / "nope.safetensors"]
    elif case == "pickle":
        torch.save({"model": {}}, tmp_path / "checkpoint.pth")
        ckpt = ["--checkpoint", tmp_path / "checkpoint.pth"]
    elif case == "foreign":
        save_file({"w": torch.zeros(2)}, str(tmp_path / "other.safetensors"), metadata={"format": "pt"})
        ckpt = ["--checkpoint", tmp_path / "other.safetensors"]
    elif case == "truncated":
        (tmp_path / "cut.safetensors").write_bytes(weights.read_bytes()[:1000])
        ckpt = ["--checkpoint", tmp_path / "cut.safetensors"]
    elif case == "no_runs":
        ckpt = []
    elif case == "bad_file":
        (tmp_path / "c.json").write_text('[["red sphere"], ["purple pyramid"]]')
        labels = ["--labels-file", tmp_path / "c.json"]
    elif case == "bad_sampler":
        labels += ["--sampler", "euler"]
    r = run("sample", *ckpt, *labels, "--out", tmp_path / "x.png")
    assert r.exit_code == 2, r.output
    assert "error:" in r.stderr and message in r.stderr.replace("\n", "")
    assert not (tmp_path / "x.png").exists()


def test_denoise_trace_writes_png_and_gif(weights, tmp_path):
    out = tmp_path / "trace.png"
    r = run(
        "denoise-trace", "--checkpoint", weights, "--frames", "8", "--steps", "10", "--x0-row", "--gif", "--out", out
    )
    assert r.exit_code == 0, r.output
    assert "8 frames (t = 999," in r.output and "final) with ddim (10 steps" in r.output
    assert Image.open(out).size[0] == 8 * 66 + 2
    with Image.open(tmp_path / "trace.gif") as gif:
        assert gif.n_frames == 11
    r = run("denoise-trace", "--checkpoint", weights, "--frames", "8", "--out", out)  # the weights' 6 steps
    assert r.exit_code == 2 and "needs at least 7 sampling steps" in r.stderr.replace("\n", "")
    r = run("denoise-trace", "--checkpoint", weights, "--labels", "red sphere,red sphere", "--out", out)
    assert r.exit_code == 2 and "duplicate label" in r.stderr


def test_more_objects_than_any_training_image_gives_one_warning_line(weights, tmp_path):
    """Five objects where the kits hold at most three: drawn anyway, with one warning line (trap 3)."""
    five = "red sphere,cyan cylinder,cyan cube,gray cube,blue sphere"
    commands = (
        ["sample", "--out", tmp_path / "s.png"],
        ["denoise-trace", "--frames", "2", "--out", tmp_path / "t.png"],
    )
    for cmd in commands:
        r = run(*cmd, "--checkpoint", weights, "--labels", five, "--steps", "2", "--device", "cpu")
        assert r.exit_code == 0, r.output
        warnings = [line for line in r.output.splitlines() if line.startswith("warning:")]
        assert warnings == [
            "warning: the condition asks for 5 objects, but the training images of the course kit "
            "and the default kit hold at most 3: expect some of them to be missing"
        ], r.output
    r = run(
        "sample",
        "--checkpoint",
        weights,
        "--labels",
        "red sphere,cyan cube,gray cube",
        "--steps",
        "2",
        "--out",
        tmp_path / "three.png",
        "--device",
        "cpu",
    )
    assert r.exit_code == 0 and "warning" not in r.output


def test_crowded_warning_counts_the_conditions_over_the_limit():
    from iclevr.labels import crowded_warning

    assert crowded_warning([["red sphere"], ["red sphere", "red sphere", "red cube", "gray cube"]]) is None
    line = crowded_warning([["red sphere"], ["a", "b", "c", "d"], ["a", "b", "c", "d", "e"]])
    assert line.startswith("warning: 2 of 3 conditions ask for more objects (up to 5) than any training image")
