"""README promises that had no test: exit 1 with a --debug hint (and the traceback under --debug), exit 130 on a
second Ctrl-C, the run-folder lock's fallback on file systems without locks."""

from __future__ import annotations

import errno
import fcntl

import pytest
from typer.testing import CliRunner

from iclevr.cli.app import app

runner = CliRunner()


def test_a_bug_is_exit_1_with_one_line_and_debug_shows_the_traceback(monkeypatch, tmp_path):
    def broken(*args, **kwargs):
        raise RuntimeError("planted bug\nsecond line")

    monkeypatch.setattr("iclevr.data.course.load_kit", broken)
    r = runner.invoke(app, ["data", "check", "--data-dir", str(tmp_path)])
    assert r.exit_code == 1 and "Traceback" not in r.output + r.stderr
    assert r.stderr.strip() == (
        "error: unexpected RuntimeError: planted bug (this is a bug or an unusual environment; "
        "re-run with --debug for the traceback)"
    )
    r = runner.invoke(app, ["--debug", "data", "check", "--data-dir", str(tmp_path)])
    assert r.exit_code == 1 and isinstance(r.exception, RuntimeError) and str(r.exception).startswith("planted bug")


def test_a_ctrl_c_outside_training_is_exit_130(monkeypatch, tmp_path):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("iclevr.data.course.load_kit", interrupted)
    r = runner.invoke(app, ["data", "check", "--data-dir", str(tmp_path)])
    assert r.exit_code == 130 and r.stderr.strip() == "error: interrupted"


def test_a_second_ctrl_c_in_training_is_exit_130_with_the_resume_line(monkeypatch, course_kit, tmp_path):
    import json
    import os
    import signal

    from conftest import TINY_MODEL

    import iclevr.training.loop as T

    real, calls = T.diffusion_loss, {"n": 0}

    def twice(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:  # inside the 2nd step: Ctrl-C twice
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)
        return real(*args, **kwargs)

    monkeypatch.setattr(T, "diffusion_loss", twice)
    cfg = tmp_path / "cfg.json"
    cfg.write_text(
        json.dumps(
            {
                "preset": "tiny",
                "model": TINY_MODEL,
                "train": {"device": "cpu", "batch_size": 4, "sample_grids": "off", "checkpoint_every": 0},
            }
        )
    )
    run = tmp_path / "run"
    r = runner.invoke(
        app, ["train", "--config", str(cfg), "--data-dir", str(course_kit), "--out", str(run), "--max-steps", "6"]
    )
    assert r.exit_code == 130, r.output + r.stderr
    assert " ".join(r.stderr.split()) == (
        f"error: interrupted during step 2; continue from the last saved state "
        f"(none yet) with `iclevr train --resume {run}`"
    )


def test_a_file_system_without_locks_trains_with_one_warning(monkeypatch, tmp_path):
    from iclevr.training.lock import lock_path, run_lock

    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    with pytest.warns(UserWarning, match=r"does not support locks \(No locks available\): nothing stops a second"):
        with run_lock(tmp_path / "run"):
            entered = True
    assert entered and lock_path(tmp_path / "run").is_file()
