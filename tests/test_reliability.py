"""Shared machines and clusters: one writer per run folder, full disks, preemption signals, runs that never saved."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from conftest import TINY_MODEL
from safetensors.torch import load_file
from typer.testing import CliRunner

from iclevr.cli.app import app
from iclevr.errors import EXIT_RESUMABLE, TrainingStopped, UserError

runner = CliRunner()
pytestmark = pytest.mark.usefixtures("one_thread")


def flat(text: str) -> str:
    return " ".join(text.split())  # Rich wraps long lines at the terminal width


def settings_for(course_kit: Path, out: Path, **train):
    """TrainSettings of the tiny test UNet on the test kit (12 images, 3 steps per epoch at batch 4)."""
    from iclevr.settings import TrainSettings, resolve

    loop = {
        "batch_size": 4,
        "lr": 2e-3,
        "lr_schedule": "constant",
        "log_every": 1,
        "checkpoint_every": 0,
        "optimizer": "adamw",
        "device": "cpu",
        **train,
    }
    return resolve(
        TrainSettings,
        overrides={
            "model": dict(TINY_MODEL),
            "data.data_dir": str(course_kit),
            "out": str(out),
            "train": loop,
            "sampler": {"sampler": "ddim", "steps": 2, "batch_size": 32},
        },
    )


def weights(run: Path) -> dict:
    return {
        f"{name}/{k}": v
        for name in ("model", "ema")
        for k, v in load_file(str(run / "weights" / f"{name}.safetensors")).items()
    }


def same_weights(a: Path, b: Path) -> bool:
    wa, wb = weights(a), weights(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def cli_config(tmp_path: Path, **train) -> Path:
    """A settings file for `iclevr train` of the tiny test UNet."""
    cfg = tmp_path / "cfg.json"
    cfg.write_text(
        json.dumps(
            {
                "preset": "tiny",
                "model": TINY_MODEL,
                "sampler": {"sampler": "ddim", "steps": 2},
                "train": {
                    "log_every": 1,
                    "lr": 1e-3,
                    "lr_schedule": "constant",
                    "checkpoint_every": 0,
                    "device": "cpu",
                    "batch_size": 4,
                    **train,
                },
            }
        )
    )
    return cfg


def launch(args: list[str], log: Path) -> subprocess.Popen:
    """`python -m iclevr ARGS` with stdout+stderr into `log` (one thread, as on the shared test machine)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "400"}
    with open(log, "w") as out:
        return subprocess.Popen([sys.executable, "-m", "iclevr", *args], stdout=out, stderr=subprocess.STDOUT, env=env)


def wait_for(text: str, proc: subprocess.Popen, log: Path, timeout: float = 120.0) -> None:
    """Poll the child's log until `text` appears; fail if it exits first."""
    end = time.monotonic() + timeout
    while text not in log.read_text():
        assert proc.poll() is None, f"exited early ({proc.returncode}):\n{log.read_text()[-3000:]}"
        assert time.monotonic() < end, f"timed out waiting for {text!r}:\n{log.read_text()[-3000:]}"
        time.sleep(0.01)


# --- one writer per run folder ----------------------------------------------------------------------------


def test_the_run_lock_is_exclusive_and_names_its_holder(tmp_path):
    from iclevr.training.lock import lock_path, read_holder, run_lock

    run = tmp_path / "run"
    with run_lock(run):
        holder = read_holder(run)
        assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname() and holder["started"]
        with pytest.raises(UserError) as err:  # a second open file: flock refuses it even in this process
            with run_lock(run):
                pass
        text = str(err.value)
        assert text.startswith(
            f"{run} is being trained by another process (pid {os.getpid()} on host "
            f"{socket.gethostname()}, started {holder['started']})"
        )
        assert f"`kill {os.getpid()}`" in text and "another --out folder" in text
    with run_lock(run):  # released at the end of the block
        pass
    with run_lock(tmp_path / "other", enabled=False):  # a non-main process of a multi-process run
        pass
    assert not (tmp_path / "other").exists() and lock_path(run).is_file()


HOLD_SCRIPT = textwrap.dedent("""
    import sys, time
    from iclevr.training.lock import run_lock
    with run_lock(sys.argv[1]):
        print("locked", flush=True)
        time.sleep(120)
""")


@pytest.mark.slow
def test_a_killed_holder_leaves_no_stale_lock(tmp_path):
    from iclevr.training.lock import run_lock

    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-c", HOLD_SCRIPT, str(run)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(UserError, match=f"pid {proc.pid} on host"):
            with run_lock(run):
                pass
        proc.send_signal(signal.SIGKILL)  # no handler, no clean-up: the kernel drops the lock
        proc.wait(timeout=30)
    finally:
        proc.kill()
    with run_lock(run):
        pass


def test_a_second_writer_touches_nothing(course_kit, tmp_path):
    """The failure of the issue: the second `train` cleaned the first one's temporary state file. Now it stops
    at the lock, before the stale-temp clean-up, --overwrite, or any other write."""
    from iclevr.training.lock import run_lock
    from iclevr.training.loop import train

    run = tmp_path / "run"
    (run / "state").mkdir(parents=True)
    files = {
        run / "state" / ".step-00000006.pt.1234abcd.tmp": b"half a state being written",
        run / "metrics.jsonl": b'{"step": 1}\n',
        run / "settings.json": b"{}",
    }
    for path, data in files.items():
        path.write_bytes(data)
    settings = settings_for(course_kit, run, max_steps=2)
    with run_lock(run):  # the first writer, still training
        before = sorted((p, p.stat().st_mtime_ns) for p in run.rglob("*"))
        for kwargs in ({"resume": True}, {"overwrite": True}, {}):
            with pytest.raises(UserError, match="is being trained by another process"):
                train(settings, **kwargs)
        assert sorted((p, p.stat().st_mtime_ns) for p in run.rglob("*")) == before
    assert all(path.read_bytes() == data for path, data in files.items())


# --- preemption signals ------------------------------------------------------------------------------------


def test_stop_signals_set_one_flag_and_only_a_second_ctrl_c_escalates():
    from iclevr.training.signals import interrupt_flag, stop_cause

    before = signal.getsignal(signal.SIGTERM)
    with interrupt_flag() as flag:
        os.kill(os.getpid(), signal.SIGTERM)
        assert flag == {"set": True, "signal": "SIGTERM"}
        os.kill(os.getpid(), signal.SIGTERM)  # a launcher forwarding it again: the save goes on
        os.kill(os.getpid(), signal.SIGUSR1)
        assert flag["signal"] == "SIGTERM" and stop_cause(flag) == "stopped by SIGTERM"
        with pytest.raises(KeyboardInterrupt):  # a Ctrl-C on top: the user wants it stopped now
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGTERM) == before
    assert stop_cause({"signal": "SIGINT"}) == "interrupted (Ctrl-C)"
    assert stop_cause({"signal": None}).startswith("stopped (another process")


def test_sigusr1_saves_the_state_and_resumes_bit_identically(course_kit, tmp_path, monkeypatch):
    import iclevr.training.loop as T

    calls, real = {"n": 0}, T.diffusion_loss

    def signalling(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            os.kill(os.getpid(), signal.SIGUSR1)  # SLURM's warning before the time limit, inside step 3
        return real(*args, **kwargs)

    common = dict(max_steps=6, p_uncond=0.5, ema_decay=0.9, warmup_steps=4)
    monkeypatch.setattr(T, "diffusion_loss", signalling)
    run = tmp_path / "run"
    with pytest.raises(TrainingStopped) as err:
        T.train(settings_for(course_kit, run, **common))
    assert err.value.exit_code == EXIT_RESUMABLE == 3
    assert str(err.value).startswith(f"stopped by SIGUSR1 at step 3; state saved in {run}/state")
    assert [p.name for p in (run / "state").iterdir()] == ["step-00000003.pt"]
    assert signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL  # handlers restored
    monkeypatch.setattr(T, "diffusion_loss", real)
    T.train(settings_for(course_kit, run, **common), resume=True)
    straight = T.train(settings_for(course_kit, tmp_path / "straight", **common))
    assert same_weights(run, straight)
    assert [json.loads(r)["step"] for r in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3, 4, 5, 6]


@pytest.mark.slow
def test_sigterm_mid_run_saves_exits_3_and_resumes_bit_identically(course_kit, tmp_path):
    from iclevr.settings import TrainSettings
    from iclevr.training.loop import train

    run, log = tmp_path / "run", tmp_path / "train.log"
    proc = launch(
        [
            "train",
            "--config",
            str(cli_config(tmp_path)),
            "--data-dir",
            str(course_kit),
            "--out",
            str(run),
            "--max-steps",
            "30",
        ],
        log,
    )
    try:
        wait_for("step 3 epoch", proc, log)
        proc.send_signal(signal.SIGTERM)  # what `kill`, `docker stop` and SLURM send
        assert proc.wait(timeout=120) == 3, log.read_text()[-3000:]
    finally:
        proc.kill()
    text = flat(log.read_text())
    states = sorted(p.name for p in (run / "state").iterdir())
    assert len(states) == 1, states
    step = int(states[0][5:13])
    assert 3 <= step < 30
    assert (
        f"stopped by SIGTERM at step {step}; state saved in {run}/state; continue with `iclevr train --resume "
        f"{run}` (exit code 3: resumable)"
    ) in text
    assert "Traceback" not in text and json.loads((run / "progress.json").read_text())["step"] == step

    r = runner.invoke(app, ["train", "--resume", str(run)])
    assert r.exit_code == 0, r.output + r.stderr
    assert f"resuming {run} from step-{step:08d}.pt" in flat(r.output)
    settings = TrainSettings.model_validate_json((run / "settings.json").read_text())
    straight = train(settings.model_copy(update={"out": tmp_path / "straight"}))
    assert same_weights(run, straight)
    assert [json.loads(r)["step"] for r in (run / "metrics.jsonl").read_text().splitlines()] == list(range(1, 31))


@pytest.mark.slow
def test_two_trainings_into_one_folder_one_runs_the_other_stops(course_kit, tmp_path):
    run, cfg = tmp_path / "run", cli_config(tmp_path, log_every=10, checkpoint_every_steps=20)
    args = ["train", "--config", str(cfg), "--data-dir", str(course_kit), "--out", str(run), "--max-steps", "60"]
    procs = [launch(args, tmp_path / f"train-{k}.log") for k in range(2)]  # started at the same moment
    codes = [p.wait(timeout=300) for p in procs]
    logs = [flat((tmp_path / f"train-{k}.log").read_text()) for k in range(2)]
    assert sorted(codes) == [0, 2], (codes, logs)
    winner, loser = (0, 1) if codes[0] == 0 else (1, 0)
    assert f"error: {run} is being trained by another process (pid {procs[winner].pid} on host " in logs[loser]
    assert "Traceback" not in logs[loser] and "done: max_steps=60 reached at step 60" in logs[winner]
    assert [json.loads(r)["step"] for r in (run / "metrics.jsonl").read_text().splitlines()] == [10, 20, 30, 40, 50, 60]
    assert sorted(p.name for p in (run / "state").iterdir()) == ["step-00000040.pt", "step-00000060.pt"]


# --- full disks -----------------------------------------------------------------------------------------------


def test_a_full_disk_during_a_state_save_is_one_line_and_the_last_state_resumes(course_kit, tmp_path, monkeypatch):
    """The 3rd state write (step 6) puts half its bytes on disk, then the disk is full."""
    import errno

    from iclevr.settings import TrainSettings
    from iclevr.training.loop import train
    from iclevr.weights import read_info

    run, real_save, calls = tmp_path / "run", torch.save, {"n": 0}

    def filling_save(obj, f, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] < 3:
            return real_save(obj, f, *args, **kwargs)
        Path(f).write_bytes(b"PK\x03\x04" + bytes(4096))
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("iclevr.device.has_gpu", lambda: False)
    monkeypatch.setattr(torch, "save", filling_save)
    args = [
        "train",
        "--config",
        str(cli_config(tmp_path, checkpoint_every_steps=2, p_uncond=0.5)),
        "--data-dir",
        str(course_kit),
        "--out",
        str(run),
        "--max-steps",
        "8",
    ]
    r = runner.invoke(app, args)
    err = flat(r.stderr)
    assert r.exit_code == 2, r.output + r.stderr
    assert err.startswith(
        f"error: cannot write training state {run}/state/step-00000006.pt: no space left on device (about "
    )
    assert (
        " MB needed, " in err
        and f"free in {run}/state); the last good state step-00000004.pt is kept; "
        f"once fixed, continue with `iclevr train --resume {run}`"
        in err
    )
    assert "Traceback" not in r.output + r.stderr and len(r.stderr.strip().splitlines()) <= 3  # one wrapped line
    assert sorted(p.name for p in (run / "state").iterdir()) == ["step-00000002.pt", "step-00000004.pt"]
    assert read_info(run / "weights" / "ema.safetensors").step == 4  # the weights of the last good state
    assert not list(run.rglob("*.tmp"))

    monkeypatch.setattr(torch, "save", real_save)  # space freed
    r = runner.invoke(app, ["train", "--resume", str(run)])
    assert r.exit_code == 0 and f"resuming {run} from step-00000004.pt" in flat(r.output), r.output + r.stderr
    assert read_info(run / "weights" / "ema.safetensors").step == 8
    settings = TrainSettings.model_validate_json((run / "settings.json").read_text())
    straight = train(settings.model_copy(update={"out": tmp_path / "straight"}))
    assert same_weights(run, straight)


FILE_LIMIT_SCRIPT = textwrap.dedent("""
    import resource, signal, sys, torch
    from iclevr.errors import WriteError
    from iclevr.training.state import save_state
    save_state(sys.argv[1], {"step": 1, "w": torch.ones(1000)}, keep=2)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1_000_000, resource.RLIM_INFINITY))  # files over 1 MB refused
    try:
        save_state(sys.argv[1], {"step": 2, "w": torch.ones(1_000_000)}, keep=2)  # 4 MB: torch.save fails
    except WriteError as e:
        print(e)
""")


@pytest.mark.slow
def test_torch_save_failing_without_errno_is_translated(tmp_path):
    """torch.save reports a refused write as RuntimeError('... unexpected pos ...'); the probe finds out why."""
    done = subprocess.run(
        [sys.executable, "-c", FILE_LIMIT_SCRIPT, str(tmp_path)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == (
        f"cannot write training state {tmp_path}/step-00000002.pt: file too large for "
        "the file system (about 4.0 MB needed); the last good state step-00000001.pt "
        "is kept"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-00000001.pt"]


# --- runs that never saved ----------------------------------------------------------------------------------


def test_readers_report_a_run_without_weights_in_one_line(course_kit, tmp_path):
    from iclevr.training.lock import read_holder, run_lock

    run = tmp_path / "run"
    with run_lock(run):  # a training that is still in its first minutes
        (run / "settings.json").write_text("{}")
        started = read_holder(run)["started"]
        for args in (
            ["sample", "--checkpoint", str(run), "--labels", "red cube"],
            ["eval", "--checkpoint", str(run), "--out", str(tmp_path / "eval")],
            ["export", "--checkpoint", str(run), "--out", str(tmp_path / "export")],
        ):
            r = runner.invoke(app, args)
            assert r.exit_code == 2 and flat(r.stderr) == (
                f"error: {run} has no weights yet (training started at {started}, no state saved); it is still "
                f"training (pid {os.getpid()}): its first save writes the weights"
            ), r.output + r.stderr
    r = runner.invoke(app, ["sample", "--checkpoint", str(run), "--labels", "red cube"])  # killed, never saved
    assert r.exit_code == 2 and flat(r.stderr) == (
        f"error: {run} has no weights yet (training started at "
        f"{started}, no state saved); continue it with `iclevr train "
        f"--resume {run}`"
    )
    r = runner.invoke(app, ["sample", "--checkpoint", str(tmp_path), "--labels", "red cube"])  # no run at all
    assert r.exit_code == 2 and "is not a run folder with weights" in r.stderr


@pytest.mark.slow
def test_a_run_killed_before_its_first_save_restarts_cleanly(course_kit, tmp_path):
    run, log = tmp_path / "run", tmp_path / "train.log"
    cfg = cli_config(tmp_path)
    proc = launch(
        ["train", "--config", str(cfg), "--data-dir", str(course_kit), "--out", str(run), "--max-steps", "100000"], log
    )
    try:
        wait_for("step 2 epoch", proc, log)
    finally:
        proc.kill()  # SIGKILL in the first minutes: no state, no weights
        proc.wait(timeout=30)
    assert not (run / "state").exists() and not (run / "weights").exists()
    r = runner.invoke(app, ["sample", "--checkpoint", str(run), "--labels", "red cube"])
    assert r.exit_code == 2 and flat(r.stderr).startswith(f"error: {run} has no weights yet (training started at ")
    assert flat(r.stderr).endswith(f"no state saved); continue it with `iclevr train --resume {run}`")
    r = runner.invoke(app, ["train", "--resume", str(run), "--max-steps", "4"])
    assert r.exit_code == 0, r.output + r.stderr
    assert f"no training state in {run}/state" in flat(r.output) and "done: max_steps=4 reached at step 4" in flat(
        r.output
    )
    assert [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3, 4]
    r = runner.invoke(
        app, ["sample", "--checkpoint", str(run), "--labels", "red cube", "--out", str(tmp_path / "grid.png")]
    )
    assert r.exit_code == 0 and (tmp_path / "grid.png").is_file(), r.output + r.stderr
