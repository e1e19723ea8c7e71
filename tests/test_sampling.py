"""The sampling loop: determinism, batch-size independence, batched guidance, every sampler, x0 clipping,
self-conditioning's x0 feedback, and the `iclevr sample` core's helpers (weights defaults, label files, image
output)."""

import pytest
import torch
from torch import nn

from iclevr.errors import UserError
from iclevr.generate import read_label_file, with_weights_defaults
from iclevr.images import save_grid, save_images, to_output_size
from iclevr.sampling import (
    SAMPLERS,
    check_sampler,
    guided_output,
    image_seeds,
    predict_x0,
    resolve_steps,
    sample,
    sample_batches,
)
from iclevr.seeding import mix_seed
from iclevr.settings import SamplerSettings, ScheduleSettings

SCHEDULE = ScheduleSettings()


TOKENS = {
    "condition": "tokens",
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"],
}


@pytest.fixture(scope="module", params=["pooled", "tokens"])
def model(request):
    """A 16x16 model of each conditioning design (docs/conditioning.md)."""
    from conftest import TINY_MODEL

    from iclevr.model import build_model
    from iclevr.settings import ModelSettings

    torch.manual_seed(0)
    m = build_model(ModelSettings(**{**TINY_MODEL, **(TOKENS if request.param == "tokens" else {})})).eval()
    with torch.no_grad():  # make the condition matter, so cond and null predictions differ clearly
        m.label_embed.weight.mul_(20)
        for p in m.tokens.parameters() if request.param == "tokens" else ():
            p.mul_(3)
    return m


class Counting(nn.Module):
    """Wraps a model and records the batch size of every forward pass."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.cfg, self.batches = inner, inner.cfg, []

    def forward(self, x_t, t, y):
        self.batches.append(x_t.shape[0])
        return self.inner(x_t, t, y)


def conditions(n=4):
    y = torch.zeros(n, 24)
    for i in range(n):
        y[i, (5 * i) % 24] = 1
        y[i, (7 * i + 3) % 24] = 1
    return y


def settings(name="dpmpp", steps=4, **kw):
    return SamplerSettings(sampler=name, steps=steps, **kw)


def test_same_seed_gives_identical_pixels_and_other_seed_differs(model):
    y = conditions(2)
    a = sample(model, y, schedule=SCHEDULE, sampler=settings("ddpm", seed=3))
    b = sample(model, y, schedule=SCHEDULE, sampler=settings("ddpm", seed=3))
    c = sample(model, y, schedule=SCHEDULE, sampler=settings("ddpm", seed=4))
    assert a.shape == (2, 3, 16, 16) and a.dtype == torch.float32 and a.device.type == "cpu"
    assert torch.equal(a, b)
    assert (a - c).abs().mean() > 0.05
    assert (a[0] - a[1]).abs().mean() > 0.05  # each image has its own noise


@pytest.mark.parametrize("name", ["ddpm", "dpmpp", "dpmpp-sde"])
def test_image_does_not_depend_on_batch_size(model, name):
    y = conditions(4)
    one = sample(model, y, schedule=SCHEDULE, sampler=settings(name, steps=4, batch_size=1))
    four = sample(model, y, schedule=SCHEDULE, sampler=settings(name, steps=4, batch_size=4))
    # image 2 alone (with its own seed) is image 2 of the batch
    alone = sample(model, y[2:3], schedule=SCHEDULE, sampler=settings(name, steps=4), seeds=image_seeds(0, 4)[2:3])
    _same_image(model, one, four)
    _same_image(model, alone[0], four[2])


def _same_image(model, a, b):
    """Equal up to the float reordering of batched kernels; a wrong seed or order differs by > 0.05 on average."""
    if model.cfg.condition == "pooled":
        torch.testing.assert_close(a, b, atol=1e-4, rtol=0)
        return
    # tokens: attention over another number of padded keys reorders the sums (~1e-6 per pass), and the
    # random 16x16 test model amplifies that at an odd pixel over the steps (seen up to 7e-3 with 2 threads)
    assert (a - b).abs().mean() < 1e-4 and (a - b).abs().max() < 3e-2


def test_batched_guidance_equals_two_separate_passes(model):
    torch.manual_seed(1)
    x_t, t, y = torch.randn(3, 3, 16, 16), torch.tensor(500), conditions(3)
    with torch.no_grad():
        eps_c = model(x_t, t.expand(3), y)
        eps_u = model(x_t, t.expand(3), torch.zeros_like(y))
        got = guided_output(model, x_t, t, y, 2.5)
    assert (eps_c - eps_u).abs().mean() > 1e-3  # the test can see a wrong half
    torch.testing.assert_close(got, eps_u + 2.5 * (eps_c - eps_u), atol=1e-5, rtol=1e-5)


def test_guidance_one_is_the_conditional_prediction_alone(model):
    torch.manual_seed(2)
    x_t, t, y = torch.randn(2, 3, 16, 16), torch.tensor(10), conditions(2)
    counting = Counting(model)
    with torch.no_grad():
        got = guided_output(counting, x_t, t, y, 1.0)
        assert torch.equal(got, model(x_t, t.expand(2), y))
    assert counting.batches == [2]


def test_guidance_zero_is_the_unconditional_prediction_alone(model):
    torch.manual_seed(3)
    x_t, t, y = torch.randn(2, 3, 16, 16), torch.tensor(300), conditions(2)
    counting = Counting(model)
    with torch.no_grad():
        eps_u = model(x_t, t.expand(2), torch.zeros_like(y))  # the null condition: every label off
        assert (model(x_t, t.expand(2), y) - eps_u).abs().mean() > 1e-3  # the condition would show
        got = guided_output(counting, x_t, t, y, 0.0)
        assert torch.equal(got, eps_u)
    assert counting.batches == [2]  # one pass of B, no conditional half
    drawn = sample(model, y, schedule=SCHEDULE, sampler=settings("ddim", steps=3, guidance_scale=0.0))
    other = sample(
        model, conditions(2)[[1, 0]], schedule=SCHEDULE, sampler=settings("ddim", steps=3, guidance_scale=0.0)
    )
    assert torch.equal(drawn, other)  # the labels do not matter at all without guidance


def test_one_forward_pass_of_2b_per_step(model):
    counting = Counting(model)
    sample(counting, conditions(3), schedule=SCHEDULE, sampler=settings("ddim", steps=5, guidance_scale=2.0))
    assert counting.batches == [6] * 5
    counting.batches.clear()
    sample(counting, conditions(3), schedule=SCHEDULE, sampler=settings("ddim", steps=5, guidance_scale=1.0))
    assert counting.batches == [3] * 5


def test_sample_batches_draws_one_chunk_at_a_time(model):
    counting, y = Counting(model), conditions(5)
    chunks = sample_batches(counting, y, schedule=SCHEDULE, sampler=settings("ddim", steps=2, batch_size=2))
    start, first = next(chunks)
    assert start == 0 and first.shape == (2, 3, 16, 16)
    assert counting.batches == [4, 4]  # 2 steps of the first chunk (2B with guidance), nothing drawn ahead
    rest = list(chunks)
    assert [(s, len(x)) for s, x in rest] == [(2, 2), (4, 1)] and max(counting.batches) == 4
    whole = sample(model, y, schedule=SCHEDULE, sampler=settings("ddim", steps=2, batch_size=2))
    assert torch.equal(torch.cat([first] + [x for _, x in rest]), whole)


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_every_sampler_runs_and_calls_back_each_step(model, name):
    seen = []
    x0 = sample(
        model, conditions(2), schedule=SCHEDULE, sampler=settings(name, steps=4), callback=lambda d: seen.append(d)
    )
    assert x0.shape == (2, 3, 16, 16) and torch.isfinite(x0).all()
    assert [d["i"] for d in seen] == [0, 1, 2, 3]
    assert seen[0]["t"] == SCHEDULE.num_train_timesteps - 1  # starts from pure noise
    assert all(d["x0_pred"].shape == (2, 3, 16, 16) for d in seen)
    assert torch.equal(seen[-1]["x_prev"].clamp(-1, 1), x0)
    assert SAMPLERS[name].doc and SAMPLERS[name].default_steps > 0


def test_stateful_schedulers_give_the_same_result_for_every_chunk(model):
    y = conditions(1).repeat(3, 1)
    x0 = sample(model, y, schedule=SCHEDULE, sampler=settings("unipc", steps=5, batch_size=1), seeds=[7, 7, 7])
    assert torch.equal(x0[0], x0[1]) and torch.equal(x0[0], x0[2])


def test_v_prediction_schedule_runs(model):
    x0 = sample(
        model,
        conditions(1),
        schedule=ScheduleSettings(name="cosine", prediction_type="v_prediction"),
        sampler=settings("dpmpp", steps=3),
    )
    assert torch.isfinite(x0).all()


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_predict_x0_inverts_the_forward_process(prediction_type):
    torch.manual_seed(3)
    x0, eps, ab = torch.rand(2, 3, 4, 4) * 2 - 1, torch.randn(2, 3, 4, 4), torch.tensor(0.3)
    x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * eps
    out = eps if prediction_type == "epsilon" else ab.sqrt() * eps - (1 - ab).sqrt() * x0
    torch.testing.assert_close(predict_x0(x_t, out, ab, prediction_type), x0, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_clip_x0_bounds_the_raw_predicted_x0_at_every_step(model, name):
    """The x0 the loop predicts (before anything clamps it) stays in [-1, 1] with clip_x0, and leaves it without:
    at t = 999 of the cosine schedule a random network implies an x0 in the tens of thousands."""

    def first_steps(clip: bool) -> list[float]:
        seen = []
        sample(
            model,
            conditions(2),
            schedule=SCHEDULE,
            sampler=settings(name, steps=4, clip_x0=clip),
            callback=lambda d: seen.append(float(d["x0_pred"].abs().max())),
        )
        return seen

    clipped, raw = first_steps(True), first_steps(False)
    assert len(clipped) == 4 and max(clipped) <= 1 + 1e-2  # fp32 rounding at alpha_bar ~ 2e-9
    assert raw[0] > 100  # the same check fails when nothing clips


def test_image_seeds_are_stable_and_distinct():
    assert image_seeds(0, 3) == [mix_seed(0, i) for i in range(3)]
    assert image_seeds(0, 2) == image_seeds(0, 5)[:2]
    assert len(set(image_seeds(0, 100))) == 100
    assert image_seeds(0, 3) != image_seeds(1, 3)


def test_steps_and_sampler_names():
    assert resolve_steps(SamplerSettings(sampler="ddpm")) == 1000
    assert resolve_steps(SamplerSettings(sampler="dpmpp")) == 20
    assert resolve_steps(SamplerSettings(sampler="ddim", steps=7)) == 7
    assert resolve_steps(SamplerSettings(sampler="ddpm"), ScheduleSettings(num_train_timesteps=100)) == 100
    with pytest.raises(UserError, match="exceeds"):
        resolve_steps(SamplerSettings(sampler="ddim", steps=200), ScheduleSettings(num_train_timesteps=100))
    with pytest.raises(UserError, match="valid: ddpm, ddim, dpmpp, dpmpp-sde, unipc"):
        check_sampler("euler")


def test_weights_defaults_fill_only_unset_fields():
    stored = SamplerSettings(sampler="ddpm", steps=1000, guidance_scale=3.0)
    merged = with_weights_defaults(SamplerSettings(), stored)
    assert (merged.sampler, merged.steps, merged.guidance_scale) == ("ddpm", 1000, 3.0)
    merged = with_weights_defaults(SamplerSettings.model_validate({"sampler": "dpmpp"}), stored)
    assert (merged.sampler, merged.steps, merged.guidance_scale) == ("dpmpp", None, 3.0)  # no ddpm steps
    merged = with_weights_defaults(SamplerSettings.model_validate({"steps": 9, "guidance_scale": 1.0}), stored)
    assert (merged.sampler, merged.steps, merged.guidance_scale) == ("ddpm", 9, 1.0)


def test_output_helpers(tmp_path):
    from PIL import Image

    x = torch.rand(10, 3, 16, 16) * 2 - 1
    big = to_output_size(x)
    assert big.shape == (10, 3, 64, 64)
    torch.testing.assert_close(big.mean(dim=(2, 3)), x.mean(dim=(2, 3)), atol=0.02, rtol=0)  # same picture
    assert to_output_size(big) is big
    assert torch.equal(to_output_size(torch.full((1, 3, 128, 128), 0.25)), torch.full((1, 3, 64, 64), 0.25))
    save_grid(big, tmp_path / "g.png")
    assert Image.open(tmp_path / "g.png").size == (8 * 66 + 2, 2 * 66 + 2)  # 8 per row, padding 2
    paths = save_images(big[:3], tmp_path / "imgs")
    assert [p.name for p in paths] == ["0.png", "1.png", "2.png"]
    assert Image.open(paths[0]).size == (64, 64)
    assert not list(tmp_path.rglob("*.tmp"))


def test_read_label_file(tmp_path):
    f = tmp_path / "c.json"
    f.write_text('[["Red Sphere", "cyan cube"], ["gray cylinder"]]')
    assert read_label_file(f) == [["red sphere", "cyan cube"], ["gray cylinder"]]
    for text, msg in [
        ('{"a": 1}', "list of conditions"),
        ('[["red sphere", 3]]', "must be a string"),
        ('[["pink cube"]]', "condition 0: unknown label"),
        ("[[", "not valid JSON"),
        ('[["red cube", "red cube"]]', "duplicate"),
    ]:
        f.write_text(text)
        with pytest.raises(UserError, match=msg):
            read_label_file(f)


class _NearOracle(torch.nn.Module):
    """Predicts the eps of a constant image x0 = 0.5 plus a small random error (like a real network)."""

    def __init__(self, alpha_bar, size=8, error=0.02):
        super().__init__()
        self.cfg = type("Cfg", (), {"sample_size": size})()
        self.w = torch.nn.Parameter(torch.zeros(()))
        self.alpha_bar, self.error = alpha_bar, error
        self.gen = torch.Generator().manual_seed(0)

    def forward(self, x_t, t, y):
        ab = self.alpha_bar[t].view(-1, 1, 1, 1).float()
        noise = torch.randn(x_t.shape, generator=self.gen)
        return (x_t - ab.sqrt() * 0.5) / (1 - ab).sqrt() + self.error * noise


@pytest.mark.parametrize("name", ["dpmpp", "dpmpp-sde", "unipc", "ddim"])
def test_x0_clipping_keeps_solvers_stable_on_cosine_schedule(name):
    """At t=999 of squaredcos_cap_v2 alpha_bar ~ 2e-9: an eps error of 0.02 means an x0 error of ~400 unless
    the predicted x0 is clipped; with clipping every sampler lands near the true image."""
    from iclevr.sampling import sample
    from iclevr.schedules import alpha_bar
    from iclevr.settings import SamplerSettings, ScheduleSettings

    schedule = ScheduleSettings()
    model = _NearOracle(alpha_bar(schedule.name, schedule.num_train_timesteps))
    y = torch.zeros(2, 24)
    clipped = sample(model, y, schedule=schedule, sampler=SamplerSettings(sampler=name, steps=20, guidance_scale=1))
    assert (clipped - 0.5).abs().mean() < 0.1


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_clip_output_clamps_implied_x0_and_keeps_in_range_outputs(prediction_type):
    from iclevr.sampling import clip_output, predict_x0

    gen = torch.Generator().manual_seed(0)
    x_t = torch.randn(4, 3, 8, 8, generator=gen)
    out = torch.randn(4, 3, 8, 8, generator=gen)
    ab = torch.tensor(2.4e-9)  # t = 999 of squaredcos_cap_v2: implied x0 values in the thousands
    raw_x0 = predict_x0(x_t, out, ab, prediction_type)
    assert raw_x0.abs().max() > (100 if prediction_type == "epsilon" else 1.5)  # some x0 out of range
    clipped = clip_output(x_t, out, ab, prediction_type)
    assert torch.allclose(
        predict_x0(x_t, clipped, ab, prediction_type), raw_x0.clamp(-1, 1), atol=1e-2
    )  # fp32 at alpha_bar ~ 1e-9
    ab = torch.tensor(0.9)
    x0 = torch.rand(4, 3, 8, 8, generator=gen) * 2 - 1
    eps = torch.randn(4, 3, 8, 8, generator=gen)
    x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * eps
    target = eps if prediction_type == "epsilon" else ab.sqrt() * eps - (1 - ab).sqrt() * x0
    assert torch.allclose(clip_output(x_t, target, ab, prediction_type), target, atol=1e-5)


class _Recorder(nn.Module):
    """Wraps a self-conditioned model and records every call's x_t, t, x0_self and output; a blind one passes
    zeros instead of the x0_self it receives."""

    def __init__(self, inner, blind=False):
        super().__init__()
        self.inner, self.cfg, self.calls, self.blind = inner, inner.cfg, [], blind

    def forward(self, x_t, t, y, x0_self=None):
        out = self.inner(x_t, t, y, x0_self=torch.zeros_like(x0_self) if self.blind else x0_self)
        self.calls.append(dict(x_t=x_t.clone(), t=t[0].item(), x0_self=x0_self.clone(), out=out.float().clone()))
        return out


@pytest.fixture(scope="module", params=["pooled", "tokens"])
def self_cond_model(request):
    """A 16x16 self-conditioned model whose x0 input channels clearly change its output."""
    from conftest import TINY_MODEL

    from iclevr.model import build_model
    from iclevr.settings import ModelSettings

    torch.manual_seed(0)
    extra = TOKENS if request.param == "tokens" else {}
    m = build_model(ModelSettings(**{**TINY_MODEL, **extra, "self_condition": True})).eval()
    with torch.no_grad():
        m.label_embed.weight.mul_(20)
        m.unet.conv_in.weight[:, 3:].mul_(5)  # the x0 estimate's channels
    return m


@pytest.mark.parametrize("name, scale, clip", [("ddpm", 2.0, True), ("dpmpp-sde", 1.0, True), ("ddim", 2.0, False)])
def test_self_conditioning_feeds_back_the_previous_guided_x0(self_cond_model, name, scale, clip):
    from iclevr.schedules import make_scheduler

    alpha_bar = make_scheduler(SCHEDULE).alphas_cumprod.float()
    rec, y = _Recorder(self_cond_model), conditions(2)
    x0 = sample(rec, y, schedule=SCHEDULE, sampler=settings(name, steps=4, guidance_scale=scale, clip_x0=clip))
    assert len(rec.calls) == 4 and torch.isfinite(x0).all()
    assert torch.equal(rec.calls[0]["x0_self"], torch.zeros_like(rec.calls[0]["x_t"]))  # nothing before step 1
    for before, now in zip(rec.calls, rec.calls[1:]):
        x_t, out = before["x_t"][:2], before["out"]  # (2, 3, S, S); out is (2B, ...) under guidance
        if scale != 1.0:
            cond, null = out.chunk(2)
            out = null + scale * (cond - null)
            assert torch.equal(now["x0_self"][:2], now["x0_self"][2:])  # both halves get the same estimate
        want = predict_x0(x_t, out, alpha_bar[before["t"]], SCHEDULE.prediction_type)
        want = want.clamp(-1, 1) if clip else want
        torch.testing.assert_close(now["x0_self"][:2], want, atol=1e-5, rtol=1e-5)
        assert now["x0_self"].abs().max() > 0.1
    if clip:
        assert max(c["x0_self"].abs().max() for c in rec.calls) <= 1.0
    # the fed-back estimate changes the image (against a loop that always passed zeros)
    zeros = sample(
        _Recorder(self_cond_model, blind=True),
        y,
        schedule=SCHEDULE,
        sampler=settings(name, steps=4, guidance_scale=scale, clip_x0=clip),
    )
    assert (zeros - x0).abs().mean() > 1e-2


def test_self_conditioned_sampling_is_per_image_and_traces(self_cond_model):
    from iclevr.trace import record_trace

    y = conditions(3)
    one = sample(self_cond_model, y, schedule=SCHEDULE, sampler=settings("dpmpp-sde", steps=4, batch_size=1))
    three = sample(self_cond_model, y, schedule=SCHEDULE, sampler=settings("dpmpp-sde", steps=4, batch_size=3))
    tol = 1e-4 if self_cond_model.cfg.condition == "pooled" else 5e-3
    torch.testing.assert_close(one, three, atol=tol, rtol=0)  # each image feeds back its own estimate
    trace = record_trace(self_cond_model, y[:1], schedule=SCHEDULE, sampler=settings("dpmpp-sde", steps=4), frames=3)
    assert trace.states == [0, 2, 4] and trace.x_t.shape == (3, 3, 16, 16)
    assert torch.equal(trace.final, one[:1])
