"""`iclevr data check` and the CLI shell (help, version, error style)."""

import subprocess
import sys

from typer.testing import CliRunner

from iclevr.cli.app import app

runner = CliRunner()


def test_data_check_ok(course_kit):
    r = runner.invoke(app, ["data", "check", "--data-dir", str(course_kit)])
    assert r.exit_code == 0, r.output
    assert "12" in r.output and "ok:" in r.output
    assert "test.json: 32 conditions" in r.output


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
    assert "Usage" in r.output


def test_help_does_not_import_torch():
    code = "import sys; import iclevr.cli.app; assert 'torch' not in sys.modules, 'torch imported at start-up'"
    subprocess.run([sys.executable, "-c", code], check=True)
