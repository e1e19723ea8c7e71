"""The conditional noise predictor: diffusers UNet2DModel + a label embedding (docs/reference-config.md).

The (24,) multi-hot condition y goes through nn.Linear(24, time_embed_dim) and is added to the time
embedding as `class_labels` (class_embed_type="identity"). The null condition is all zeros.
"""

from __future__ import annotations

import torch
from torch import nn

from iclevr.labels import NUM_CLASSES
from iclevr.settings import ModelSettings


class ConditionalUNet(nn.Module):
    """eps (or v) = model(x_t (B, 3, S, S), t (B,), y (B, 24) multi-hot)."""

    def __init__(self, cfg: ModelSettings):
        super().__init__()
        from diffusers import UNet2DModel

        self.cfg = cfg
        self.unet = UNet2DModel(
            sample_size=cfg.sample_size,
            in_channels=3,
            out_channels=3,
            layers_per_block=cfg.layers_per_block,
            block_out_channels=tuple(cfg.block_out_channels),
            down_block_types=tuple(cfg.down_block_types),
            up_block_types=tuple(cfg.up_block_types),
            attention_head_dim=cfg.attention_head_dim,
            norm_num_groups=cfg.norm_num_groups,
            dropout=cfg.dropout,
            resnet_time_scale_shift=cfg.resnet_time_scale_shift,
            class_embed_type="identity",
        )
        self.time_embed_dim = 4 * cfg.block_out_channels[0]
        self.label_embed = nn.Linear(NUM_CLASSES, self.time_embed_dim)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Predict eps (or v) for noisy images x_t at timesteps t under conditions y."""
        class_emb = self.label_embed(y.to(self.label_embed.weight.dtype))  # (B, time_embed_dim)
        return self.unet(x_t, t, class_labels=class_emb).sample  # (B, 3, S, S)


def build_model(cfg: ModelSettings) -> ConditionalUNet:
    """Build the conditional UNet of a ModelSettings section (clear error for inconsistent settings)."""
    from iclevr.errors import UserError

    if len(cfg.down_block_types) != len(cfg.block_out_channels) or \
            len(cfg.up_block_types) != len(cfg.block_out_channels):
        raise UserError("model: down_block_types, up_block_types and block_out_channels need the same length")
    if any(c % cfg.norm_num_groups for c in cfg.block_out_channels):
        raise UserError(f"model: norm_num_groups={cfg.norm_num_groups} must divide every block_out_channels "
                        f"value {tuple(cfg.block_out_channels)}")
    if cfg.sample_size % (2 ** (len(cfg.block_out_channels) - 1)):
        raise UserError(f"model: sample_size={cfg.sample_size} must be divisible by "
                        f"2^{len(cfg.block_out_channels) - 1}")
    try:
        return ConditionalUNet(cfg)
    except (ValueError, TypeError) as e:
        raise UserError(f"model: diffusers rejected these settings: {e}") from None


def count_parameters(model: nn.Module) -> int:
    """Number of parameters."""
    return sum(p.numel() for p in model.parameters())


def unwrap(model: nn.Module) -> nn.Module:
    """The plain ConditionalUNet under DDP / Accelerate (.module) and torch.compile (._orig_mod) wrappers."""
    # the wrappers nest (a compiled model inside DDP), so peel until neither attribute is left
    while True:
        # `is not None`, not truthiness: bool() of a compiled module calls its len(), which a UNet lacks
        inner = getattr(model, "module", None)
        inner = inner if inner is not None else getattr(model, "_orig_mod", None)
        if inner is None:
            return model
        model = inner
