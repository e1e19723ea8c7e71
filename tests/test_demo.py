"""`iclevr demo` writes summary.json with the numbers the README quotes (stages stubbed: no training here)."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest

from iclevr.studies import demo


def fake_split(seeds: list[int], hits: list[int], total: int) -> dict:
    """A split of an eval report as evaluation/run.py writes it (only the fields the summary reads)."""
    accs = [h / total for h in hits]
    return {
        "runs": [{"seed": s, "hits": h, "total": total, "accuracy": a} for s, h, a in zip(seeds, hits, accs)],
        "accuracy": accs,
        "mean": statistics.fmean(accs),
        "std": statistics.pstdev(accs),
        "hits": sum(hits),
        "total": total * len(seeds),
    }


@pytest.fixture
def stubbed_stages(monkeypatch, tmp_path):
    """Replace the five stages by stand-ins that write what the real ones would leave behind."""
    import iclevr.data.kits as kits

    def fake_train(settings, data_dir, run_dir, console):
        run_dir.mkdir(parents=True)
        (run_dir / "progress.json").write_text(json.dumps({"step": 640, "wall_s": 630.0, "finished": True}))
        (run_dir / "settings.json").write_text(json.dumps({"train": {"batch_size": 32}}))
        return run_dir, False

    report = {
        "out": str(tmp_path / "demo" / "eval"),
        "sampler": {"sampler": "dpmpp-sde", "steps": 20},
        "evaluator": {"kind": "own", "path": "own.safetensors", "sha256": "ab"},
        "splits": {
            "test": fake_split([0, 1, 2], [25, 27, 24], 72),
            "new_test": fake_split([0, 1, 2], [35, 36, 34], 84),
        },
    }
    monkeypatch.setattr(kits, "resolve_data_dir", lambda data_dir, console: tmp_path / "kit")
    monkeypatch.setattr(demo, "_evaluator", lambda data_dir, console: Path("own.safetensors"))
    monkeypatch.setattr(demo, "_train", fake_train)
    monkeypatch.setattr(demo, "_evaluate", lambda *a: report)
    monkeypatch.setattr(demo, "_trace", lambda *a: {"png": str(tmp_path / "demo" / "trace.png")})
    return report


def test_demo_writes_a_summary_with_steps_minutes_accuracy_and_machine(stubbed_stages, tmp_path):
    from rich.console import Console

    settings = demo.DemoSettings(out=tmp_path / "demo", minutes=10)
    result = demo.run_demo(settings, Console(quiet=True))
    path = tmp_path / "demo" / "summary.json"
    assert result["summary"] == path
    summary = json.loads(path.read_text())

    assert summary["train"]["steps"] == 640 and summary["train"]["batch_size"] == 32
    assert summary["train"]["train_minutes"] == 10.5 and summary["train"]["minutes_budget"] == 10
    assert summary["train"]["reused_finished_run"] is False
    assert set(summary["stage_minutes"]) == {"data", "evaluator", "train", "eval", "trace"}
    assert summary["total_minutes"] == pytest.approx(sum(summary["stage_minutes"].values()), abs=1e-3)
    test = summary["accuracy"]["test"]
    assert test["per_seed"] == {"0": 25 / 72, "1": 27 / 72, "2": 24 / 72}
    assert test["hits"] == 76 and test["total"] == 216
    assert test["std"] == pytest.approx(statistics.pstdev([25 / 72, 27 / 72, 24 / 72]))
    expected_mean = (statistics.fmean([25, 27, 24]) / 72 + statistics.fmean([35, 36, 34]) / 84) / 2
    assert summary["mean_over_splits"] == pytest.approx(expected_mean)
    assert "population" in summary["std"]
    assert summary["machine"]["cores"] >= 1 and summary["machine"]["torch"]
    assert summary["evaluator"]["sha256"] == "ab" and summary["sampler"]["sampler"] == "dpmpp-sde"
    assert summary["report"] == "eval/report.html"  # the eval page is linked, relative to the summary


def test_demo_summary_names_the_html_report(stubbed_stages, tmp_path):
    from rich.console import Console

    settings = demo.DemoSettings(out=tmp_path / "demo", minutes=10)
    console = Console(record=True, width=300)
    demo.print_summary(console, demo.run_demo(settings, Console(quiet=True)))
    text = console.export_text()
    assert str(tmp_path / "demo" / "eval" / "report.html") in text and "test_annotated.png" in text


def test_summary_leaves_steps_empty_when_the_run_folder_has_no_progress(tmp_path):
    result = {
        "run_dir": tmp_path / "missing-run",
        "stages": {"data": 60.0},
        "eval": {"splits": {"test": fake_split([0], [36], 72)}},
    }
    summary = demo.build_summary(demo.DemoSettings(out=tmp_path), result)
    assert summary["train"]["steps"] is None and summary["train"]["train_minutes"] is None
    assert summary["stage_minutes"] == {"data": 1.0} and summary["mean_over_splits"] == 0.5


def _packaged_file(path: Path, tiny_model_cfg) -> Path:
    """A tiny packaged file: float16 weights whose metadata records the scores measured when packaged."""
    from iclevr.model import build_model
    from iclevr.settings import ScheduleSettings
    from iclevr.weights import save_weights

    record = {
        "wall_hours": 6.5,
        "images_seen": 640000,
        "evaluator": {"kind": "own", "sha256": "cd"},
        "accuracy": {
            "val": {"mean": 0.81, "std": 0.01},
            "test": {"mean": 0.93, "std": 0.02},
            "new_test": {"mean": 0.95, "std": 0.0},
        },
    }
    return save_weights(
        build_model(tiny_model_cfg),
        path,
        model_cfg=tiny_model_cfg,
        schedule_cfg=ScheduleSettings(),
        step=20000,
        half=True,
        packaged=record,
    )


def test_demo_sets_the_packaged_models_recorded_score_beside_the_fresh_one(
    stubbed_stages, tmp_path, monkeypatch, tiny_model_cfg
):
    from rich.console import Console

    monkeypatch.setenv("ICLEVR_PACKAGED_MODEL", str(_packaged_file(tmp_path / "p.safetensors", tiny_model_cfg)))
    monkeypatch.setattr("iclevr.evaluation.run.evaluate", lambda *a, **k: pytest.fail("the demo re-scored it"))
    console = Console(record=True, width=300)
    result = demo.run_demo(demo.DemoSettings(out=tmp_path / "demo"), Console(quiet=True))
    demo.print_summary(console, result)
    text = console.export_text()
    assert "packaged model*" in text and "0.930 ± 0.020" in text and "0.950 ± 0.000" in text
    assert "20,000 steps, 6.5 h" in text and "as measured when packaged" in text
    packaged = json.loads((tmp_path / "demo" / "summary.json").read_text())["packaged_model"]
    assert packaged["steps"] == 20000 and packaged["accuracy"]["test"]["mean"] == 0.93
    assert packaged["path"] == "../p.safetensors" and "when packaged" in packaged["note"]  # relative to demo/


def test_demo_without_a_packaged_model_says_so_in_one_line(stubbed_stages, tmp_path):
    from rich.console import Console

    console = Console(record=True, width=300)
    result = demo.run_demo(demo.DemoSettings(out=tmp_path / "demo"), Console(quiet=True))
    demo.print_summary(console, result)
    text = console.export_text()
    assert [line for line in text.splitlines() if "pretrained" in line or "packaged model" in line] == [
        "packaged pretrained model: none in this install, so there is no longer-trained score to compare with"
    ]
    assert json.loads((tmp_path / "demo" / "summary.json").read_text())["packaged_model"] is None
