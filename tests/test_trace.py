"""The denoising trace: frame choice, recording through sample()'s callback, figure and GIF."""

import pytest
import torch

import iclevr.sampling as sampling
from iclevr.errors import UserError
from iclevr.labels import TRACE_LABELS, encode
from iclevr.settings import SamplerSettings, ScheduleSettings
from iclevr.trace import frame_states, record_trace, trace_figure, write_gif

SCHEDULE = ScheduleSettings()


@pytest.fixture(scope="module")
def model():
    from conftest import TINY_MODEL

    from iclevr.model import build_model
    from iclevr.settings import ModelSettings

    torch.manual_seed(0)
    return build_model(ModelSettings(**TINY_MODEL)).eval()


def test_frame_states_span_noise_to_final():
    assert frame_states(10, 20) == [0, 2, 4, 7, 9, 11, 13, 16, 18, 20]
    assert frame_states(2, 1) == [0, 1]
    assert frame_states(8, 1000)[0] == 0 and frame_states(8, 1000)[-1] == 1000
    assert len(set(frame_states(11, 10))) == 11
    with pytest.raises(UserError, match="at least 2"):
        frame_states(1, 10)
    with pytest.raises(UserError, match="needs at least 11 sampling steps"):
        frame_states(12, 10)


@pytest.mark.parametrize("name", ["ddpm", "dpmpp"])
def test_trace_has_the_frames_and_ends_at_the_sampled_image(model, name, monkeypatch):
    y = encode(list(TRACE_LABELS))[None]
    sampler = SamplerSettings(sampler=name, steps=12, seed=5)
    calls = []
    real = sampling.sample
    monkeypatch.setattr(sampling, "sample", lambda *a, **k: calls.append(1) or real(*a, **k))
    trace = record_trace(model, y, schedule=SCHEDULE, sampler=sampler, frames=9, gif=True)
    assert calls == [1]  # one sampling loop, the trace is its callback
    assert trace.x_t.shape == (9, 3, 16, 16) and trace.x0_pred.shape == (9, 3, 16, 16)
    assert trace.timesteps[0] == 999 and trace.timesteps[-1] == -1
    expected = real(model, y, schedule=SCHEDULE, sampler=sampler)  # what `iclevr sample` gives
    assert torch.equal(trace.x_t[-1], expected[0]) and torch.equal(trace.final, expected)
    g = torch.Generator().manual_seed(sampling.image_seeds(5, 1)[0])
    assert torch.equal(trace.x_t[0], torch.randn((1, 3, 16, 16), generator=g)[0])  # the first frame is x_T
    assert trace.gif_x_t.shape[0] == 13  # every state of a 12-step run (fewer than GIF_FRAMES)


def test_figure_and_gif_sizes(model, tmp_path):
    from PIL import Image

    from iclevr.trace import CAPTION_H

    y = encode("red sphere")[None]
    trace = record_trace(
        model, y, schedule=SCHEDULE, sampler=SamplerSettings(sampler="ddim", steps=10), frames=8, gif=True
    )
    one_row = trace_figure(trace)
    two_rows = trace_figure(trace, x0_row=True)
    assert one_row.size == (8 * 66 + 2, 66 + 2 + CAPTION_H)  # 64x64 frames, 2 px gutters, caption strip
    assert two_rows.size == (8 * 66 + 2, 2 * 66 + 2 + CAPTION_H)
    gif = write_gif(trace, tmp_path / "t.gif", x0_row=True)
    with Image.open(gif) as im:
        assert im.n_frames == 11 and im.size == (128, 64)


def test_trace_of_a_tokens_model_from_saved_weights(tmp_path):
    from conftest import TINY_MODEL
    from typer.testing import CliRunner

    from iclevr.cli.app import app
    from iclevr.model import build_model
    from iclevr.settings import ModelSettings
    from iclevr.weights import load_weights, save_weights

    cfg = ModelSettings(
        **{
            **TINY_MODEL,
            "condition": "tokens",
            "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"],
            "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"],
        }
    )
    torch.manual_seed(0)
    weights = save_weights(
        build_model(cfg),
        tmp_path / "w.safetensors",
        model_cfg=cfg,
        schedule_cfg=SCHEDULE,
        sampler_cfg=SamplerSettings(sampler="ddim", steps=10),
    )
    r = CliRunner().invoke(
        app,
        ["denoise-trace", "--checkpoint", str(weights), "--frames", "8", "--gif", "--out", str(tmp_path / "trace.png")],
    )
    assert r.exit_code == 0, r.output
    assert (tmp_path / "trace.png").is_file() and (tmp_path / "trace.gif").is_file()
    model, info = load_weights(weights)
    y = encode(list(TRACE_LABELS))[None]
    trace = record_trace(model, y, schedule=info.schedule, sampler=info.sampler, frames=8)
    assert torch.equal(trace.final, sampling.sample(model, y, schedule=info.schedule, sampler=info.sampler))
    table = model.tokens.table().detach()
    model.tokens.table = lambda: table.roll(1, 0)  # class i gets the token of class i - 1
    moved = record_trace(model, y, schedule=info.schedule, sampler=info.sampler, frames=8)
    assert (moved.final - trace.final).abs().mean() > 1e-2  # the object tokens reach the trace
