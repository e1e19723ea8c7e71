"""Exponential moving average of model weights (the weights used for sampling).

decay_t = min(decay, (1 + t) / (10 + t)) with warm-up (the schedule of TensorFlow's ExponentialMovingAverage
with num_updates, also used by diffusers' EMAModel), so early in training the average follows the weights
closely instead of holding on to the random initialisation (docs/diffusers-notes.md: otherwise EMA samples pure noise).
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    """An fp32 shadow copy of a module, updated as shadow = d * shadow + (1 - d) * weights."""

    def __init__(self, model: nn.Module, decay: float = 0.999, warmup: bool = True):
        self.decay = decay
        self.warmup = warmup
        self.model = copy.deepcopy(model).float().eval().requires_grad_(False)

    def decay_at(self, step: int) -> float:
        """The decay used for the update after optimizer step `step` (0-based)."""
        return min(self.decay, (1 + step) / (10 + step)) if self.warmup else self.decay

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        """Move the shadow weights towards `model`'s (same architecture, any dtype/device)."""
        d = self.decay_at(step)
        shadow = list(self.model.parameters())
        params = [p.detach().to(s.dtype) for s, p in zip(shadow, model.parameters())]
        torch._foreach_lerp_(shadow, params, 1.0 - d)  # shadow += (1 - d) (p - shadow)
        for s, b in zip(self.model.buffers(), model.buffers()):
            s.copy_(b)

    def state_dict(self) -> dict:
        """The shadow weights as a state_dict."""
        return self.model.state_dict()

    def load_state_dict(self, state: dict) -> None:
        """Restore shadow weights saved by state_dict()."""
        self.model.load_state_dict(state)
