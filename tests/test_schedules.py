"""Noise schedules: alpha_bar invariants, equality with diffusers' own betas, the trained_betas path."""

from __future__ import annotations

import pytest
import torch

from iclevr import schedules as S
from iclevr.errors import UserError

T = 1000


@pytest.mark.parametrize("name", list(S.SCHEDULES))
def test_alpha_bar_is_decreasing_and_in_unit_interval(name):
    ab = S.alpha_bar(name, T)
    assert ab.shape == (T,) and ab.dtype == torch.float64
    assert (ab > 0).all() and (ab <= 1).all()
    assert (ab[1:] < ab[:-1]).all()
    assert (S.log_snr(name, T).diff() < 0).all()


@pytest.mark.parametrize("name", sorted(S.DIFFUSERS_BUILTIN))
def test_builtin_schedules_equal_diffusers_betas(name):
    from diffusers import DDPMScheduler

    theirs = DDPMScheduler(num_train_timesteps=T, beta_schedule=name).betas  # float32
    assert torch.allclose(S.betas(name, T).float(), theirs, rtol=1e-5, atol=1e-8)
    ours = S.make_scheduler(type("Sched", (), {"name": name, "num_train_timesteps": T, "prediction_type": "epsilon"})())
    assert torch.equal(ours.alphas_cumprod, DDPMScheduler(num_train_timesteps=T, beta_schedule=name).alphas_cumprod)


def test_squaredcos_cap_v2_is_nichol_dhariwal():
    import math

    ab = S.alpha_bar("squaredcos_cap_v2", T)

    def f(t):
        return math.cos((t / T + 0.008) / 1.008 * math.pi / 2) ** 2

    assert ab[500].item() == pytest.approx(f(501) / f(0), rel=1e-9)  # alpha_bar_t = f(t + 1) / f(0) (eq. 17)


def test_cosine_goes_through_trained_betas_into_every_scheduler():
    from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, UniPCMultistepScheduler

    kwargs = S.scheduler_kwargs("cosine", T, "v_prediction")
    assert "trained_betas" in kwargs and "beta_schedule" not in kwargs
    b = S.betas("cosine", T)
    assert b[0].item() == pytest.approx(1e-4) and b[-1].item() == pytest.approx(0.02)
    for cls in (DDPMScheduler, DDIMScheduler, DPMSolverMultistepScheduler, UniPCMultistepScheduler):
        sched = cls(**kwargs)
        assert sched.config.prediction_type == "v_prediction"
        assert torch.allclose(sched.alphas_cumprod.double(), S.alpha_bar("cosine", T), rtol=1e-5)
        sched.set_timesteps(10)
        assert len(sched.timesteps) == 10


def test_cosine_differs_from_linear_and_squaredcos():
    ab = {n: S.alpha_bar(n, T)[T // 2].item() for n in ("linear", "cosine", "squaredcos_cap_v2")}
    assert len({round(v, 4) for v in ab.values()}) == 3


def test_unknown_schedule_is_a_user_error():
    with pytest.raises(UserError, match="valid: linear, scaled_linear, sigmoid, squaredcos_cap_v2, cosine"):
        S.betas("cosinus", T)
