"""The README stays true: CI runs its test command, and its command reference matches the CLI."""

from pathlib import Path

from iclevr.cli.reference import END, START, generate

ROOT = Path(__file__).resolve().parents[1]


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    test_cmd = 'pip install torch==2.14.1 torchvision==0.29.1 && pip install -e ".[test]" && python -m pytest -q'
    assert f"```bash\n{test_cmd}\n```" in readme
    assert test_cmd in ci.splitlines()


def test_command_reference_matches_cli():
    readme = (ROOT / "README.md").read_text()
    block = readme.split(START, 1)[1].split(END, 1)[0].lstrip("\n")
    assert block == generate(), "run `python -m iclevr.cli.reference --write README.md`"
    for command in ("train", "sample", "denoise-trace", "eval", "compare-schedules", "demo", "data check",
                    "data synth", "evaluator train"):
        assert f"#### `iclevr {command}`" in block


def test_the_demo_curve_is_the_committed_result_files():
    """Every row of the tiny-tokens demo table matches its summary.json and val report.json."""
    import json
    import re

    readme = (ROOT / "README.md").read_text()
    block = readme.split("<!-- TOKENS_DEMO_TABLE -->", 1)[1].split("<!-- /TOKENS_DEMO_TABLE -->", 1)[0]
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
        for cell, split in ((cells[4], val), (cells[5], summary["accuracy"]["test"]),
                            (cells[6], summary["accuracy"]["new_test"])):
            assert cell == f"{split['mean']:.3f} ± {split['std']:.3f}"
        assert cells[7] == f"{summary['mean_over_splits']:.3f}"
