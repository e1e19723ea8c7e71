"""Training loop: learning, bit-identical resume, atomic state under SIGKILL, NaN stop, Ctrl-C, protection,
the learning rate as a function of progress, sample grids, and the run-folder readers."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import TINY_MODEL
from safetensors.torch import load_file

from iclevr.errors import TrainingInterrupted, UserError

pytestmark = pytest.mark.usefixtures("one_thread")


def settings_for(course_kit: Path, out: Path, model: dict | None = None, **train):
    """TrainSettings of the tiny test UNet (plus `model` overrides) on the test kit (12 images), sample grids of
    the run's 2 DDIM steps."""
    from iclevr.settings import TrainSettings, resolve

    loop = {
        "batch_size": 4,
        "lr": 2e-3,
        "lr_schedule": "constant",
        "log_every": 1,
        "checkpoint_every": 1,
        "optimizer": "adamw",
        "device": "cpu",
        "sample_grids": "run",
        **train,
    }
    return resolve(
        TrainSettings,
        overrides={
            "model": {**TINY_MODEL, **(model or {})},
            "data.data_dir": str(course_kit),
            "out": str(out),
            "train": loop,
            "sampler": {"sampler": "ddim", "steps": 2, "batch_size": 32},
        },
    )


def fixed_batch_loss(model, settings, course_kit) -> float:
    """Mean loss of `model` on the whole test kit with fixed noise, timesteps and no label dropout."""
    from iclevr.data.course import load_kit, load_train_tensors, to_model_range
    from iclevr.schedules import make_scheduler
    from iclevr.training.loop import diffusion_loss

    images, labels = load_train_tensors(load_kit(course_kit), settings.model.sample_size)
    s = settings.model_copy(deep=True)
    s.train.p_uncond = 0.0
    alpha_bar = make_scheduler(s.schedule).alphas_cumprod.float()
    with torch.no_grad():
        return (
            sum(
                diffusion_loss(
                    model, to_model_range(images), labels, alpha_bar, s, torch.Generator().manual_seed(k)
                ).item()
                for k in range(8)
            )
            / 8
        )


def test_loss_falls_on_a_fixed_batch(course_kit, tmp_path):
    from iclevr.model import build_model
    from iclevr.training.loop import train

    settings = settings_for(
        course_kit, tmp_path / "run", max_steps=20, batch_size=12, p_uncond=0.0, log_every=10, checkpoint_every=0
    )
    torch.manual_seed(settings.train.seed)
    before = fixed_batch_loss(build_model(settings.model), settings, course_kit)  # the run's initial weights
    run = train(settings)
    model = build_model(settings.model)
    model.load_state_dict(load_file(str(run / "weights" / "model.safetensors")))
    after = fixed_batch_loss(model, settings, course_kit)
    assert after < 0.7 * before, (before, after)
    rows = [json.loads(r) for r in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [10, 20]
    assert rows[-1]["loss"] < rows[0]["loss"]


def _weights(run: Path) -> dict:
    return {
        f"{name}/{k}": v
        for name in ("model", "ema")
        for k, v in load_file(str(run / "weights" / f"{name}.safetensors")).items()
    }


def test_resume_is_bit_identical(course_kit, tmp_path):
    from iclevr.training.loop import train

    common = dict(warmup_steps=6, p_uncond=0.5, grad_accum=2, batch_size=2, ema_decay=0.9)
    straight = train(settings_for(course_kit, tmp_path / "a", max_steps=8, **common))
    half = settings_for(course_kit, tmp_path / "b", max_steps=4, **common)  # stops mid-epoch (3 steps/epoch)
    train(half)
    assert json.loads((tmp_path / "b" / "progress.json").read_text())["step"] == 4
    resumed = train(settings_for(course_kit, tmp_path / "b", max_steps=8, **common), resume=True)
    a, b = _weights(straight), _weights(resumed)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    steps = [json.loads(r)["step"] for r in (resumed / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 9))
    # a different seed really changes the weights (the comparison above can fail)
    other = train(settings_for(course_kit, tmp_path / "c", max_steps=8, seed=1, **common))
    assert not torch.equal(_weights(other)["model/label_embed.weight"], a["model/label_embed.weight"])


@pytest.mark.parametrize("lever", [{"immiscible": True}, {"model": {"self_condition": True}}])
def test_levers_train_and_resume_bit_identically(course_kit, tmp_path, lever):
    """Immiscible noise assignment and self-conditioning (tests/test_levers.py) inside the real loop: the run
    trains, a resumed run follows the uninterrupted one bit for bit, and the lever changes the weights."""
    from iclevr.training.loop import train

    common = dict(p_uncond=0.5, grad_accum=2, batch_size=2, ema_decay=0.9, sample_grids="off", **lever)
    straight = train(settings_for(course_kit, tmp_path / "a", max_steps=6, **common))
    saved = json.loads((straight / "settings.json").read_text())
    assert saved["train"]["immiscible"] == ("immiscible" in lever)
    assert saved["model"]["self_condition"] == ("model" in lever)
    train(settings_for(course_kit, tmp_path / "b", max_steps=3, **common))
    resumed = train(settings_for(course_kit, tmp_path / "b", max_steps=6, **common), resume=True)
    a, b = _weights(straight), _weights(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)
    losses = [json.loads(r)["loss"] for r in (resumed / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 6 and all(math.isfinite(x) for x in losses)
    plain = {k: v for k, v in common.items() if k not in lever}
    without = _weights(train(settings_for(course_kit, tmp_path / "c", max_steps=6, **plain)))
    key = "model/unet.conv_out.weight"
    assert not torch.equal(without[key], a[key])  # the lever changed the training path


def test_resume_survives_a_torn_metrics_line_and_cleans_stale_temp_files(course_kit, tmp_path):
    from iclevr.training.loop import train

    run = tmp_path / "run"
    train(settings_for(course_kit, run, max_steps=3))
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 4, "loss": 0.1')  # a write cut short (power loss), no newline
    stale = [
        run / "weights" / ".ema.safetensors.dead.tmp",
        run / "weights" / ".model.safetensors.dead.tmp",
        run / ".progress.json.dead.tmp",
    ]
    for path in stale:
        path.write_bytes(b"half")
    train(settings_for(course_kit, run, max_steps=5), resume=True)
    steps = [json.loads(r)["step"] for r in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5]
    assert not any(path.exists() for path in stale)
    assert not list(run.rglob("*.tmp"))


def test_existing_run_is_protected(course_kit, tmp_path):
    from iclevr.training.loop import train

    settings = settings_for(course_kit, tmp_path / "run", max_steps=2)
    train(settings)
    with pytest.raises(UserError, match="--resume .* or --overwrite"):
        train(settings)
    with pytest.raises(UserError, match="conflict"):
        train(settings, resume=True, overwrite=True)
    train(settings.model_copy(update={"train": settings.train.model_copy(update={"max_steps": 3})}), overwrite=True)
    assert [p.name for p in sorted((tmp_path / "run" / "state").iterdir())] == ["step-00000003.pt"]


def test_state_rotation_and_time_budget(course_kit, tmp_path):
    from iclevr.training.loop import train
    from iclevr.training.state import list_states, load_latest

    run = train(settings_for(course_kit, tmp_path / "run", max_minutes=0.02, keep_states=2, checkpoint_every_steps=1))
    progress = json.loads((run / "progress.json").read_text())
    assert progress["finished"] and "time budget" in progress["stop_reason"]
    states = list_states(run / "state")
    assert len(states) == 2 and states[-1].name == f"step-{progress['step']:08d}.pt"
    state, _ = load_latest(run / "state")
    assert set(state) >= {"model", "ema", "optimizer", "scaler", "step", "wall_s", "rng", "settings"}


def test_non_finite_loss_stops_and_keeps_last_state(course_kit, tmp_path, monkeypatch):
    import iclevr.training.loop as T
    from iclevr.training.state import load_latest

    calls = {"n": 0}
    real = T.diffusion_loss

    def poisoned(*args, **kwargs):
        calls["n"] += 1
        loss = real(*args, **kwargs)
        return loss * float("nan") if calls["n"] > 4 else loss

    monkeypatch.setattr(T, "diffusion_loss", poisoned)
    settings = settings_for(course_kit, tmp_path / "run", max_steps=20, checkpoint_every=0, checkpoint_every_steps=2)
    with pytest.raises(TrainingInterrupted, match="non-finite at step 4 .*step-00000004.pt is kept.*lower --lr"):
        T.train(settings)
    state, path = load_latest(tmp_path / "run" / "state")
    assert path.name == "step-00000004.pt"
    assert all(torch.isfinite(v).all() for v in state["model"].values())


def test_ctrl_c_saves_a_resumable_state(course_kit, tmp_path, monkeypatch):
    import iclevr.training.loop as T

    calls = {"n": 0}
    real = T.diffusion_loss

    def interrupting(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            os.kill(os.getpid(), signal.SIGINT)  # what Ctrl-C sends; handled between steps
        return real(*args, **kwargs)

    monkeypatch.setattr(T, "diffusion_loss", interrupting)
    settings = settings_for(
        course_kit, tmp_path / "run", max_steps=6, checkpoint_every=0, lr_schedule="cosine", warmup_steps=2
    )
    with pytest.raises(TrainingInterrupted, match=f"iclevr train --resume {tmp_path / 'run'}"):
        T.train(settings)
    assert (tmp_path / "run" / "state" / "step-00000003.pt").is_file()
    monkeypatch.setattr(T, "diffusion_loss", real)
    T.train(settings, resume=True)
    assert json.loads((tmp_path / "run" / "progress.json").read_text())["step"] == 6
    lrs = [json.loads(r)["lr"] for r in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    # one warm-up + cosine path across the resume: 2e-3 x min(1, (k+1)/2) x (1 + cos(pi k/6)) / 2, written out
    assert lrs == pytest.approx([1e-3, 1.8660254e-3, 1.5e-3, 1e-3, 5e-4, 1.339746e-4], rel=1e-6)


def test_second_ctrl_c_stops_mid_step_and_resumes_from_the_last_state(course_kit, tmp_path, monkeypatch):
    import iclevr.training.loop as T

    calls = {"n": 0}
    real = T.diffusion_loss

    def interrupting(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:  # inside the 4th step (the state of step 2 is saved): Ctrl-C twice
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)
        return real(*args, **kwargs)

    monkeypatch.setattr(T, "diffusion_loss", interrupting)
    settings = settings_for(course_kit, tmp_path / "run", max_steps=6, checkpoint_every=0, checkpoint_every_steps=2)
    with pytest.raises(
        TrainingInterrupted,
        match=r"during step 4; continue from the last saved state "
        r"\(step-00000002.pt\) with `iclevr train --resume",
    ):
        T.train(settings)
    assert [p.name for p in (tmp_path / "run" / "state").iterdir()] == ["step-00000002.pt"]  # nothing half-saved
    monkeypatch.setattr(T, "diffusion_loss", real)
    T.train(settings, resume=True)
    assert json.loads((tmp_path / "run" / "progress.json").read_text())["step"] == 6


KILL_SCRIPT = textwrap.dedent("""
    import sys, time, torch
    from iclevr.training import state as train_state
    folder = sys.argv[1]
    train_state.save_state(folder, {"step": 1, "w": torch.ones(1000)}, keep=2)
    real_save = torch.save
    def slow_save(obj, f):  # write half of the bytes, then hang: the parent kills us mid-write
        import io
        buf = io.BytesIO(); real_save(obj, buf); data = buf.getvalue()
        with open(f, "wb") as out:
            out.write(data[: len(data) // 2]); out.flush()
            print("writing", flush=True)
            time.sleep(60)
    torch.save = slow_save
    train_state.save_state(folder, {"step": 2, "w": torch.zeros(1000)}, keep=2)
""")


@pytest.mark.slow
def test_sigkill_during_state_write_keeps_previous_state(tmp_path):
    from iclevr.training.state import list_states, load_latest, save_state

    folder = tmp_path / "state"
    proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, str(folder)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "writing"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        proc.kill()
    leftovers = [p.name for p in folder.iterdir()]
    assert "step-00000001.pt" in leftovers and any(n.endswith(".tmp") for n in leftovers)
    state, path = load_latest(folder)
    assert path.name == "step-00000001.pt" and torch.equal(state["w"], torch.ones(1000))
    save_state(folder, {"step": 3, "w": torch.zeros(1)}, keep=2)  # the next save cleans the debris
    assert [p.name for p in sorted(folder.iterdir())] == ["step-00000001.pt", "step-00000003.pt"]
    assert [p.name for p in list_states(folder)] == ["step-00000001.pt", "step-00000003.pt"]


TRAIN_SCRIPT = textwrap.dedent("""
    import io, sys, time, torch
    from rich.console import Console
    from iclevr.settings import TrainSettings
    from iclevr.training.loop import train
    torch.set_num_threads(1)
    real_save = torch.save
    pause = float(sys.argv[3])
    def slow_save(obj, f):  # every state write: half the bytes, a pause, the rest, so a kill can land inside it
        buf = io.BytesIO(); real_save(obj, buf); data = buf.getvalue()
        with open(f, "wb") as out:
            out.write(data[: len(data) // 2]); out.flush(); time.sleep(pause); out.write(data[len(data) // 2:])
    torch.save = slow_save
    settings = TrainSettings.model_validate_json(open(sys.argv[1]).read())
    train(settings, console=Console(file=sys.stdout, width=500), resume=sys.argv[2] == "resume")
""")


def _lines(path: Path) -> list[str]:
    """The complete (newline-terminated) lines of a file that another process may be appending to."""
    return path.read_text().split("\n")[:-1] if path.is_file() else []


def _last_step(log: Path) -> int:
    """The last step a training child reported on its console ("step N epoch ..."), 0 if none yet."""
    return max((int(line.split()[1]) for line in _lines(log) if line.startswith("step ")), default=0)


def _wait_until(condition, proc, log: Path, timeout: float = 60.0) -> None:
    """Poll `condition` every 2 ms; fail if the child exits first or the timeout passes."""
    import time

    end = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, f"training exited early ({proc.returncode}):\n{log.read_text()[-3000:]}"
        assert time.monotonic() < end, f"timed out:\n{log.read_text()[-3000:]}"
        time.sleep(0.002)


@pytest.mark.slow
def test_sigkill_at_random_moments_then_resume(course_kit, tmp_path):
    """SIGKILL a real run (subprocess) at 3 seeded random moments, one inside a state write; each --resume
    starts from the newest complete state, losing at most the steps since it, and the run finishes exactly
    like one never interrupted (bit-identical weights, every step logged once)."""
    import random
    import time
    import warnings

    from rich.console import Console

    from iclevr.training.loop import train
    from iclevr.training.state import list_states, load_latest

    every, total = 2, 30
    run, state_dir = tmp_path / "run", tmp_path / "run" / "state"
    settings = settings_for(course_kit, run, max_steps=total, checkpoint_every=0, checkpoint_every_steps=every)
    config = tmp_path / "settings.json"
    config.write_text(settings.model_dump_json())
    rng = random.Random(10)
    newest, saved, lost = None, 0, []
    for k, moment in enumerate(["random", "state-write", "random"]):
        log = tmp_path / f"launch-{k}.log"
        debris = set(state_dir.glob(".step-*.tmp"))
        pause = 0.3 if moment == "state-write" else 0.02  # seconds inside each state write
        with open(log, "w") as out:
            proc = subprocess.Popen(
                [sys.executable, "-u", "-c", TRAIN_SCRIPT, str(config), "resume" if k else "new", str(pause)],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        try:
            if moment == "state-write":  # a new temporary state file: the write is under way
                _wait_until(lambda old=debris: set(state_dir.glob(".step-*.tmp")) - old, proc, log)
            else:  # a few steps past the resumed state, then somewhere within a step, a log or a save
                target = saved + rng.randint(3, 6)
                _wait_until(lambda log=log, target=target: _last_step(log) >= target, proc, log)
                time.sleep(rng.uniform(0.0, 0.08))
        finally:
            proc.kill()  # SIGKILL: no handler, no cleanup
            proc.wait(timeout=30)
        if k:  # the resume message names the state it loaded
            assert (f"from {newest.name}" if newest else "no training state") in log.read_text()
        states = list_states(state_dir)
        if moment == "state-write":
            assert set(state_dir.glob(".step-*.tmp")) - debris  # the half-written file is there ...
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # ... and is never loaded: no "damaged" fallback either
            found = load_latest(state_dir)
        newest = found[1] if found else None
        assert newest == (states[-1] if states else None)
        saved = found[0]["step"] if found else 0
        done = _last_step(log)  # logged before that step's save, so done >= saved
        assert saved <= done <= saved + every, (saved, done)
        lost.append(done - saved)

    console = Console(record=True, width=500)
    train(settings, console=console, resume=True)  # the last --resume runs here, to the end
    assert (f"from {newest.name}" if newest else "no training state") in console.export_text()
    progress = json.loads((run / "progress.json").read_text())
    assert progress["step"] == total and progress["finished"]
    assert [json.loads(r)["step"] for r in _lines(run / "metrics.jsonl")] == list(range(1, total + 1))
    assert not list(state_dir.glob("*.tmp"))  # the debris of the killed write is gone
    straight = train(settings_for(course_kit, tmp_path / "straight", max_steps=total, checkpoint_every=0))
    a, b = _weights(straight), _weights(run)
    assert all(torch.equal(a[key], b[key]) for key in a), f"steps lost per kill: {lost}"


def test_damaged_newest_state_falls_back(tmp_path):
    from iclevr.training.state import load_latest, save_state

    save_state(tmp_path, {"step": 1, "w": torch.ones(3)}, keep=3)
    (tmp_path / "step-00000002.pt").write_bytes(b"PK\x03\x04 truncated")
    with pytest.warns(UserWarning, match="damaged"):
        state, path = load_latest(tmp_path)
    assert path.name == "step-00000001.pt"


def test_budget_and_batch_checked_up_front(course_kit, tmp_path):
    from iclevr.training.loop import train
    from iclevr.training.plan import make_plan

    settings = settings_for(course_kit, tmp_path / "run", batch_size=13, max_steps=1)
    with pytest.raises(UserError, match="exceeds the 12 training images"):
        train(settings)
    with pytest.raises(UserError, match="no training budget"):
        make_plan(
            settings_for(course_kit, tmp_path, batch_size=4).train.model_copy(update={"max_minutes": None}), 12, 1
        )


def test_lr_at_warmup_cosine_and_constant():
    from iclevr.training.lr import lr_at, warmup_ramp

    cos = [lr_at(k / 100, warmup=1.0, schedule="cosine") for k in range(101)]
    assert cos[0] == 1.0 and cos[50] == pytest.approx(0.5) and cos[100] == 0.0
    # (1 + cos(pi p)) / 2 written out: a line (0.75 at 0.25) or a smoothstep (0.84375) is off by far more
    assert [cos[10], cos[25], cos[75], cos[90]] == pytest.approx([0.9755283, 0.8535534, 0.1464466, 0.0244717], abs=1e-7)
    assert all(a > b for a, b in zip(cos, cos[1:]))
    assert lr_at(1.5, warmup=1.0, schedule="cosine") == 0.0 and lr_at(-1, warmup=1.0, schedule="cosine") == 1.0
    assert {lr_at(k / 10, warmup=1.0, schedule="constant") for k in range(11)} == {1.0}
    assert [warmup_ramp(s, 4) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert warmup_ramp(0, 0) == 1.0  # no warm-up
    assert lr_at(0.5, warmup=warmup_ramp(1, 4), schedule="cosine") == pytest.approx(0.5 * 0.5)  # ramp x schedule
    with pytest.raises(ValueError, match="unknown lr schedule"):
        lr_at(0.5, warmup=1.0, schedule="linear")


def test_run_progress_is_steps_of_a_step_budget_else_elapsed_time():
    from iclevr.training.lr import run_progress

    assert run_progress(25, 999.0, total_steps=100, budget_s=60.0) == 0.25  # a step budget wins
    assert run_progress(25, 15.0, total_steps=None, budget_s=60.0) == 0.25
    with pytest.raises(ValueError):
        run_progress(1, 1.0, total_steps=None, budget_s=None)


def test_time_budget_lr_never_rises_after_warmup_with_uneven_step_times():
    from iclevr.training.lr import lr_at, run_progress, warmup_ramp

    durations = [0.2, 3.0, 0.2, 0.2, 9.0, 0.5, 0.1, 6.0] * 40  # seconds per step: slow steps now and then
    elapsed, lrs = 0.0, []
    for step, d in enumerate(durations):
        if elapsed >= 600:
            break
        p = run_progress(step, elapsed, total_steps=None, budget_s=600.0)
        lrs.append(lr_at(p, warmup=warmup_ramp(step, 5), schedule="cosine"))
        elapsed += d
    assert all(a >= b for a, b in zip(lrs[4:], lrs[5:])) and lrs[-1] < 0.01


class FakeClock:
    """A clock that moves only while a training step computes its loss, by uneven amounts (seconds)."""

    def __init__(self, durations):
        self.now, self.durations, self.calls = 1000.0, durations, 0

    def __call__(self) -> float:
        return self.now

    def tick(self) -> None:
        self.now += self.durations[self.calls % len(self.durations)]
        self.calls += 1


def timed_loss(monkeypatch, clock: FakeClock, interrupt_at: int | None = None):
    """Make every loss evaluation advance `clock`; the one numbered `interrupt_at` also sends Ctrl-C."""
    import iclevr.training.loop as T

    real = T.diffusion_loss

    def loss(*args, **kwargs):
        clock.tick()
        if clock.calls == interrupt_at:
            os.kill(os.getpid(), signal.SIGINT)  # handled between steps: the run saves and stops
        return real(*args, **kwargs)

    monkeypatch.setattr(T, "diffusion_loss", loss)


DURATIONS = [0.5, 4.0, 1.0, 0.5, 9.0, 2.0]  # seconds per step of the fake clock: 17 s per 6 steps


def test_time_budget_lr_through_the_loop_follows_elapsed_time(course_kit, tmp_path, monkeypatch):
    from iclevr.training.loop import train

    clock = FakeClock(DURATIONS)
    timed_loss(monkeypatch, clock)
    run = train(
        settings_for(
            course_kit,
            tmp_path / "run",
            max_minutes=1.0,
            lr_schedule="cosine",
            warmup_steps=3,
            checkpoint_every=0,
            sample_grids="off",
        ),
        clock=clock,
    )
    lrs = [json.loads(r)["lr"] for r in (run / "metrics.jsonl").read_text().splitlines()]
    starts = [sum(DURATIONS[k % 6] for k in range(step)) for step in range(len(lrs))]  # elapsed at each step
    assert starts[-1] < 60 <= starts[-1] + DURATIONS[(len(lrs) - 1) % 6]  # stopped when the minute ran out
    # 2e-3 x min(1, (k+1)/3) x (1 + cos(pi t/60)) / 2 at each step's elapsed t, written out
    assert lrs == pytest.approx(
        [
            6.666667e-4,
            1.3331049e-3,
            1.9723699e-3,
            1.9588197e-3,
            1.9510565e-3,
            1.7071068e-3,
            1.6293204e-3,
            1.6087614e-3,
            1.4305111e-3,
            1.3826834e-3,
            1.3583679e-3,
            8.954715e-4,
            7.920883e-4,
            7.665546e-4,
            5.694889e-4,
            5.228412e-4,
            5e-4,
            1.613294e-4,
            1.089935e-4,
            9.74147e-5,
            2.76301e-5,
            1.67451e-5,
            1.23117e-5,
        ],
        rel=1e-5,
    )
    assert all(a >= b for a, b in zip(lrs[2:], lrs[3:])) and lrs[-1] < 0.05 * 2e-3
    progress = json.loads((run / "progress.json").read_text())
    assert progress["finished"] and progress["wall_s"] >= 60


def test_time_budget_resume_continues_the_same_lr_path(course_kit, tmp_path, monkeypatch):
    from iclevr.training.loop import train

    common = dict(max_minutes=1.0, lr_schedule="cosine", warmup_steps=3, checkpoint_every=0, sample_grids="off")
    timed_loss(monkeypatch, clock := FakeClock(DURATIONS))
    straight = train(settings_for(course_kit, tmp_path / "a", **common), clock=clock)
    timed_loss(monkeypatch, clock := FakeClock(DURATIONS), interrupt_at=7)
    with pytest.raises(TrainingInterrupted):
        train(settings_for(course_kit, tmp_path / "b", **common), clock=clock)
    assert json.loads((tmp_path / "b" / "progress.json").read_text())["step"] == 7
    resumed = train(settings_for(course_kit, tmp_path / "b", **common), resume=True, clock=clock)
    lrs = [
        [json.loads(r)["lr"] for r in (run / "metrics.jsonl").read_text().splitlines()] for run in (straight, resumed)
    ]
    assert len(lrs[0]) > 7 and lrs[1] == pytest.approx(lrs[0], rel=1e-9)


def test_progress_bar_never_passes_its_total():
    from iclevr.training.run_folder import bar_position

    assert bar_position(40, 3.0, 100, None) == (40, 100, "40/100")
    for elapsed in (0.0, 59.0, 600.0, 612.5):  # a time budget: the last step ends past the budget
        completed, total, text = bar_position(1114, elapsed, None, 600.0)
        assert completed <= total == 600.0 and text.startswith("step 1114, ")
    assert bar_position(1114, 612.5, None, 600.0)[2] == "step 1114, 10.0/10 min"


def test_progress_bar_follows_the_time_cap_that_stops_a_long_step_budget():
    """`iclevr train --epochs 200` on a CPU: 112,400 steps asked, the preset's 30 minutes will stop it (trap 1)."""
    from iclevr.training.run_folder import bar_position

    completed, total, text = bar_position(57, 90.0, 112_400, 1800.0)
    assert (completed, total) == (90.0, 1800.0) and text == "step 57 of 112400, 1.5/30 min"
    assert bar_position(57, 1900.0, 112_400, 1800.0)[:2] == (1800.0, 1800.0)  # never past the cap
    completed, total, text = bar_position(900, 60.0, 1000, 1800.0)  # a fast machine: the steps end first
    assert (completed, total) == (0.9 * 1800.0, 1800.0) and text == "900/1000 (cap 30 min)"
    shares = [bar_position(s, 60.0 + s, 1000, 1800.0)[0] for s in range(0, 1001, 50)]
    assert shares == sorted(shares) and shares[-1] == 1800.0  # one unit all along: the ETA never jumps


def test_a_time_cap_that_stops_a_step_budget_is_said_once_the_speed_is_known():
    from types import SimpleNamespace

    from rich.console import Console

    from iclevr.settings import TrainSettings
    from iclevr.training.plan import speed_notes

    settings = TrainSettings(preset="tiny-tokens")
    settings.train.epochs, settings.train.max_minutes = 200, 30.0
    plan = SimpleNamespace(total_steps=112_400, steps_per_epoch=562)
    console = Console(record=True, width=400)
    speed_notes(0.85, 4, 4.0, plan, settings, SimpleNamespace(type="cpu"), console)
    text = console.export_text()
    assert "the 30 min budget stops this run at about step 2,116 (epoch 3.8) of the 112,400" in text, text
    console = Console(record=True, width=400)
    speed_notes(0.01, 4, 4.0, plan, settings, SimpleNamespace(type="cpu"), console)  # the steps end first
    assert "stops this run" not in console.export_text()


def test_sample_grids_off_writes_none(course_kit, tmp_path):
    from iclevr.training.loop import train

    on = train(settings_for(course_kit, tmp_path / "on", max_steps=3, sample_every=1))  # 3 steps = 1 epoch
    assert [p.name for p in (on / "samples").iterdir()] == ["epoch-0001.png"]
    off = train(settings_for(course_kit, tmp_path / "off", max_steps=3, sample_every=1, sample_grids="off"))
    assert not (off / "samples").exists() and (off / "weights" / "ema.safetensors").is_file()


def test_sample_grids_use_the_fast_default_sampler(course_kit, tmp_path, monkeypatch):
    import iclevr.sampling
    from iclevr.settings import SamplerSettings, TrainLoopSettings, TrainSettings, resolve
    from iclevr.training.loop import train
    from iclevr.training.run_folder import grid_sampler

    seed = resolve(TrainSettings, preset="seed")
    assert (seed.sampler.sampler, seed.sampler.steps) == ("ddpm", 1000)  # the reference sampler, kept
    assert grid_sampler(seed) == seed.sampler.model_copy(
        update={"sampler": SamplerSettings().sampler, "steps": SamplerSettings().steps}
    )
    used = []

    def fake_sample(model, y, *, sampler, **kwargs):  # record the sampler; blank images
        used.append(sampler)
        return torch.zeros(len(y), 3, TINY_MODEL["sample_size"], TINY_MODEL["sample_size"])

    monkeypatch.setattr(iclevr.sampling, "sample", fake_sample)
    settings = settings_for(course_kit, tmp_path / "run", max_steps=3, sample_every=1)  # its own sampler: ddim 2
    default = TrainLoopSettings().sample_grids
    train(settings.model_copy(update={"train": settings.train.model_copy(update={"sample_grids": default})}))
    assert [(s.sampler, s.steps, s.guidance_scale) for s in used] == [("dpmpp-sde", None, 2.0)]
    assert (tmp_path / "run" / "samples" / "epoch-0001.png").is_file()


@pytest.mark.slow
def test_compiled_model_trains_a_step(course_kit, tmp_path):
    from torch._inductor.cpp_builder import get_cpp_compiler
    from torch._inductor.exc import InvalidCxxCompiler

    from iclevr.training.loop import train

    try:
        get_cpp_compiler()  # what inductor's CPU backend needs; any other failure of compile fails the test
    except InvalidCxxCompiler:
        pytest.skip("torch.compile on CPU needs a C++ compiler (g++/clang++); none on this machine")
    run = train(settings_for(course_kit, tmp_path / "run", max_steps=1, compile=True))
    assert "unet.conv_in.weight" in load_file(str(run / "weights" / "model.safetensors"))  # no _orig_mod prefix


def test_new_lr_takes_effect_on_resume(course_kit, tmp_path):
    from iclevr.training.loop import train

    train(settings_for(course_kit, tmp_path / "run", max_steps=2, lr=2e-3))
    train(settings_for(course_kit, tmp_path / "run", max_steps=4, lr=5e-4), resume=True)
    lrs = [json.loads(r)["lr"] for r in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert lrs == pytest.approx([2e-3, 2e-3, 5e-4, 5e-4])


def test_speed_notes_estimate_a_time_budget_and_warn_about_seed_on_cpu():
    from rich.console import Console

    from iclevr.settings import TrainSettings, resolve
    from iclevr.training.plan import Plan, speed_notes

    console = Console(record=True, width=200)
    settings = resolve(TrainSettings, preset="seed", overrides={"train.max_minutes": 10, "train.epochs": None})
    plan = Plan(images=18009, batch=32, processes=1, accum=1, steps_per_epoch=562, total_steps=None)
    speed_notes(2.0, step=4, wall_s=60.0, plan=plan, settings=settings, device=torch.device("cpu"), console=console)
    assert plan.total_steps is None  # an estimate for the reader only: the lr follows the elapsed time
    text = console.export_text()
    assert "about 274 steps" in text and "for a CPU run use --preset tiny" in text  # (600 s - 60 s) / 2 s + 4


def test_read_jsonl_drops_a_torn_last_line_only(tmp_path):
    from iclevr.fileio import read_jsonl

    path = tmp_path / "metrics.jsonl"
    assert read_jsonl(path) == []
    path.write_text('{"step": 1}\n\n{"step": 2}\n{"step": 3, "lo')  # a write cut short, no newline
    assert read_jsonl(path) == [{"step": 1}, {"step": 2}]
    path.write_text('{"step": 1}\n{"st\n{"step": 3}\n')
    with pytest.raises(UserError, match="line 2 is not a JSON object"):
        read_jsonl(path)


def test_is_finished(course_kit, tmp_path):
    from iclevr.training.loop import train
    from iclevr.training.run_folder import is_finished

    settings = settings_for(course_kit, tmp_path / "run", max_steps=2, sample_grids="off")
    assert not is_finished(tmp_path / "run")
    run = train(settings)
    longer = settings.model_copy(update={"train": settings.train.model_copy(update={"max_steps": 4})})
    assert is_finished(run) and is_finished(run, settings) and not is_finished(run, longer)
    progress = json.loads((run / "progress.json").read_text())
    (run / "progress.json").write_text(json.dumps({**progress, "finished": False, "step": 1}))  # interrupted
    assert not is_finished(run) and not is_finished(run, settings)


def test_resume_check_accepts_a_state_saved_before_a_model_field_existed_and_refuses_a_change(tmp_path):
    import json as _json

    from iclevr.errors import UserError
    from iclevr.settings import TrainSettings, resolve
    from iclevr.training.run_folder import check_same_run

    settings = resolve(TrainSettings, preset="tiny")
    saved = _json.loads(settings.model_dump_json())
    for field in ("condition", "token_embedding", "cross_attention_dim", "self_condition"):
        saved["model"].pop(field)  # a state written before these fields were added
    check_same_run({"settings": _json.dumps(saved)}, settings, tmp_path)  # defaults fill them: same run
    saved["model"]["block_out_channels"] = [16, 32, 64, 64]
    with pytest.raises(UserError, match="model settings differ"):
        check_same_run({"settings": _json.dumps(saved)}, settings, tmp_path)
    saved = _json.loads(settings.model_dump_json())
    saved["schedule"]["prediction_type"] = "epsilon"
    with pytest.raises(UserError, match="schedule settings differ"):
        check_same_run({"settings": _json.dumps(saved)}, settings, tmp_path)
