"""The GPU path proved on the CPU (issue 29): host synchronisations counted per training step, the finite check
and the loop's decisions agreed over two gloo processes, bf16 only where a GPU computes it natively, the CUDA
speed settings, the compile / DDP order, strict JSON metrics, memory freed after train(), and the precision
note under `accelerate launch`. What still waits for a GPU: docs/gpu.md."""

from __future__ import annotations

import gc
import json
import math
import weakref

import pytest
import torch
from conftest import TINY_MODEL
from torch.utils._python_dispatch import TorchDispatchMode

pytestmark = pytest.mark.usefixtures("one_thread")

TOKENS = {
    **TINY_MODEL,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"],
    "condition": "tokens",
}


class SyncCounter(TorchDispatchMode):
    """Counts the ops that copy a value from the device to the host (.item(), bool(), .tolist(), nonzero): on
    a GPU each one waits for every kernel queued before it."""

    SYNCS = {"aten::_local_scalar_dense", "aten::nonzero", "aten::is_nonzero", "aten::equal"}

    def __init__(self):
        super().__init__()
        self.calls: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func._schema.name in self.SYNCS:
            self.calls.append(func._schema.name)
        return func(*args, **(kwargs or {}))


def test_a_training_step_of_the_tokens_model_reads_nothing_back(tmp_path):
    """Issue 29 item 4: ObjectTokens read the batch's object count with .item() and the self-conditioning coin
    was drawn on the device and branched on; a whole step (loss, backward, clipping, fused AdamW, EMA, the
    finite flag) now queues its work without one device-to-host read."""
    from iclevr.ema import EMA
    from iclevr.model import build_model
    from iclevr.schedules import make_scheduler
    from iclevr.settings import TrainSettings, resolve
    from iclevr.training.loop import diffusion_loss, make_optimizer

    settings = resolve(
        TrainSettings,
        overrides={
            "model": {**TOKENS, "self_condition": True},
            "schedule": {"prediction_type": "v_prediction"},
            "train": {"optimizer": "adamw", "snr_gamma": 5.0},
        },
    )
    torch.manual_seed(0)
    model = build_model(settings.model)
    ema, opt = EMA(model), make_optimizer(model, settings.train)
    alpha_bar = make_scheduler(settings.schedule).alphas_cumprod.float()
    x0 = torch.rand(4, 3, 16, 16) * 2 - 1
    y = torch.zeros(4, 24)
    y[0, 1], y[1, [2, 9]], y[2, [3, 10, 17]] = 1, 1, 1  # 1, 2, 3 objects and the null condition
    bad_step = torch.full((), -1, dtype=torch.long)
    passes = []
    model.tokens.register_forward_hook(lambda *_: passes.append(1))
    for step in range(4):  # both sides of the self-conditioning coin (one forward pass or two)
        g = torch.Generator().manual_seed(step)
        with SyncCounter() as counter:
            loss = diffusion_loss(model, x0, y, alpha_bar, settings, g)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            ema.update(model, step)
            bad_step = torch.where(torch.isfinite(loss) | (bad_step >= 0), bad_step, step)
        assert counter.calls == [], f"step {step} read back from the device: {counter.calls}"
    assert 4 < len(passes) < 8  # some steps fed the model its own estimate, some did not


@pytest.fixture
def fake_cuda(monkeypatch):
    """A CUDA device of a given compute capability on this CPU machine: pick_device answers cuda, the capability
    is mocked and torch.cuda.is_bf16_supported() says True as recent torch does on any GPU (emulated bf16);
    Accelerator records its arguments instead of starting. The CUDA speed settings are restored afterwards."""
    import accelerate

    import iclevr.device

    made = []

    class FakeAccelerator:
        def __init__(self, **kwargs):
            made.append(kwargs)

    def use(capability: tuple[int, int]):
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
        monkeypatch.setattr(iclevr.device, "pick_device", lambda name="auto": torch.device("cuda"))
        monkeypatch.setattr(accelerate, "Accelerator", FakeAccelerator)
        return made

    precision = torch.get_float32_matmul_precision()
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    yield use
    torch.set_float32_matmul_precision(precision)


@pytest.mark.parametrize(
    "capability,dtype",
    [((7, 0), torch.float16), ((7, 5), torch.float16), ((8, 0), torch.bfloat16), ((9, 0), torch.bfloat16)],
)
def test_autocast_asks_for_native_bf16_only(fake_cuda, capability, dtype):
    """Issue 29 item 3: V100 (7.0) and T4 (7.5) sample and evaluate in fp16, Ampere (8.0) on in bf16."""
    from iclevr.device import autocast

    fake_cuda(capability)
    with pytest.warns(UserWarning, match="CUDA is not available"):  # this CPU build disables it; the dtype stays
        assert autocast(torch.device("cuda")).fast_dtype == dtype


@pytest.mark.parametrize(
    "capability,asked,used",
    [((7, 0), "bf16", "fp16"), ((8, 0), "bf16", "bf16"), ((7, 0), "fp16", "fp16"), ((7, 0), "no", "no")],
)
def test_training_falls_back_to_fp16_without_native_bf16(fake_cuda, capability, asked, used):
    """Issue 29 item 3: a bf16 preset (small, small-tokens) trains in fp16 on a pre-Ampere GPU, with a note."""
    from iclevr.settings import TrainLoopSettings
    from iclevr.training.loop import make_accelerator

    made = fake_cuda(capability)
    _, note = make_accelerator(TrainLoopSettings(mixed_precision=asked))
    assert made[-1]["mixed_precision"] == used and made[-1]["cpu"] is False
    assert (note is not None and "no native bf16" in note) == (asked != used)


def test_cuda_training_turns_on_cudnn_benchmark_and_tf32(fake_cuda):
    """Issue 29 item 8: on a GPU, cuDNN autotunes its convolutions and fp32 matmuls may use TF32."""
    from iclevr.settings import TrainLoopSettings
    from iclevr.training.loop import make_accelerator

    torch.set_float32_matmul_precision("highest")
    fake_cuda((8, 0))
    make_accelerator(TrainLoopSettings(mixed_precision="no"))
    assert torch.backends.cudnn.benchmark and torch.get_float32_matmul_precision() == "high"


@pytest.mark.parametrize(
    "launched,setting,noted",
    [("fp16", "no", True), ("no", "bf16", True), ("fp16", "fp16", False), (None, "bf16", False)],
)
def test_a_precision_that_overrides_accelerate_launch_says_so(fake_cuda, monkeypatch, launched, setting, noted):
    """Issue 29 item 10: `accelerate launch --mixed_precision X` is overridden by train.mixed_precision; when the
    two disagree, one line says which is used."""
    from iclevr.settings import TrainLoopSettings
    from iclevr.training.loop import make_accelerator

    if launched:
        monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", launched)
    else:
        monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    made = fake_cuda((8, 0))
    _, note = make_accelerator(TrainLoopSettings(mixed_precision=setting))
    assert made[-1]["mixed_precision"] == setting
    lines = [x for x in (note or "").splitlines() if "accelerate launch" in x]
    assert lines == (
        [
            f"[yellow]note:[/] accelerate launch asks for mixed precision {launched}; "
            f"train.mixed_precision = {setting} (preset, config or --mixed-precision) is used"
        ]
        if noted
        else []
    )


@pytest.mark.slow
def test_two_ranks_agree_on_a_nan_before_saving_and_on_time_without_the_device(course_kit, tmp_path):
    """Issue 29 items 2 and 4, two gloo processes: a NaN loss on rank 1 alone reaches rank 0's weights through
    the gradient all-reduce; both ranks must stop at the same save with the earliest bad step, and no state or
    weights file may hold the NaN weights. Then agree() answers (the latest time, anyone stopping) on both
    ranks without creating or reading a tensor on the accelerator's device (a `meta` device here)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from safetensors.torch import load_file

    from iclevr.training.state import list_states, load_state

    root = Path(__file__).resolve().parents[1]
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join(
            [str(root)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
        ),
    }
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        str(root / "tests" / "two_ranks.py"),
        str(course_kit),
        str(tmp_path),
    ]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    reports = [
        json.loads((tmp_path / f"rank-{r}.json").read_text()) for r in (0, 1) if (tmp_path / f"rank-{r}.json").is_file()
    ]
    assert len(reports) == 2, done.stdout[-2000:] + done.stderr[-2000:]
    for report in reports:  # the same stop on both ranks, at the first save after the NaN, naming its step
        assert report["train"].startswith("TrainingInterrupted: loss became non-finite at step 3"), report
        assert "step-00000002.pt is kept" in report["train"]
        assert report["agree"] == [11.0, True], report
    assert [p.name for p in list_states(tmp_path / "run" / "state")] == ["step-00000002.pt"]
    state = load_state(tmp_path / "run" / "state" / "step-00000002.pt")
    assert all(torch.isfinite(v).all() for v in state["model"].values())
    weights = load_file(tmp_path / "run" / "weights" / "ema.safetensors")  # the raw weights come at the end only
    assert all(torch.isfinite(v).all() for v in weights.values())
    assert not (tmp_path / "run" / "weights" / "model.safetensors").exists()


def _settings(course_kit, out, **train):
    """TrainSettings of the tiny test UNet on the test kit (12 images), no sample grids."""
    from iclevr.settings import TrainSettings, resolve

    loop = {
        "batch_size": 4,
        "lr": 1e-3,
        "log_every": 2,
        "checkpoint_every": 0,
        "device": "cpu",
        "sample_grids": "off",
        **train,
    }
    return resolve(
        TrainSettings, overrides={"model": TINY_MODEL, "data.data_dir": str(course_kit), "out": str(out), "train": loop}
    )


def _strict_rows(path):
    """metrics.jsonl read as strict JSON (Infinity and NaN refused, as JavaScript, jq or Go would)."""

    def refuse(name):
        raise ValueError(f"not JSON: {name}")

    return [json.loads(line, parse_constant=refuse) for line in path.read_text().splitlines()]


def test_steps_the_grad_scaler_skips_leave_metrics_strict_json(course_kit, tmp_path, monkeypatch):
    """Issue 29 item 7: an fp16 step the GradScaler skips has an infinite gradient norm; it is counted as
    skipped, left out of the logged mean, and metrics.jsonl stays strict JSON."""
    import accelerate

    from iclevr.training.loop import train

    real, calls = accelerate.Accelerator.clip_grad_norm_, {"n": 0}

    def overflowing(self, *args, **kwargs):  # the first step overflows, as fp16 often does at the start
        calls["n"] += 1
        norm = real(self, *args, **kwargs)
        return torch.full_like(norm, math.inf) if calls["n"] == 1 else norm

    monkeypatch.setattr(accelerate.Accelerator, "clip_grad_norm_", overflowing)
    run = train(_settings(course_kit, tmp_path / "run", max_steps=4))
    rows = _strict_rows(run / "metrics.jsonl")
    assert [(r["step"], r["skipped_steps"]) for r in rows] == [(2, 1), (4, 0)]
    assert all(math.isfinite(r["grad_norm"]) and r["grad_norm"] > 0 for r in rows)


def test_metrics_log_writes_non_finite_numbers_as_null(tmp_path):
    """Issue 29 item 7: whatever reaches the log (an lr of inf, a NaN), the file is strict JSON."""
    from iclevr.training.run_folder import MetricsLog

    log = MetricsLog(tmp_path, 0)
    log.log({"step": 1, "loss": 0.5, "lr": math.inf, "grad_norm": math.nan})
    log.close()
    assert _strict_rows(tmp_path / "metrics.jsonl") == [{"step": 1, "loss": 0.5, "lr": None, "grad_norm": None}]


def test_train_frees_model_and_optimizer_before_returning(course_kit, tmp_path, monkeypatch):
    """Issue 29 item 6: reference cycles (accelerate's wrappers, closures) kept the model, its optimizer state and
    the accelerator alive after train() until the next garbage collection: a second run in the same process
    (gpu_check's second measurement, compare-schedules) started with the first one's GPU memory still held."""
    import iclevr.model
    from iclevr.training.loop import train

    refs, real = [], iclevr.model.build_model

    def spy(cfg):
        model = real(cfg)
        refs.append(weakref.ref(model))
        return model

    monkeypatch.setattr(iclevr.model, "build_model", spy)
    gc.collect()
    gc.disable()  # only what train() frees itself counts
    try:
        train(_settings(course_kit, tmp_path / "run", max_steps=2, checkpoint_every=1, log_every=1))
        alive = refs[0]() is not None
    finally:
        gc.enable()
    assert not alive


def test_compile_wraps_the_prepared_model(course_kit, tmp_path, monkeypatch):
    """Issue 29 item 8: torch.compile is applied to what accelerator.prepare returns (DDP under several GPUs), not
    the other way round, so the gradient all-reduce of each bucket overlaps backward (PyTorch's DDPOptimizer
    splits the compiled graph at the buckets; DDP around a compiled model all-reduces after the whole backward)."""
    import accelerate

    from iclevr.model import ConditionalUNet
    from iclevr.training.loop import train

    order, real_prepare = [], accelerate.Accelerator.prepare

    def prepare(self, *objects, **kwargs):
        order.append(("prepare", type(objects[0]).__name__))
        return real_prepare(self, *objects, **kwargs)

    def compile_(module, *args, **kwargs):  # recorded, not compiled (minutes on this CPU; tested elsewhere)
        order.append(("compile", type(module).__name__))
        return module

    monkeypatch.setattr(accelerate.Accelerator, "prepare", prepare)
    monkeypatch.setattr(torch, "compile", compile_)
    train(_settings(course_kit, tmp_path / "run", max_steps=1, compile=True))
    assert order == [("prepare", ConditionalUNet.__name__), ("compile", ConditionalUNet.__name__)]


def test_the_torch_floor_builds_the_fused_optimizer():
    """Issue 29 item 9: before torch 2.4 fused Adam/AdamW refused CPU parameters (its CPU kernels came in 2.4), so
    every CPU run needs 2.4; the loop now also builds it after moving the model, so a GPU run would not need it.
    pyproject's floor must be a torch that builds it on CPU parameters."""
    import re
    import tomllib
    from pathlib import Path

    from iclevr.settings import TrainLoopSettings
    from iclevr.training.loop import make_optimizer

    deps = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]
    floor = next(re.match(r"torch>=(\d+)\.(\d+)", d) for d in deps["dependencies"] if d.startswith("torch>="))
    assert (int(floor[1]), int(floor[2])) >= (2, 4)
    for name in ("adam", "adamw"):
        opt = make_optimizer(torch.nn.Linear(2, 2), TrainLoopSettings(optimizer=name))
        assert opt.defaults["fused"] is True


def test_periodic_saves_write_the_sampling_weights_and_the_raw_weights_at_the_end(course_kit, tmp_path, monkeypatch):
    """Issue 29 item 5: every save wrote the state and both weight files (seed: 1.8 + 0.45 + 0.45 GB); the raw
    weights (model.safetensors) are only needed at the end, since the state holds them in between."""
    import iclevr.weights
    from iclevr.training.loop import train

    written, real = [], iclevr.weights.save_weights

    def spy(net, path, **meta):
        written.append((meta["step"], path.name))
        return real(net, path, **meta)

    monkeypatch.setattr(iclevr.weights, "save_weights", spy)
    run = train(_settings(course_kit, tmp_path / "run", max_steps=3, checkpoint_every_steps=1))
    assert [step for step, name in written if name == "ema.safetensors"][:3] == [1, 2, 3]  # every save
    assert [step for step, name in written if name == "model.safetensors"] == [3]  # the final save only
    assert (run / "weights" / "model.safetensors").is_file()
