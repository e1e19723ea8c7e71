"""The bad-input matrix: every way a user can get a command wrong ends with exit code 2, one clear line
naming the problem, no traceback, and no file of the user's overwritten or deleted."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from iclevr.cli.app import app

runner = CliRunner()


@pytest.fixture
def world(tmp_path, course_kit, tiny_model_cfg):
    """A course kit, one tiny weights file, decoys of other formats and a user file to protect."""
    from iclevr.model import build_model
    from iclevr.settings import SamplerSettings, ScheduleSettings
    from iclevr.weights import save_weights

    torch.manual_seed(0)
    weights = save_weights(
        build_model(tiny_model_cfg),
        tmp_path / "tiny.safetensors",
        model_cfg=tiny_model_cfg,
        schedule_cfg=ScheduleSettings(),
        sampler_cfg=SamplerSettings(steps=2),
        preset="tiny",
    )
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(2)}, str(tmp_path / "foreign.safetensors"))
    (tmp_path / "truncated.safetensors").write_bytes(weights.read_bytes()[:1000])
    torch.save({"model": {}}, tmp_path / "model.pth")
    torch.save({"model": {"fc.0.weight": torch.zeros(3, 3)}}, tmp_path / "bad_evaluator.pth")
    (tmp_path / "afile.txt").write_text("precious")
    (tmp_path / "labels_bad.json").write_text('[["red sphere"], ["pink cube"]]')
    (tmp_path / "labels_malformed.json").write_text('[["red sphere"')
    (tmp_path / "synth_16x9.json").write_text('{"size": [160, 90]}')
    (tmp_path / "unknown_key.json").write_text('{"sampler": {"stepz": 3}}')
    return {"tmp": tmp_path, "kit": course_kit, "w": weights}


def _fingerprint(root: Path) -> dict:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and ".iclevr-cache" not in p.parts
    }


def _sub(args: list[str], world: dict) -> list[str]:
    return [a.format(tmp=world["tmp"], kit=world["kit"], w=world["w"]) for a in args]


CASES = [
    # sample
    (
        "sample: unknown label",
        ["sample", "--checkpoint", "{w}", "--labels", "pink sphere"],
        'unknown label "pink sphere" — did you mean "purple sphere"?',
    ),
    (
        "sample: duplicate label",
        ["sample", "--checkpoint", "{w}", "--labels", "red cube,Red Cube"],
        'duplicate label "red cube" in condition',
    ),
    (
        "sample: empty labels",
        ["sample", "--checkpoint", "{w}", "--labels", " , "],
        "empty condition: name at least one object",
    ),
    (
        "sample: missing checkpoint",
        ["sample", "--checkpoint", "{tmp}/nope.safetensors", "--labels", "red cube"],
        "checkpoint not found: {tmp}/nope.safetensors",
    ),
    (
        "sample: not safetensors",
        ["sample", "--checkpoint", "{tmp}/model.pth", "--labels", "red cube"],
        "{tmp}/model.pth is not a .safetensors file",
    ),
    (
        "sample: foreign safetensors",
        ["sample", "--checkpoint", "{tmp}/foreign.safetensors", "--labels", "red cube"],
        "foreign.safetensors is a safetensors file without iclevr metadata",
    ),
    (
        "sample: truncated safetensors",
        ["sample", "--checkpoint", "{tmp}/truncated.safetensors", "--labels", "red cube"],
        "truncated.safetensors is not a readable safetensors file (truncated",
    ),
    (
        "sample: zero steps",
        ["sample", "--checkpoint", "{w}", "--labels", "red cube", "--steps", "0"],
        "settings.sampler.steps: Input should be greater than 0",
    ),
    (
        "sample: guidance out of range",
        ["sample", "--checkpoint", "{w}", "--labels", "red cube", "--guidance-scale", "-1"],
        "settings.sampler.guidance_scale: Input should be greater than or equal to 0",
    ),
    (
        "sample: unknown sampler",
        ["sample", "--checkpoint", "{w}", "--labels", "red cube", "--sampler", "euler"],
        'unknown sampler "euler"; valid: ddpm, ddim',
    ),
    (
        "sample: conflicting flags",
        ["sample", "--checkpoint", "{w}", "--labels", "red cube", "--labels-file", "{tmp}/labels_bad.json"],
        "--labels and --labels-file conflict",
    ),
    (
        "sample: labels file with unknown label",
        ["sample", "--checkpoint", "{w}", "--labels-file", "{tmp}/labels_bad.json"],
        'labels_bad.json condition 1: unknown label "pink cube"',
    ),
    (
        "sample: malformed labels file",
        ["sample", "--checkpoint", "{w}", "--labels-file", "{tmp}/labels_malformed.json"],
        "labels_malformed.json is not valid JSON",
    ),
    (
        "sample: unwritable output",
        ["sample", "--checkpoint", "{w}", "--labels", "red cube", "--out", "{tmp}/afile.txt/grid.png"],
        "cannot write to output folder {tmp}/afile.txt: it is a file, not a folder",
    ),
    # denoise-trace
    (
        "trace: one frame",
        ["denoise-trace", "--checkpoint", "{w}", "--frames", "1"],
        "settings.frames: Input should be greater than or equal to 2",
    ),
    (
        "trace: bad label",
        ["denoise-trace", "--checkpoint", "{w}", "--labels", "red spere,blue cube,blue cube"],
        'unknown label "red spere" — did you mean "red sphere"?',
    ),
    (
        "trace: unknown key in the config",
        ["denoise-trace", "--checkpoint", "{w}", "--config", "{tmp}/unknown_key.json"],
        "settings.sampler.stepz: unknown setting",
    ),
    # train
    (
        "train: zero batch size",
        ["train", "--preset", "tiny", "--data-dir", "{kit}", "--batch-size", "0", "--out", "{tmp}/run"],
        "settings.train.batch_size: Input should be greater than 0",
    ),
    (
        "train: negative epochs",
        ["train", "--preset", "tiny", "--data-dir", "{kit}", "--epochs", "-1", "--out", "{tmp}/run"],
        "settings.train.epochs: Input should be greater than 0",
    ),
    (
        "train: unknown schedule",
        ["train", "--preset", "tiny", "--data-dir", "{kit}", "--schedule", "cosin", "--out", "{tmp}/run"],
        'unknown noise schedule "cosin"; valid: linear',
    ),
    (
        "train: missing data folder",
        ["train", "--preset", "tiny", "--data-dir", "{tmp}/nodata", "--max-steps", "1", "--out", "{tmp}/run"],
        "data folder not found: {tmp}/nodata",
    ),
    ("train: unknown preset", ["train", "--preset", "huge"], 'unknown preset "huge"'),
    (
        "train: a word for a number",
        ["train", "--preset", "tiny", "--max-minutes", "soon"],
        "Invalid value for '--max-minutes'",
    ),
    # eval
    (
        "eval: bad split",
        ["eval", "--checkpoint", "{w}", "--data-dir", "{kit}", "--split", "train"],
        "settings.split: Input should be 'test', 'new_test', 'val' or 'all'",
    ),
    (
        "eval: missing checkpoint",
        ["eval", "--checkpoint", "{tmp}/nope", "--data-dir", "{kit}"],
        "checkpoint not found: {tmp}/nope",
    ),
    (
        "eval: evaluator with wrong keys",
        [
            "eval",
            "--checkpoint",
            "{w}",
            "--data-dir",
            "{kit}",
            "--evaluator",
            "{tmp}/bad_evaluator.pth",
            "--seeds",
            "0",
        ],
        "bad_evaluator.pth is not a resnet18 evaluator",
    ),
    (
        "eval: seeds not integers",
        ["eval", "--checkpoint", "{w}", "--data-dir", "{kit}", "--seeds", "0,x"],
        "--seeds must be comma-separated integers",
    ),
    # data
    (
        "data check: missing folder",
        ["data", "check", "--data-dir", "{tmp}/nodata"],
        "data folder not found: {tmp}/nodata",
    ),
    (
        "data synth: bad size",
        ["data", "synth", "--out", "{tmp}/synth", "--size", "12x"],
        '--size "12x" is not WIDTHxHEIGHT',
    ),
    (
        "data synth: zero scenes",
        ["data", "synth", "--out", "{tmp}/synth", "--scenes", "0"],
        "settings.scenes: Input should be greater than or equal to 1",
    ),
    (
        "data synth: 16:9 size from a config",
        ["data", "synth", "--out", "{tmp}/synth", "--config", "{tmp}/synth_16x9.json"],
        "--size 160x90 is not 4:3",
    ),
    # compare-schedules and demo
    (
        "compare: unknown schedule",
        ["compare-schedules", "--schedules", "linear,quadratic", "--max-steps", "1", "--out", "{tmp}/cmp"],
        'unknown noise schedule "quadratic"',
    ),
    (
        "compare: no fixed budget",
        ["compare-schedules", "--out", "{tmp}/cmp"],
        "give a fixed budget with --epochs or --max-steps",
    ),
    (
        "compare: negative seed",
        ["compare-schedules", "--seeds", "-1", "--max-steps", "1", "--out", "{tmp}/cmp"],
        "--seeds needs at least one non-negative integer",
    ),
    (
        "demo: zero minutes",
        ["demo", "--minutes", "0", "--out", "{tmp}/demo"],
        "settings.minutes: Input should be greater than 0",
    ),
]


@pytest.mark.parametrize("name,args,match", CASES, ids=[c[0] for c in CASES])
def test_bad_input(world, name, args, match):
    before = _fingerprint(world["tmp"])
    r = runner.invoke(app, _sub(args, world))
    out = r.stdout + r.stderr
    assert r.exit_code == 2, f"{name}: exit {r.exit_code}\n{out}"
    assert "Traceback" not in out, out
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), f"{name}: not one error line:\n{r.stderr}"
    match = _sub([match], world)[0]  # the real problem, named as the message names it (not just a path typed)
    assert match in lines[0], f"{name}: {match!r} not in\n{lines[0]}"
    after = _fingerprint(world["tmp"])
    assert {k: v for k, v in after.items() if k in before} == before, f"{name} changed the user's files"


@pytest.mark.parametrize(
    "filename,content,match",
    [
        ("train.json", "{not json", "not valid JSON"),
        ("test.json", json.dumps([["red sphere"], ["teal cube"]]), "teal cube"),
        ("objects.json", json.dumps({"gray cube": 5}), "objects.json"),
    ],
)
def test_bad_kit_files(world, filename, content, match):
    (world["kit"] / filename).write_text(content)
    for args in (
        ["data", "check", "--data-dir", str(world["kit"])],
        [
            "train",
            "--preset",
            "tiny",
            "--data-dir",
            str(world["kit"]),
            "--max-steps",
            "1",
            "--out",
            str(world["tmp"] / "run"),
        ],
    ):
        r = runner.invoke(app, args)
        assert r.exit_code == 2 and match in r.stdout + r.stderr and "Traceback" not in r.stdout + r.stderr


def test_missing_and_corrupt_images_stop_training(world):
    images = sorted((world["kit"] / "iclevr").glob("CLEVR_*.png"))
    images[0].unlink()
    images[1].write_bytes(b"garbage")
    r = runner.invoke(
        app,
        [
            "train",
            "--preset",
            "tiny",
            "--data-dir",
            str(world["kit"]),
            "--max-steps",
            "1",
            "--out",
            str(world["tmp"] / "run"),
        ],
    )
    assert r.exit_code == 2 and "1 missing" in r.stderr and "1 corrupt" in r.stderr
