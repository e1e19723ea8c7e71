"""`iclevr data check` and the CLI shell (help, version, error style)."""

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from iclevr.cli.app import app

runner = CliRunner()


def table_cells(text: str) -> dict[str, int]:
    """{first cell: number} for every (name, count) pair in the Rich tables of `data check`."""
    cells = {}
    for line in text.splitlines():
        if line.startswith("│"):
            row = [c.strip() for c in line.strip("│").split("│")]
            cells.update({name: int(count) for name, count in zip(row[0::2], row[1::2])})
    return cells


def test_data_check_ok(course_kit):
    from collections import Counter

    from iclevr import labels as L

    r = runner.invoke(app, ["data", "check", "--data-dir", str(course_kit)])
    assert r.exit_code == 0, r.output
    train = json.loads((course_kit / "train.json").read_text())
    per_class = Counter(label for objs in train.values() for label in objs)
    expected = {"1": 4, "2": 4, "3": 4, "total": 12, **{name: per_class[name] for name in L.LABELS}}
    assert table_cells(r.output) == expected  # 4 scenes of 1, 2 and 3 objects, counted per class
    for split in ("test", "new_test"):
        conditions = json.loads((course_kit / f"{split}.json").read_text())
        assert f"{split}.json: 32 conditions, {sum(map(len, conditions))} objects" in r.output
    assert "ok: the folder is usable" in r.output


def test_data_check_reports_missing_images(course_kit):
    sorted((course_kit / "iclevr").glob("CLEVR_*.png"))[0].unlink()
    r = runner.invoke(app, ["data", "check", "--data-dir", str(course_kit)])
    assert r.exit_code == 2
    assert "1 images missing" in r.output


def test_bad_folder_is_one_red_line_exit_2(tmp_path):
    r = runner.invoke(app, ["data", "check", "--data-dir", str(tmp_path / "nope")])
    assert r.exit_code == 2
    assert "error:" in r.stderr and "data folder not found" in r.stderr
    assert "Traceback" not in r.output + r.stderr
    assert len(r.stderr.strip().splitlines()) <= 2  # one logical line (may soft-wrap in narrow terminals)


def test_version_and_help():
    r = runner.invoke(app, ["--version"])
    assert r.exit_code == 0 and "iclevr 0.1.0" in r.output
    r = runner.invoke(app, [])
    assert r.exit_code == 2 and "Usage: iclevr" in r.output and "train" in r.output  # click: no command = 2


@pytest.mark.slow
def test_help_does_not_import_torch():
    code = "import sys; import iclevr.cli.app; assert 'torch' not in sys.modules, 'torch imported at start-up'"
    subprocess.run([sys.executable, "-c", code], check=True)
