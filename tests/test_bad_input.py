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
    weights = save_weights(build_model(tiny_model_cfg), tmp_path / "tiny.safetensors", model_cfg=tiny_model_cfg,
                           schedule_cfg=ScheduleSettings(), sampler_cfg=SamplerSettings(steps=2), preset="tiny")
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
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and ".iclevr-cache" not in p.parts}


def _sub(args: list[str], world: dict) -> list[str]:
    return [a.format(tmp=world["tmp"], kit=world["kit"], w=world["w"]) for a in args]


CASES = [
    # sample
    ("sample: unknown label", ["sample", "--checkpoint", "{w}", "--labels", "pink sphere"], "purple sphere"),
    ("sample: duplicate label", ["sample", "--checkpoint", "{w}", "--labels", "red cube,Red Cube"], "duplicate"),
    ("sample: empty labels", ["sample", "--checkpoint", "{w}", "--labels", " , "], "empty condition"),
    ("sample: missing checkpoint", ["sample", "--checkpoint", "{tmp}/nope.safetensors", "--labels", "red cube"],
     "not found"),
    ("sample: not safetensors", ["sample", "--checkpoint", "{tmp}/model.pth", "--labels", "red cube"],
     "not a .safetensors"),
    ("sample: foreign safetensors", ["sample", "--checkpoint", "{tmp}/foreign.safetensors", "--labels",
                                     "red cube"], "without iclevr metadata"),
    ("sample: truncated safetensors", ["sample", "--checkpoint", "{tmp}/truncated.safetensors", "--labels",
                                       "red cube"], "safetensors"),
    ("sample: zero steps", ["sample", "--checkpoint", "{w}", "--labels", "red cube", "--steps", "0"], "steps"),
    ("sample: guidance out of range", ["sample", "--checkpoint", "{w}", "--labels", "red cube",
                                       "--guidance-scale", "-1"], "guidance_scale"),
    ("sample: unknown sampler", ["sample", "--checkpoint", "{w}", "--labels", "red cube", "--sampler", "euler"],
     "ddpm"),
    ("sample: conflicting flags", ["sample", "--checkpoint", "{w}", "--labels", "red cube", "--labels-file",
                                   "{tmp}/labels_bad.json"], "labels"),
    ("sample: labels file with unknown label", ["sample", "--checkpoint", "{w}", "--labels-file",
                                                "{tmp}/labels_bad.json"], "pink cube"),
    ("sample: malformed labels file", ["sample", "--checkpoint", "{w}", "--labels-file",
                                       "{tmp}/labels_malformed.json"], "JSON"),
    ("sample: unwritable output", ["sample", "--checkpoint", "{w}", "--labels", "red cube", "--out",
                                   "{tmp}/afile.txt/grid.png"], "afile.txt"),
    # denoise-trace
    ("trace: one frame", ["denoise-trace", "--checkpoint", "{w}", "--frames", "1"], "frames"),
    ("trace: bad label", ["denoise-trace", "--checkpoint", "{w}", "--labels", "red spere,blue cube,blue cube"],
     "red sphere"),
    ("trace: unknown key in the config", ["denoise-trace", "--checkpoint", "{w}", "--config",
                                          "{tmp}/unknown_key.json"], "settings.sampler.stepz: unknown setting"),
    # train
    ("train: zero batch size", ["train", "--preset", "tiny", "--data-dir", "{kit}", "--batch-size", "0",
                                "--out", "{tmp}/run"], "batch_size"),
    ("train: negative epochs", ["train", "--preset", "tiny", "--data-dir", "{kit}", "--epochs", "-1",
                                "--out", "{tmp}/run"], "epochs"),
    ("train: unknown schedule", ["train", "--preset", "tiny", "--data-dir", "{kit}", "--schedule", "cosin",
                                 "--out", "{tmp}/run"], "cosine"),
    ("train: missing data folder", ["train", "--preset", "tiny", "--data-dir", "{tmp}/nodata", "--max-steps",
                                    "1", "--out", "{tmp}/run"], "data folder not found"),
    ("train: unknown preset", ["train", "--preset", "huge"], "unknown preset"),
    ("train: a word for a number", ["train", "--preset", "tiny", "--max-minutes", "soon"], "--max-minutes"),
    # eval
    ("eval: bad split", ["eval", "--checkpoint", "{w}", "--data-dir", "{kit}", "--split", "train"], "split"),
    ("eval: missing checkpoint", ["eval", "--checkpoint", "{tmp}/nope", "--data-dir", "{kit}"], "not found"),
    ("eval: evaluator with wrong keys", ["eval", "--checkpoint", "{w}", "--data-dir", "{kit}", "--evaluator",
                                         "{tmp}/bad_evaluator.pth", "--seeds", "0"], "bad_evaluator.pth"),
    ("eval: seeds not integers", ["eval", "--checkpoint", "{w}", "--data-dir", "{kit}", "--seeds", "0,x"],
     "--seeds must be comma-separated integers"),
    # data
    ("data check: missing folder", ["data", "check", "--data-dir", "{tmp}/nodata"], "data folder not found"),
    ("data synth: bad size", ["data", "synth", "--out", "{tmp}/synth", "--size", "12x"], "size"),
    ("data synth: zero scenes", ["data", "synth", "--out", "{tmp}/synth", "--scenes", "0"], "scenes"),
    ("data synth: 16:9 size from a config", ["data", "synth", "--out", "{tmp}/synth", "--config",
                                             "{tmp}/synth_16x9.json"], "not 4:3"),
    # compare-schedules and demo
    ("compare: unknown schedule", ["compare-schedules", "--schedules", "linear,quadratic", "--max-steps", "1",
                                   "--out", "{tmp}/cmp"], "quadratic"),
    ("compare: no fixed budget", ["compare-schedules", "--out", "{tmp}/cmp"], "--max-steps"),
    ("compare: negative seed", ["compare-schedules", "--seeds", "-1", "--max-steps", "1", "--out", "{tmp}/cmp"],
     "--seeds needs at least one non-negative integer"),
    ("demo: zero minutes", ["demo", "--minutes", "0", "--out", "{tmp}/demo"], "minutes"),
]


@pytest.mark.parametrize("name,args,match", CASES, ids=[c[0] for c in CASES])
def test_bad_input(world, name, args, match):
    before = _fingerprint(world["tmp"])
    r = runner.invoke(app, _sub(args, world))
    out = r.stdout + r.stderr
    assert r.exit_code == 2, f"{name}: exit {r.exit_code}\n{out}"
    assert "Traceback" not in out, out
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
    assert match.lower() in out.lower(), f"{name}: {match!r} not in\n{out}"
    after = _fingerprint(world["tmp"])
    assert {k: v for k, v in after.items() if k in before} == before, f"{name} changed the user's files"


@pytest.mark.parametrize("filename,content,match", [
    ("train.json", "{not json", "not valid JSON"),
    ("test.json", json.dumps([["red sphere"], ["teal cube"]]), "teal cube"),
    ("objects.json", json.dumps({"gray cube": 5}), "objects.json"),
])
def test_bad_kit_files(world, filename, content, match):
    (world["kit"] / filename).write_text(content)
    for args in (["data", "check", "--data-dir", str(world["kit"])],
                 ["train", "--preset", "tiny", "--data-dir", str(world["kit"]), "--max-steps", "1",
                  "--out", str(world["tmp"] / "run")]):
        r = runner.invoke(app, args)
        assert r.exit_code == 2 and match in r.stdout + r.stderr and "Traceback" not in r.stdout + r.stderr


def test_missing_and_corrupt_images_stop_training(world):
    images = sorted((world["kit"] / "iclevr").glob("CLEVR_*.png"))
    images[0].unlink()
    images[1].write_bytes(b"garbage")
    r = runner.invoke(app, ["train", "--preset", "tiny", "--data-dir", str(world["kit"]), "--max-steps", "1",
                            "--out", str(world["tmp"] / "run")])
    assert r.exit_code == 2 and "1 missing" in r.stderr and "1 corrupt" in r.stderr
