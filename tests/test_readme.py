"""The README and docs stay true: CI runs the README's test command, the command reference is the CLI's own,
and every table of results matches the committed file it was copied from, wherever the table lives."""

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PRETRAINED = ROOT / "benchmarks" / "results" / "pretrained" / "metrics.json"


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
    [row] = [r for r in marked_block("docs/model-card.md", "PRETRAINED_TRAINING").splitlines() if r.startswith("| 4")]
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[:3] == [f"{record['steps']:,}", f"{record['images_seen']:,}", f"{record['wall_hours']:.2f} h"]
    card = (ROOT / "docs" / "model-card.md").read_text()
    assert f"**{record['test_new_test_mean']:.3f}**" in card and f"{record['bytes'] / 1e6:.1f} MB" in card


@pytest.mark.parametrize("page", ["README.md", "docs/model-card.md"])
def test_the_packaged_models_headline_numbers_are_the_record(page):
    """The numbers the README (and the card) quote for the packaged model are those of metrics.json."""
    record = json.loads(PRETRAINED.read_text())
    text = (ROOT / page).read_text()
    for split in ("test", "new_test"):
        assert f"{record['accuracy'][split]['mean']:.3f}" in text, (page, split)
    assert f"{record['test_new_test_mean']:.3f}" in text and f"{record['steps']:,}" in text


def test_the_readmes_demo_numbers_are_the_demo_summaries():
    """The README's one line about the demo (10, 30, 60 minutes) quotes the committed summary files."""
    readme = (ROOT / "README.md").read_text()
    line = readme.split("the demo's model scores", 1)[1].split("(mean of test and new_test", 1)[0]
    quoted = [float(x) for x in re.findall(r"\*\*(\d\.\d{3})\*\*", line)]
    files = ROOT / "benchmarks" / "results" / "demo"
    expected = [
        json.loads((files / f"2026-12-03-tiny-tokens-{m}min.json").read_text())["mean_over_splits"]
        for m in (10, 30, 60)
    ]
    assert quoted == [round(e, 3) for e in expected]
