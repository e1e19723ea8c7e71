"""The EMA of the sampling weights: the warm-up of its decay and the update, with written-out numbers."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from iclevr.ema import EMA


def test_decay_warms_up_as_1_plus_t_over_10_plus_t_then_holds():
    ema = EMA(nn.Linear(1, 1), decay=0.99, warmup=True)
    assert [ema.decay_at(t) for t in (0, 10, 90, 980, 5000)] == pytest.approx([0.1, 0.55, 0.91, 0.99, 0.99])
    assert EMA(nn.Linear(1, 1), decay=0.99, warmup=False).decay_at(0) == 0.99


def test_update_moves_the_shadow_by_one_minus_decay_and_copies_buffers():
    net = nn.BatchNorm1d(2)
    with torch.no_grad():
        net.weight.fill_(1.0)  # the shadow starts as a copy: 1.0
    ema = EMA(net, decay=0.9, warmup=False)
    with torch.no_grad():
        net.weight.fill_(3.0)
        net.running_mean.fill_(5.0)
    ema.update(net, step=0)  # 0.9 * 1 + 0.1 * 3
    assert ema.model.weight.tolist() == pytest.approx([1.2, 1.2])
    ema.update(net, step=1)  # 0.9 * 1.2 + 0.1 * 3
    assert ema.model.weight.tolist() == pytest.approx([1.38, 1.38])
    assert ema.model.running_mean.tolist() == [5.0, 5.0]  # buffers are copied, not averaged
    warm = EMA(nn.Linear(1, 1, bias=False), decay=0.999, warmup=True)
    target = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        warm.model.weight.fill_(0.0)
        target.weight.fill_(1.0)
    warm.update(target, step=0)  # decay 0.1 at step 0: the shadow follows the early weights closely
    assert warm.model.weight.item() == pytest.approx(0.9)


def test_state_dict_round_trip():
    a, b = EMA(nn.Linear(3, 2)), EMA(nn.Linear(3, 2))
    b.load_state_dict(a.state_dict())
    assert all(torch.equal(x, y) for x, y in zip(a.model.parameters(), b.model.parameters()))
