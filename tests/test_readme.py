"""The README and docs stay true: CI runs the README's test command, the command reference is the CLI's own,
and every table of results matches the committed file it was copied from, wherever the table lives."""

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PRETRAINED = ROOT / "benchmarks" / "results" / "pretrained" / "metrics.json"
DEMO_LATENT_10 = "2026-12-06-tiny-latent-10min.json"  # the demo's summary.json, committed


def marked_block(page: str, marker: str) -> str:
    """The text between <!-- MARKER --> and <!-- /MARKER --> of a page (README.md or docs/...)."""
    text = (ROOT / page).read_text()
    assert f"<!-- {marker} -->" in text, f"{page} has no {marker} block"
    return text.split(f"<!-- {marker} -->", 1)[1].split(f"<!-- /{marker} -->", 1)[0]


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    test_cmd = 'pip install torch==2.14.1 torchvision==0.29.1 && pip install -e ".[test]" && python -m pytest -q'
    assert f"```bash\n{test_cmd}\n```" in readme
    assert test_cmd in ci.splitlines()


def test_ci_lints_with_the_pinned_ruff_before_the_tests():
    """.ci/run runs `ruff check` and `ruff format --check` with the ruff the test extra pins, before pytest."""
    import tomllib

    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["test"]
    [pin] = [r for r in extra if r.startswith("ruff")]
    assert f'pip install "{pin}"' in ci
    tests = next(i for i, line in enumerate(ci) if "python -m pytest" in line)
    assert ci.index("ruff check .") < tests and ci.index("ruff format --check .") < tests


def test_the_demo_curve_is_the_committed_result_files():
    """Every row of the tiny-tokens demo table (docs/training-on-a-cpu.md) matches its summary.json and val
    report.json."""
    block = marked_block("docs/training-on-a-cpu.md", "TOKENS_DEMO_TABLE")
    rows = [r for r in block.splitlines() if re.match(r"\| \d+ min \|", r)]
    assert len(rows) == 3
    files = ROOT / "benchmarks" / "results" / "demo"
    for row in rows:
        cells = [c.strip().strip("*") for c in row.strip("|").split("|")]
        minutes = int(cells[0].split()[0])
        summary = json.loads((files / f"2026-12-03-tiny-tokens-{minutes}min.json").read_text())
        val = json.loads((files / f"2026-12-03-tiny-tokens-{minutes}min-val.json").read_text())["splits"]["val"]
        steps = summary["train"]["steps"]
        assert cells[1] == f"{summary['train']['train_minutes']:.1f} min ({steps:,})"
        for cell, split in (
            (cells[4], val),
            (cells[5], summary["accuracy"]["test"]),
            (cells[6], summary["accuracy"]["new_test"]),
        ):
            assert cell == f"{split['mean']:.3f} ± {split['std']:.3f}"
        assert cells[7] == f"{summary['mean_over_splits']:.3f}"


def test_the_latent_demo_row_is_the_committed_result_files():
    """The tiny-latent demo row (docs/training-on-a-cpu.md) matches its summary.json and val report.json."""
    [row] = [r for r in marked_block("docs/training-on-a-cpu.md", "LATENT_DEMO_TABLE").splitlines() if "10 min |" in r]
    cells = [c.strip().strip("*") for c in row.strip("|").split("|")]
    files = ROOT / "benchmarks" / "results" / "demo"
    summary = json.loads((files / DEMO_LATENT_10).read_text())
    val = json.loads((files / DEMO_LATENT_10.replace(".json", "-val.json")).read_text())["splits"]["val"]
    stages = summary["stage_minutes"]
    assert cells[1] == f"{summary['train']['train_minutes']:.1f} min ({summary['train']['steps']:,})"
    assert cells[2:6] == [f"{stages[k]:.1f} min" for k in ("data", "train", "eval")] + [
        f"{summary['total_minutes']:.1f} min"
    ]
    for cell, split in (
        (cells[6], val),
        (cells[7], summary["accuracy"]["test"]),
        (cells[8], summary["accuracy"]["new_test"]),
    ):
        assert cell == f"{split['mean']:.3f} ± {split['std']:.3f}"
    assert cells[9] == f"{summary['mean_over_splits']:.3f}" and summary["train"]["preset"] == "tiny-latent"


def test_the_model_card_is_the_packaging_record():
    """docs/model-card.md's scores and training rows are benchmarks/results/pretrained/metrics.json."""
    record = json.loads(PRETRAINED.read_text())
    block = marked_block("docs/model-card.md", "PRETRAINED_SCORES")
    rows = [r for r in block.splitlines() if re.match(r"\| \w+ \(", r)]
    assert [r.split("|")[1].split()[0] for r in rows] == ["val", "test", "new_test"]
    for row in rows:
        cells = [c.strip().strip("*") for c in row.strip("|").split("|")]
        acc = record["accuracy"][cells[0].split()[0]]
        assert cells[1:4] == [f"{acc['per_seed'][s]:.3f}" for s in ("0", "1", "2")]
        assert cells[4] == f"{acc['mean']:.3f} ± {acc['std']:.3f}"
    [row] = [r for r in marked_block("docs/model-card.md", "PRETRAINED_TRAINING").splitlines() if r[2:3].isdigit()]
    cells = [c.strip() for c in row.strip("|").split("|")]
    stages = " + ".join(f"{s['steps']:,}" for s in record["stages"])
    assert cells[0] == f"{record['steps']:,}" + (f" ({stages})" if len(record["stages"]) > 1 else "")
    assert cells[1:3] == [f"{record['images_seen']:,}", f"{record['wall_hours']:.2f} h"]
    card = (ROOT / "docs" / "model-card.md").read_text()
    assert f"**{record['test_new_test_mean']:.3f}**" in card and f"{record['bytes'] / 1e6:.1f} MB" in card


def test_the_model_cards_sampler_table_is_the_val_sweep_files():
    """Every cell of the card's sampler table (val, seeds 0 and 1) is the committed sampler_accuracy file's mean,
    and the stored sampler is the table's best cell."""
    record = json.loads(PRETRAINED.read_text())
    rows = [r for r in marked_block("docs/model-card.md", "PRETRAINED_SAMPLER").splitlines() if r[2:3].isdigit()]
    files = ROOT / "benchmarks" / "results" / "sampler_accuracy"
    best = (0.0, None)
    for row in rows:
        cells = [c.strip().strip("*") for c in row.strip("|").split("|")]
        guidance = float(cells[0])
        for steps, cell in zip((14, 25, 40), cells[1:], strict=True):
            path = files / f"val-pack-g{guidance:g}-dpmpp-sde-{steps}-seeds0_1.json"
            assert (cell == "–") == (not path.is_file()), path
            if cell != "–":
                mean = json.loads(path.read_text())["splits"]["val"]["mean"]
                assert cell == f"{mean:.3f}", path
                best = max(best, (mean, (guidance, steps)))
    assert best[1] == (record["sampler"]["guidance_scale"], record["sampler"]["steps"])


@pytest.mark.parametrize("page", ["README.md", "docs/model-card.md"])
def test_the_packaged_models_headline_numbers_are_the_record(page):
    """The numbers the README (and the card) quote for the packaged model are those of metrics.json."""
    record = json.loads(PRETRAINED.read_text())
    text = (ROOT / page).read_text()
    for split in ("test", "new_test"):
        assert f"{record['accuracy'][split]['mean']:.3f}" in text, (page, split)
    assert f"{record['test_new_test_mean']:.3f}" in text and f"{record['steps']:,}" in text


def test_the_readmes_demo_numbers_are_the_demo_summaries():
    """The README's line about the demo quotes the committed files: the 10-minute demo's summary, then the two
    30-minute-budget rows of the designs study (mean of test and new_test)."""
    readme = (ROOT / "README.md").read_text()
    line = readme.split("The demo's model scores", 1)[1].split("[docs/training-on-a-cpu.md]", 1)[0]
    quoted = [float(x) for x in re.findall(r"\*\*(\d\.\d{3})\*\*", line)]
    results = ROOT / "benchmarks" / "results"
    expected = [json.loads((results / "demo" / DEMO_LATENT_10).read_text())["mean_over_splits"]] + [
        json.loads((results / "designs" / f"latent-30min-s{s}.json").read_text())["reported"]["mean_test_new_test"]
        for s in (0, 1)
    ]
    assert quoted == [round(e, 3) for e in expected]


def test_the_designs_page_tables_are_the_study_files():
    """docs/designs.md's two tables are what `python benchmarks/designs.py --table` prints from the committed rows."""
    from conftest import benchmark_module

    designs = benchmark_module("designs")
    assert marked_block("docs/designs.md", "DESIGNS_TABLE").strip() == designs.table()
    assert marked_block("docs/designs.md", "DESIGNS_REPORTED").strip() == designs.reported_table()
