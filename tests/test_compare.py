"""`iclevr compare-schedules`: every file, a row per schedule, no retraining on a second run, plot-only."""

import json

import pytest
from typer.testing import CliRunner

from iclevr.cli.app import app
from conftest import TINY_MODEL
from evaluator_standin import expected_hits, fixed_ranking, fixed_topk

runner = CliRunner()


def _expected_accuracy(kit, order: list[str]) -> dict[str, float]:
    """Per split, the accuracy of a `fixed_ranking(order)` evaluator, whatever the images."""
    out = {}
    for split in ("test", "new_test"):
        conditions = json.loads((kit / f"{split}.json").read_text())
        hits = expected_hits(conditions, [fixed_topk(order, c) for c in conditions])
        out[split] = sum(hits) / sum(len(c) for c in conditions)
    return out


def test_study_writes_everything_and_reuses_finished_runs(tmp_path, course_kit):
    cfg = tmp_path / "train.json"
    cfg.write_text(json.dumps({"model": TINY_MODEL, "train": {"batch_size": 4, "warmup_steps": 0,
                                                              "log_every": 1, "sample_every": 0}}))
    order = [c[0] for c in json.loads((course_kit / "new_test.json").read_text())[:4]]
    evaluator = fixed_ranking(tmp_path / "checkpoint.pth", order)
    expected = _expected_accuracy(course_kit, order)
    out = tmp_path / "study"
    args = ["compare-schedules", "--schedules", "linear,cosine", "--preset", "tiny", "--max-steps", "3",
            "--data-dir", str(course_kit), "--evaluator", str(evaluator), "--eval-seeds", "0,1",
            "--steps", "2", "--train-config", str(cfg), "--out", str(out)]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.stdout + r.stderr
    for name in ("schedules.png", "accuracy.png", "report.json", "report.html", "grid-linear-s0.png",
                 "grid-cosine-s0.png"):
        assert (out / name).is_file(), name
    page = (out / "report.html").read_text()  # one page: both figures and each schedule's grid, embedded
    assert page.count("<img") == 4 and 'id="schedule-linear"' in page and 'id="schedule-cosine"' in page
    report = json.loads((out / "report.json").read_text())
    assert [row["name"] for row in report["runs"]] == ["linear", "cosine"]
    for row in report["runs"]:
        for split in ("test", "new_test"):  # the stand-in's answers are known: the accuracies are too
            assert row["splits"][split]["values"] == pytest.approx([expected[split]] * 2)
    assert "│ linear" in r.stdout and "│ cosine" in r.stdout
    # same initial weights and data order: only the schedule differs between the two runs
    runs = {n: json.loads((out / "runs" / f"{n}-s0" / "settings.json").read_text()) for n in ("linear", "cosine")}
    assert runs["linear"]["schedule"]["name"] == "linear" and runs["cosine"]["schedule"]["name"] == "cosine"
    runs["linear"]["schedule"]["name"] = runs["cosine"]["schedule"]["name"] = runs["linear"]["out"] = \
        runs["cosine"]["out"] = None
    assert runs["linear"] == runs["cosine"]
    stamp = (out / "runs" / "linear-s0" / "weights" / "ema.safetensors").stat().st_mtime_ns
    cache = out / "runs" / "linear-s0" / "compare-eval.json"
    scored = cache.stat().st_mtime_ns
    again = runner.invoke(app, args)
    assert again.exit_code == 0, again.stdout + again.stderr
    assert "not retrained" in again.stdout
    assert (out / "runs" / "linear-s0" / "weights" / "ema.safetensors").stat().st_mtime_ns == stamp
    assert cache.stat().st_mtime_ns == scored  # same evaluator: the cached scores are reused
    # another evaluator in the same file: scored again (the cache is keyed by the file's sha256)
    fixed_ranking(evaluator, order[::-1][:2])
    third = runner.invoke(app, args)
    assert third.exit_code == 0, third.stdout + third.stderr
    assert cache.stat().st_mtime_ns != scored
    shas = {row["runs"][0]["evaluator"]["sha256"] for row in json.loads((out / "report.json").read_text())["runs"]}
    assert shas != {report["runs"][0]["runs"][0]["evaluator"]["sha256"]} and len(shas) == 1
    again = _expected_accuracy(course_kit, order[::-1][:2])
    assert again != expected  # the new evaluator answers differently, and the report shows its scores
    for row in json.loads((out / "report.json").read_text())["runs"]:
        assert row["splits"]["new_test"]["values"] == pytest.approx([again["new_test"]] * 2)


def test_plot_only_is_fast_and_draws_one_curve_per_schedule(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    r = runner.invoke(app, ["compare-schedules", "--plot-only", "--schedules", "linear,sigmoid,cosine",
                            "--out", str(tmp_path)])
    assert r.exit_code == 0, r.stdout + r.stderr
    assert (tmp_path / "schedules.png").is_file() and not (tmp_path / "runs").exists()
    table = json.loads((tmp_path / "report.json").read_text())["table"]
    assert [row["name"] for row in table] == ["linear", "sigmoid", "cosine"]
    for name in ("linear", "sigmoid", "cosine"):
        assert name in r.stdout
    from iclevr.studies.compare import schedule_table

    rows = schedule_table(["linear", "squaredcos_cap_v2"])
    assert rows[0]["alpha_bar"][0] > rows[0]["alpha_bar"][500] > rows[0]["alpha_bar"][999] > 0
    # squaredcos_cap_v2 keeps more signal mid-way than linear (Nichol & Dhariwal 2021, fig. 3)
    assert rows[1]["alpha_bar"][500] > rows[0]["alpha_bar"][500]


def test_plot_curves_match_schedules(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from iclevr.studies import plots

    captured = {}
    real_save = plots._save
    plots._save = lambda fig, path: captured.setdefault("fig", fig) and real_save(fig, path)
    try:
        plots.plot_schedules(["linear", "cosine", "squaredcos_cap_v2"], 1000, tmp_path / "s.png")
    finally:
        plots._save = real_save
    ax1, ax2 = captured["fig"].axes[:2]
    assert len(ax1.get_lines()) == 3 and len(ax2.get_lines()) == 3
    assert [t.get_text() for t in ax1.get_legend().get_texts()] == ["linear", "cosine", "squaredcos_cap_v2"]
    plt.close("all")


def test_unknown_schedule_lists_valid_ones(tmp_path):
    r = runner.invoke(app, ["compare-schedules", "--plot-only", "--schedules", "linear,cosinus",
                            "--out", str(tmp_path)])
    assert r.exit_code == 2
    assert 'unknown noise schedule "cosinus"' in r.stderr and "squaredcos_cap_v2" in r.stderr


def test_study_trains_and_scores_a_tokens_model(tmp_path, course_kit):
    from iclevr.weights import load_weights

    tokens = {**TINY_MODEL, "condition": "tokens", "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"],
              "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"]}
    cfg = tmp_path / "train.json"
    cfg.write_text(json.dumps({"model": tokens, "train": {"batch_size": 4, "warmup_steps": 0, "sample_every": 0}}))
    order = [c[0] for c in json.loads((course_kit / "new_test.json").read_text())[:4]]
    evaluator = fixed_ranking(tmp_path / "checkpoint.pth", order)
    out = tmp_path / "study"
    r = runner.invoke(app, ["compare-schedules", "--schedules", "cosine", "--preset", "tiny", "--max-steps", "2",
                            "--data-dir", str(course_kit), "--evaluator", str(evaluator), "--eval-seeds", "0",
                            "--steps", "2", "--train-config", str(cfg), "--out", str(out)])
    assert r.exit_code == 0, r.stdout + r.stderr
    model, info = load_weights(out / "runs" / "cosine-s0" / "weights" / "ema.safetensors")
    assert info.model.condition == "tokens" and type(model.unet).__name__ == "UNet2DConditionModel"
    assert (out / "grid-cosine-s0.png").is_file()
    row = json.loads((out / "report.json").read_text())["runs"][0]
    expected = _expected_accuracy(course_kit, order)
    for split in ("test", "new_test"):
        assert row["splits"][split]["values"] == pytest.approx([expected[split]])
