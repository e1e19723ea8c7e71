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
