"""Two training levers for tiny budgets: immiscible noise assignment (Li et al. 2024) and self-conditioning
(Chen, Zhang & Hinton 2022): the assignment itself, the 6-channel model, and how the loss uses each."""

import pytest
import torch
from conftest import TINY_MODEL

from iclevr.training.noise import immiscible_permutation

pytestmark = pytest.mark.usefixtures("one_thread")

TOKENS = {
    "condition": "tokens",
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"],
}


def _total(x0, eps, perm):
    """Total L2 distance of the pairing image i <-> eps[perm[i]]."""
    return (x0.flatten(1) - eps[perm].flatten(1)).norm(dim=1).sum().item()


@pytest.mark.parametrize("seed", range(5))
def test_immiscible_assignment_is_a_permutation_that_never_lengthens_the_pairing(seed):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.rand(16, 3, 8, 8, generator=g) * 2 - 1  # (B, 3, S, S) in [-1, 1]
    eps = torch.randn(16, 3, 8, 8, generator=g)
    perm = immiscible_permutation(x0, eps)
    assert perm.dtype == torch.long and sorted(perm.tolist()) == list(range(16))
    identity = torch.arange(16)
    assert _total(x0, eps, perm) <= _total(x0, eps, identity) + 1e-9
    assert not torch.equal(perm, identity)  # at B = 16 the independent pairing is never the best one
    # no single swap of two partners shortens it: the assignment is at least locally optimal
    for i, j in [(0, 1), (3, 9), (5, 15)]:
        swapped = perm.clone()
        swapped[[i, j]] = swapped[[j, i]]
        assert _total(x0, eps, perm) <= _total(x0, eps, swapped) + 1e-9
    assert torch.equal(immiscible_permutation(x0, eps), perm)  # deterministic


def test_immiscible_assignment_picks_the_obvious_pairing():
    x0 = torch.stack([torch.full((3, 2, 2), v) for v in (-1.0, 0.0, 1.0)])  # (3, 3, 2, 2): dark, grey, light
    eps = torch.stack([torch.full((3, 2, 2), v) for v in (1.1, -0.9, 0.1)])  # light, dark, grey noise
    assert immiscible_permutation(x0, eps).tolist() == [1, 2, 0]  # dark <- eps 1, grey <- eps 2, light <- eps 0
    assert immiscible_permutation(x0, eps[[1, 2, 0]]).tolist() == [0, 1, 2]  # already paired: unchanged


def _model(**extra):
    from iclevr.model import build_model
    from iclevr.settings import ModelSettings

    torch.manual_seed(0)
    return build_model(ModelSettings(**{**TINY_MODEL, **extra})).eval()


@pytest.mark.parametrize("design", [{}, TOKENS])
def test_self_conditioned_model_takes_an_x0_estimate(design):
    plain, model = _model(**design), _model(self_condition=True, **design)
    assert plain.unet.conv_in.in_channels == 3 and model.unet.conv_in.in_channels == 6
    assert model.unet.config.in_channels == 6  # what a diffusers export records
    torch.manual_seed(1)
    x_t, t, y = torch.randn(2, 3, 16, 16), torch.tensor([10, 900]), torch.zeros(2, 24)
    y[0, 3], y[1, [5, 17]] = 1, 1
    x0 = torch.rand(2, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        none, zeros, est = model(x_t, t, y), model(x_t, t, y, x0_self=torch.zeros_like(x_t)), model(x_t, t, y, x0)
    assert none.shape == (2, 3, 16, 16)
    assert torch.equal(none, zeros)  # no estimate means zeros
    assert (est - zeros).abs().mean() > 1e-3  # the estimate reaches the UNet
    with pytest.raises(ValueError, match="self_condition"):
        plain(x_t, t, y, x0_self=x0)


def test_self_conditioning_adds_only_the_three_input_channels_weights():
    from iclevr.model import count_parameters

    conv = _model().unet.conv_in
    extra = 3 * conv.out_channels * conv.kernel_size[0] * conv.kernel_size[1]
    assert count_parameters(_model(self_condition=True)) == count_parameters(_model()) + extra


class Recorder(torch.nn.Module):
    """Wraps a model and records each call's inputs and output."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.cfg, self.calls = inner, inner.cfg, []

    def forward(self, x_t, t, y, x0_self=None):
        out = self.inner(x_t, t, y, x0_self=x0_self) if x0_self is not None else self.inner(x_t, t, y)
        self.calls.append(
            dict(x_t=x_t.detach().clone(), t=t, x0_self=x0_self, out=out.detach().clone(), grad=torch.is_grad_enabled())
        )
        return out


def _loss_setup(prediction="epsilon", **train):
    from iclevr.schedules import make_scheduler
    from iclevr.settings import TrainSettings, resolve

    settings = resolve(
        TrainSettings,
        overrides={
            "model": dict(TINY_MODEL),
            "train": {"p_uncond": 0.0, **train},
            "schedule.prediction_type": prediction,
        },
    )
    torch.manual_seed(5)
    x0 = torch.rand(8, 3, 16, 16) * 2 - 1  # (B, 3, S, S)
    y = torch.zeros(8, 24)
    y[:, 4] = 1
    return settings, x0, y, make_scheduler(settings.schedule).alphas_cumprod.float()


def test_immiscible_loss_noises_each_image_with_its_assigned_sample():
    from iclevr.training.loop import diffusion_loss

    settings, x0, y, alpha_bar = _loss_setup()
    noises = {}
    for on in (False, True):
        rec = Recorder(_model())
        s = settings.model_copy(deep=True)
        s.train.immiscible = on
        with torch.no_grad():
            diffusion_loss(rec, x0, y, alpha_bar, s, torch.Generator().manual_seed(3))
        call = rec.calls[0]
        ab = alpha_bar[call["t"]].view(-1, 1, 1, 1)
        noises[on] = (call["x_t"] - ab.sqrt() * x0) / (1 - ab).sqrt()  # the eps each image was noised with
    perm = immiscible_permutation(x0, noises[False])  # the same draws, re-paired
    assert not torch.equal(perm, torch.arange(8))
    torch.testing.assert_close(noises[True], noises[False][perm], atol=1e-4, rtol=0)


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_self_conditioned_loss_feeds_its_own_estimate_half_the_time(prediction):
    from iclevr.sampling import predict_x0
    from iclevr.training.loop import diffusion_loss

    settings, x0, y, alpha_bar = _loss_setup(prediction)
    settings = settings.model_copy(update={"model": settings.model.model_copy(update={"self_condition": True})})
    seen = []
    for seed in range(12):
        rec = Recorder(_model(self_condition=True).train())
        loss = diffusion_loss(rec, x0, y, alpha_bar, settings, torch.Generator().manual_seed(seed))
        loss.backward()
        assert torch.isfinite(loss) and rec.calls[-1]["grad"]
        if len(rec.calls) == 1:  # zeros: no estimate this batch
            assert torch.equal(rec.calls[0]["x0_self"], torch.zeros_like(x0))
        else:  # a first pass with zeros and without gradient, then its clipped x0 as the estimate
            first, second = rec.calls
            assert not first["grad"] and torch.equal(first["x0_self"], torch.zeros_like(x0))
            ab = alpha_bar[first["t"]].view(-1, 1, 1, 1)
            want = predict_x0(first["x_t"], first["out"], ab, prediction).clamp(-1, 1)
            torch.testing.assert_close(second["x0_self"], want)
            assert torch.equal(second["x_t"], first["x_t"]) and second["x0_self"].abs().max() > 0.1
        seen.append(len(rec.calls))
    assert 1 in seen and 2 in seen  # both branches happen (probability 1/2 per batch)
