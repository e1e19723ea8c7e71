"""`iclevr compare-schedules`: every file, a row per schedule (val, the choosing split, first), no retraining on a
second run, old score caches recomputed, the best schedule chosen on val, plot-only."""

import json
import re
from pathlib import Path

import pytest
from conftest import TINY_MODEL
from evaluator_standin import expected_hits, fixed_ranking, fixed_topk
from typer.testing import CliRunner

from iclevr.cli.app import app

runner = CliRunner()


STUDY_SPLITS = ["val", "test", "new_test"]  # val chooses; test and new_test are reported


def _expected_accuracy(kit, order: list[str]) -> dict[str, float]:
    """Per split (val derived: the kit has no val.json), the accuracy of a `fixed_ranking(order)` evaluator."""
    from iclevr.data.course import load_conditions

    out = {}
    for split, conditions in load_conditions(kit, tuple(STUDY_SPLITS)).items():
        hits = expected_hits(conditions, [fixed_topk(order, c) for c in conditions])
        out[split] = sum(hits) / sum(len(c) for c in conditions)
    return out


def _page_numbers(page: str) -> dict[str, float]:
    """The page's tagged numbers: data-key (a path into report.json) -> data-value."""
    return {
        k: json.loads(v.replace("&quot;", '"')) for k, v in re.findall(r'data-key="([^"]+)" data-value="([^"]+)"', page)
    }


def _lookup(report: dict, key: str):
    value = report
    for part in key.split("/"):
        value = value[int(part)] if isinstance(value, list) else value[part]
    return value


def _check_val_first(report: dict, page: str, stdout: str, expected: dict[str, float]) -> None:
    """val, test and new_test scored as expected for both schedules, val first in report.json, page and table."""
    assert len(set(expected.values())) == 3  # the three splits' numbers can be told apart
    for row in report["runs"]:
        assert list(row["splits"]) == STUDY_SPLITS  # val first
        for split in STUDY_SPLITS:  # the stand-in's answers are known: the accuracies are too
            assert row["splits"][split]["values"] == pytest.approx([expected[split]] * 2)
    # equal scores everywhere: the tie goes to the first schedule, and the choice is stated as made on val
    assert report["choose_on"] == "val" and report["best"] == "linear"
    numbers = _page_numbers(page)
    for i in range(2):
        for split in STUDY_SPLITS:
            assert numbers[f"runs/{i}/splits/{split}/mean"] == pytest.approx(expected[split])
        assert page.index(f'"runs/{i}/splits/val/mean"') < page.index(f'"runs/{i}/splits/test/mean"')
    assert all(_lookup(report, k) == v for k, v in numbers.items())
    assert page.count('class="best"') == 1 and "val <span" in page and "(chooses)" in page
    lines = stdout.splitlines()
    head = next(i for i, line in enumerate(lines) if "chooses" in line)  # the headers' second line: each split's role
    assert lines[head - 1].index("val") < lines[head - 1].index("test") < lines[head - 1].index("new_test")
    assert lines[head].index("chooses") < lines[head].index("reported") and "best on val: linear" in stdout
    for split in STUDY_SPLITS:  # printed as mean±std; both sampling seeds score alike, so std 0
        assert stdout.count(f"{expected[split]:.3f}±0.000") >= 2, split


def test_study_writes_everything_and_reuses_finished_runs(tmp_path, course_kit):
    cfg = tmp_path / "train.json"
    cfg.write_text(
        json.dumps(
            {"model": TINY_MODEL, "train": {"batch_size": 4, "warmup_steps": 0, "log_every": 1, "sample_every": 0}}
        )
    )
    order = [c[0] for c in json.loads((course_kit / "new_test.json").read_text())[:4]]
    evaluator = fixed_ranking(tmp_path / "checkpoint.pth", order)
    expected = _expected_accuracy(course_kit, order)
    out = tmp_path / "study"
    args = [
        "compare-schedules",
        "--schedules",
        "linear,cosine",
        "--preset",
        "tiny",
        "--max-steps",
        "3",
        "--data-dir",
        str(course_kit),
        "--evaluator",
        str(evaluator),
        "--eval-seeds",
        "0,1",
        "--steps",
        "2",
        "--train-config",
        str(cfg),
        "--out",
        str(out),
    ]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.stdout + r.stderr
    for name in (
        "schedules.png",
        "accuracy.png",
        "report.json",
        "report.html",
        "grid-linear-s0.png",
        "grid-cosine-s0.png",
    ):
        assert (out / name).is_file(), name
    page = (out / "report.html").read_text()  # one page: both figures and each schedule's grid, embedded
    assert page.count("<img") == 4 and 'id="schedule-linear"' in page and 'id="schedule-cosine"' in page
    report = json.loads((out / "report.json").read_text())
    assert [row["name"] for row in report["runs"]] == ["linear", "cosine"]
    _check_val_first(report, page, r.stdout, expected)
    assert (out / "runs" / "linear-s0" / "eval-val" / "report.json").is_file()
    assert "│ linear" in r.stdout and "│ cosine" in r.stdout
    # same initial weights and data order: only the schedule differs between the two runs
    runs = {n: json.loads((out / "runs" / f"{n}-s0" / "settings.json").read_text()) for n in ("linear", "cosine")}
    assert runs["linear"]["schedule"]["name"] == "linear" and runs["cosine"]["schedule"]["name"] == "cosine"
    runs["linear"]["schedule"]["name"] = runs["cosine"]["schedule"]["name"] = runs["linear"]["out"] = runs["cosine"][
        "out"
    ] = None
    assert runs["linear"] == runs["cosine"]
    stamp = (out / "runs" / "linear-s0" / "weights" / "ema.safetensors").stat().st_mtime_ns
    cache = out / "runs" / "linear-s0" / "compare-eval.json"
    scored = cache.stat().st_mtime_ns
    again = runner.invoke(app, args)
    assert again.exit_code == 0, again.stdout + again.stderr
    assert "not retrained" in again.stdout
    assert (out / "runs" / "linear-s0" / "weights" / "ema.safetensors").stat().st_mtime_ns == stamp
    assert cache.stat().st_mtime_ns == scored  # same evaluator: the cached scores are reused
    # a cache written before val was scored (no splits in its key, no val scores): scored again, no crash
    old = json.loads(cache.read_text())
    del old["key"]["splits"]
    for field in ("accuracy", "mean", "hits"):
        del old["scores"][field]["val"]
    cache.write_text(json.dumps(old))
    fourth = runner.invoke(app, args)
    assert fourth.exit_code == 0, fourth.stdout + fourth.stderr
    assert json.loads(cache.read_text())["key"]["splits"] == STUDY_SPLITS
    row = json.loads((out / "report.json").read_text())["runs"][0]
    assert row["splits"]["val"]["values"] == pytest.approx([expected["val"]] * 2)
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
    r = runner.invoke(
        app, ["compare-schedules", "--plot-only", "--schedules", "linear,sigmoid,cosine", "--out", str(tmp_path)]
    )
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
    r = runner.invoke(
        app, ["compare-schedules", "--plot-only", "--schedules", "linear,cosinus", "--out", str(tmp_path)]
    )
    assert r.exit_code == 2
    assert 'unknown noise schedule "cosinus"' in r.stderr and "squaredcos_cap_v2" in r.stderr


def test_study_trains_and_scores_a_tokens_model(tmp_path, course_kit):
    from iclevr.weights import load_weights

    tokens = {
        **TINY_MODEL,
        "condition": "tokens",
        "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"],
        "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"],
    }
    cfg = tmp_path / "train.json"
    cfg.write_text(json.dumps({"model": tokens, "train": {"batch_size": 4, "warmup_steps": 0, "sample_every": 0}}))
    order = [c[0] for c in json.loads((course_kit / "new_test.json").read_text())[:4]]
    evaluator = fixed_ranking(tmp_path / "checkpoint.pth", order)
    out = tmp_path / "study"
    r = runner.invoke(
        app,
        [
            "compare-schedules",
            "--schedules",
            "cosine",
            "--preset",
            "tiny",
            "--max-steps",
            "2",
            "--data-dir",
            str(course_kit),
            "--evaluator",
            str(evaluator),
            "--eval-seeds",
            "0",
            "--steps",
            "2",
            "--train-config",
            str(cfg),
            "--out",
            str(out),
        ],
    )
    assert r.exit_code == 0, r.stdout + r.stderr
    model, info = load_weights(out / "runs" / "cosine-s0" / "weights" / "ema.safetensors")
    assert info.model.condition == "tokens" and type(model.unet).__name__ == "UNet2DConditionModel"
    assert (out / "grid-cosine-s0.png").is_file()
    row = json.loads((out / "report.json").read_text())["runs"][0]
    expected = _expected_accuracy(course_kit, order)
    for split in STUDY_SPLITS:
        assert row["splits"][split]["values"] == pytest.approx([expected[split]])
    assert json.loads((out / "report.json").read_text())["best"] is None  # one schedule: nothing chosen


def test_best_schedule_is_chosen_on_val_alone():
    from rich.console import Console

    from iclevr.evaluation.html import render_comparison
    from iclevr.studies.compare import best_schedule
    from iclevr.studies.compare_report import print_report

    rows = []  # cosine wins test and new_test, linear wins val: the study must pick linear
    for name, val, reported in (("linear", 0.70, 0.50), ("cosine", 0.60, 0.80), ("sigmoid", 0.65, 0.40)):
        splits = {
            s: {"values": [v], "mean": v, "std": 0.0}
            for s, v in (("val", val), ("test", reported), ("new_test", reported + 0.01))
        }
        rows.append({"name": name, "splits": splits, "final_loss": None, "train_wall_s": 60.0, "runs": []})
    assert best_schedule(rows) == "linear" and best_schedule(rows[1:]) == "sigmoid" and best_schedule(rows[:1]) is None
    report = {"table": [], "runs": rows, "choose_on": "val", "best": best_schedule(rows), "settings": {}}
    page = render_comparison(report, grids={}, figures={})
    assert page.count('class="best"') == 1
    linear = page[page.index('id="schedule-linear"') : page.index('id="schedule-cosine"')]
    assert 'class="best"' in linear and linear.index('class="best"') < linear.index("splits/test/mean")
    console = Console(width=80, record=True)
    print_report(console, report, Path("study"))
    text = console.export_text()
    assert "best on val: linear" in text
    linear_row = next(line for line in text.splitlines() if "│ linear" in line)
    assert linear_row.index("0.700±0.000") < linear_row.index("0.500±0.000") < linear_row.index("0.510±0.000")
