"""The packaged pretrained model: which weights a command uses (--checkpoint > newest run > packaged), the line
naming them, a fresh ICLEVR_HOME that samples and scores without rendering, and the packaged file itself
(float16 on disk, float32 in memory, complete metadata) as benchmarks/package_model.py writes it."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from conftest import TINY_MODEL, benchmark_module
from typer.testing import CliRunner

from iclevr.cli.app import app

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]


def _package_module():
    """benchmarks/package_model.py."""
    return benchmark_module("package_model")


def make_run(folder: Path, *, step: int, seed: int, log_rows: int = 3, finished: bool = True) -> Path:
    """A run folder as `iclevr train` leaves it (settings, progress, metrics, EMA weights) with a random tiny
    model; its stored sampler is ddim at 2 steps so scoring it takes seconds."""
    from iclevr.model import build_model
    from iclevr.settings import ModelSettings, SamplerSettings, ScheduleSettings, TrainSettings, to_json
    from iclevr.weights import save_weights

    cfg = ModelSettings(**TINY_MODEL)
    settings = TrainSettings(preset="tiny", model=cfg, sampler=SamplerSettings(sampler="ddim", steps=2))
    folder.mkdir(parents=True)
    (folder / "settings.json").write_text(to_json(settings))
    (folder / "progress.json").write_text(json.dumps({"step": step, "wall_s": 5400.0, "finished": finished}))
    rows = [{"step": 25 * (i + 1), "loss": 1.0 / (i + 1), "lr": 1e-3, "wall_s": float(i)} for i in range(log_rows)]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    torch.manual_seed(seed)
    save_weights(
        build_model(cfg),
        folder / "weights" / "ema.safetensors",
        model_cfg=cfg,
        schedule_cfg=ScheduleSettings(),
        sampler_cfg=settings.sampler,
        preset="tiny",
        step=step,
    )
    return folder


@pytest.fixture(scope="module")
def packaged(tmp_path_factory):
    """A tiny packaged model made by package_model's core function, scored with the packaged evaluator."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("packaged")
    with pytest.MonkeyPatch.context() as env:  # the autouse isolation is per test; this fixture outlives one
        env.setenv("ICLEVR_HOME", str(root / "home"))
        env.setenv("ICLEVR_CHECKPOINTS", str(root / "home" / "checkpoints"))
        run = make_run(root / "run", step=1234, seed=0, log_rows=450)
        out, metrics = root / "pretrained.safetensors", root / "metrics.json"
        record = _package_module().package(
            run, out, seeds=[0, 1], command="iclevr train --preset tiny", metrics=metrics, device="cpu"
        )
    torch.set_num_threads(before)
    return {"run": run, "file": out, "metrics": metrics, "record": record}


@pytest.fixture
def use_packaged(packaged, monkeypatch, one_thread):
    """Point ICLEVR_PACKAGED_MODEL at the tiny packaged file and let eval use the packaged evaluator."""
    monkeypatch.setenv("ICLEVR_PACKAGED_MODEL", str(packaged["file"]))
    monkeypatch.delenv("ICLEVR_NO_PACKAGED_EVALUATOR")
    return packaged["file"]


def invoke(*args) -> str:
    """Run the CLI in-process; the output, after checking for a clean exit."""
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0 and "Traceback" not in result.output, result.output
    return result.output


def model_lines(text: str) -> list[str]:
    """The lines that name the model a command used."""
    return [line for line in text.splitlines() if line.startswith("model: ")]


def test_resolution_order_explicit_then_newest_run_then_packaged(use_packaged, tmp_path):
    from iclevr.weights import resolve_model

    assert resolve_model(None).kind == "packaged" and resolve_model(None).path == use_packaged
    run = make_run(Path(os.environ["ICLEVR_CHECKPOINTS"]) / "tiny-run", step=7, seed=1)
    assert resolve_model(None).kind == "run" and resolve_model(None).path == run / "weights" / "ema.safetensors"
    other = make_run(tmp_path / "other", step=9, seed=2)
    chosen = resolve_model(other)
    assert chosen.kind == "checkpoint" and chosen.path == other / "weights" / "ema.safetensors"


def test_an_unfinished_run_is_used_only_when_named(use_packaged, tmp_path):
    """An interrupted newest run does not silently replace the packaged model or a finished run."""
    from iclevr.weights import resolve_model

    root = Path(os.environ["ICLEVR_CHECKPOINTS"])
    sample = ["sample", "--labels", "red sphere", "--out", tmp_path / "s.png", "--device", "cpu"]
    stopped = make_run(root / "stopped", step=57, seed=3, finished=False)
    assert resolve_model(None).kind == "packaged" and resolve_model(None).passed_over == stopped
    [line] = model_lines(invoke(*sample))
    assert line.startswith("model: packaged pretrained model") and line.endswith(
        f"; not the newer run {stopped}, which has not finished (step 57): name it with --checkpoint to use it"
    )
    done = make_run(root / "done", step=7, seed=1)
    os.utime(stopped / "weights" / "ema.safetensors")  # the unfinished run stays the newest
    chosen = resolve_model(None)
    assert chosen.kind == "run" and chosen.named == done and chosen.passed_over == stopped
    [line] = model_lines(invoke(*sample, "--checkpoint", stopped))
    assert line == (
        f"model: --checkpoint {stopped} (step 57, unfinished: its training stopped before its budget or is still going)"
    )


def test_each_command_prints_one_line_naming_the_model(use_packaged, tmp_path):
    sample = ["sample", "--labels", "red sphere,cyan cube", "--out", tmp_path / "s.png", "--device", "cpu"]
    lines = model_lines(invoke(*sample))
    assert lines == [
        f"model: packaged pretrained model {use_packaged} (pooled, 1,234 steps, test/new_test "
        f"{_mean(use_packaged, 'test'):.3f}/{_mean(use_packaged, 'new_test'):.3f}; model card: "
        "docs/model-card.md)"
    ], lines
    trace = model_lines(invoke("denoise-trace", "--frames", "2", "--out", tmp_path / "t.png", "--device", "cpu"))
    export = model_lines(invoke("export", "--out", tmp_path / "export"))
    assert trace == export == lines[:1]

    run = make_run(Path(os.environ["ICLEVR_CHECKPOINTS"]) / "tiny-run", step=7, seed=1)
    assert model_lines(invoke(*sample)) == [f"model: newest run {run} (step 7)"]
    other = make_run(tmp_path / "other", step=9, seed=2)
    assert model_lines(invoke(*sample, "--checkpoint", other)) == [f"model: --checkpoint {other} (step 9)"]
    exported = json.loads((tmp_path / "export" / "iclevr.json").read_text())
    assert exported["source"] == str(use_packaged) and exported["step"] == 1234


def _mean(path: Path, split: str) -> float:
    from iclevr.weights import packaged_accuracy, read_info

    return packaged_accuracy(read_info(path))[split]


def test_fresh_home_samples_and_scores_the_packaged_model_without_rendering(use_packaged, tmp_path):
    from iclevr.evaluation.evaluator import PACKAGED, own_default_path
    from iclevr.paths import iclevr_home

    out = tmp_path / "red.png"
    text = invoke("sample", "--labels", "red sphere,cyan cylinder,cyan cube", "--out", out, "--device", "cpu")
    assert out.is_file() and "packaged pretrained model" in text
    text = invoke("eval", "--split", "new_test", "--seeds", "0", "--device", "cpu")
    assert len(model_lines(text)) == 1 and "packaged pretrained model" in model_lines(text)[0]
    report = json.loads(Path("eval/report.json").read_text())  # ./eval: the packaged file is in no run folder
    assert Path("eval", report["checkpoint"]).resolve() == use_packaged.resolve() and report["model"]["step"] == 1234
    assert report["evaluator"]["path"] == "iclevr/assets/" + PACKAGED.name and report["splits"]["new_test"]["total"] > 0
    assert not (iclevr_home() / "kits").exists(), "the embedded kit was rendered"
    assert not own_default_path().exists(), "an evaluator was trained instead of using the packaged one"


def test_without_a_packaged_file_the_no_model_error_stays(tmp_path, monkeypatch):
    from iclevr.paths import packaged_model_path

    result = runner.invoke(app, ["sample", "--labels", "red cube", "--out", str(tmp_path / "x.png")])
    assert result.exit_code == 2 and "no trained model found" in result.output, result.output
    monkeypatch.setenv("ICLEVR_PACKAGED_MODEL", "")  # empty = unset: the file inside the package
    assert packaged_model_path() == ROOT / "iclevr" / "assets" / "pretrained.safetensors"


def test_packaged_metadata_is_complete_and_its_settings_load(packaged):
    from iclevr.data.course import load_conditions
    from iclevr.evaluation.evaluator import PACKAGED, file_sha256
    from iclevr.settings import TrainSettings
    from iclevr.weights import read_info

    info = read_info(packaged["file"])
    record = info.packaged
    assert record == packaged["record"] and info.step == 1234 and info.preset == "tiny"
    assert TrainSettings.model_validate(record["settings"]).model.block_out_channels == (16, 32)
    assert record["steps"] == 1234 and record["images_seen"] == 1234 * 32  # batch 32, one process
    assert record["wall_s"] == 5400.0 and record["wall_hours"] == 1.5
    assert record["command"] == "iclevr train --preset tiny" and record["machine"]["cores"] >= 1
    assert record["evaluator"]["sha256"] == file_sha256(PACKAGED) and record["evaluator"]["kind"] == "own"
    assert record["sampler"]["sampler"] == "ddim" and record["seeds"] == [0, 1] and record["date"]
    for split in ("val", "test", "new_test"):
        score = record["accuracy"][split]
        assert set(score["per_seed"]) == {"0", "1"} and 0 <= score["mean"] <= 1
        assert score["mean"] == pytest.approx(sum(score["per_seed"].values()) / 2)
    val = load_conditions(None, ("val",))["val"]  # the embedded kit's val list, scored once per seed
    assert record["accuracy"]["val"]["total"] == 2 * sum(len(c) for c in val)
    metrics = json.loads(packaged["metrics"].read_text())
    assert metrics["accuracy"] == record["accuracy"] and metrics["bytes"] == packaged["file"].stat().st_size
    curve = metrics["loss_curve"]
    assert len(curve) == 200 and curve[0]["step"] == 25 and curve[-1]["step"] == 25 * 450


def test_float16_on_disk_runs_as_float32(packaged):
    from safetensors import safe_open

    from iclevr.weights import load_weights

    with safe_open(str(packaged["file"]), framework="pt") as f:
        dtypes = {f.get_tensor(k).dtype for k in f.keys()}
    assert dtypes == {torch.float16}
    model, _ = load_weights(packaged["file"])
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    original, _ = load_weights(packaged["run"] / "weights" / "ema.safetensors")
    x, t, y = torch.randn(2, 3, 16, 16), torch.tensor([10, 500]), torch.zeros(2, 24)
    y[0, 3] = 1
    with torch.no_grad():
        assert torch.allclose(model(x, t, y), original(x, t, y), atol=2e-2)
    assert packaged["file"].stat().st_size < 0.6 * (packaged["run"] / "weights" / "ema.safetensors").stat().st_size


def test_packaging_refuses_a_file_too_large_before_scoring(tmp_path, monkeypatch, capsys):
    module = _package_module()
    run = make_run(tmp_path / "run", step=5, seed=0)
    monkeypatch.setattr(module, "score_file", lambda *a, **k: pytest.fail("scored a model it then refused"))
    assert module.main(["--run", str(run), "--out", str(tmp_path / "p.safetensors"), "--max-mb", "0.01"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "above the 0.01 MB" in err and not (tmp_path / "p.safetensors").exists()
    assert module.main(["--run", str(tmp_path / "nothing")]) == 2
    assert "holds no EMA weights" in capsys.readouterr().err


def test_packaging_stores_and_scores_the_sampler_chosen_on_val(tmp_path, monkeypatch, one_thread):
    from iclevr.weights import read_info

    module = _package_module()
    run = make_run(tmp_path / "run", step=5, seed=0)
    used = []
    real = module.score_file
    monkeypatch.setattr(
        module, "score_file", lambda weights, *a, **k: used.append(read_info(weights).sampler) or real(weights, *a, **k)
    )
    out = tmp_path / "p.safetensors"
    assert (
        module.main(
            [
                "--run",
                str(run),
                "--out",
                str(out),
                "--seeds",
                "0",
                "--metrics",
                str(tmp_path / "m.json"),
                "--sampler-steps",
                "1",
                "--guidance",
                "3.5",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    info = read_info(out)
    assert (info.sampler.steps, info.sampler.guidance_scale, info.sampler.sampler) == (1, 3.5, "ddim")
    assert [(s.steps, s.guidance_scale) for s in used] == [(1, 3.5)]  # scored with what it stores
    assert info.packaged["sampler"]["steps"] == 1
    assert info.packaged["sampler_changed_from_run"] == {"steps": 1, "guidance_scale": 3.5}


def test_a_run_continued_with_init_from_records_every_stage(tmp_path):
    """package_model follows --init-from back: steps, images and wall time of both stages, one command each."""
    mod = _package_module()
    first = make_run(tmp_path / "first", step=100, seed=0)
    second = make_run(tmp_path / "second", step=50, seed=1)
    settings = json.loads((second / "settings.json").read_text())
    (second / "settings.json").write_text(json.dumps(settings | {"init_from": str(first)}))
    files = mod.read_run(second)
    scores = {"sampler": {}, "evaluator": {}, "accuracy": {s: {"mean": 0.5} for s in mod.SPLITS}}
    record = mod.build_record(
        second, files, scores, seeds=[0], command=["cmd one", "cmd two"], machine="m", processes=1
    )
    assert [(s["run"], s["steps"], s["command"]) for s in record["stages"]] == [
        ("first", 100, "cmd one"),
        ("second", 50, "cmd two"),
    ]
    assert record["steps"] == 150 and record["images_seen"] == 150 * settings["train"]["batch_size"]
    assert record["wall_s"] == 2 * 5400.0 and record["command"] == "cmd one\nthen: cmd two"
    single = mod.build_record(first, mod.read_run(first), scores, seeds=[0], command="c", machine="m", processes=1)
    assert single["steps"] == 100 and [s["run"] for s in single["stages"]] == ["first"]
