"""The conditional noise predictor: a diffusers UNet + the label conditioning (docs/reference-config.md,
docs/conditioning.md).

Both designs take the (24,) multi-hot condition y; the null condition (classifier-free guidance) is all zeros.
- pooled: y goes through nn.Linear(24, time_embed_dim) and is added to the time embedding as `class_labels`
  (UNet2DModel, class_embed_type="identity").
- tokens: the same pooled vector on the time path (unless model.label_on_time_path is off), plus one token per
  requested object, which the UNet's CrossAttn blocks attend to (UNet2DConditionModel). The tokens are a set:
  no position embedding, padded with a mask to MAX_OBJECTS (3) slots, and a learned null token is
  always present, so the empty set (the null condition) still has one key to attend to.
With model.self_condition (Chen, Zhang & Hinton 2022, "Analog Bits") the UNet takes 6 input channels: x_t and
an estimate of x0 (the sampling loop's previous prediction; zeros when there is none).
"""

from __future__ import annotations

import torch
from torch import nn

from iclevr.labels import COLOURS, MAX_OBJECTS, NUM_CLASSES
from iclevr.settings import ModelSettings


class ObjectTokens(nn.Module):
    """Multi-hot y (B, 24) -> object tokens (B, 1 + K, D) and their mask (B, 1 + K); slot 0 is the null token."""

    def __init__(self, dim: int, kind: str):
        super().__init__()
        self.kind = kind
        if kind == "class":
            self.classes = nn.Embedding(NUM_CLASSES, dim)
        else:  # shape_colour: class index = shape * 8 + colour (iclevr.labels)
            self.shapes = nn.Embedding(NUM_CLASSES // len(COLOURS), dim)
            self.colours = nn.Embedding(len(COLOURS), dim)
        self.null = nn.Parameter(torch.randn(1, 1, dim))

    def table(self) -> torch.Tensor:
        """The token of every class, (24, D)."""
        if self.kind == "class":
            return self.classes.weight
        idx = torch.arange(NUM_CLASSES, device=self.null.device)
        return self.shapes(idx // len(COLOURS)) + self.colours(idx % len(COLOURS))

    def forward(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Gather the requested objects' tokens into K = MAX_OBJECTS masked slots: a fixed shape, so no host
        synchronisation to read the batch's object count and one graph under torch.compile."""
        on = y > 0.5  # (B, 24)
        if len(y):  # more objects than slots would be dropped: fail instead (asynchronously on a GPU)
            torch._assert_async(on.sum(1).max() <= MAX_OBJECTS, f"a condition names more than {MAX_OBJECTS} objects")
        order = torch.argsort(on.to(torch.int8), dim=1, descending=True, stable=True)[:, :MAX_OBJECTS]  # (B, K)
        mask = torch.gather(on, 1, order)  # (B, K): True for a requested object, False for padding
        tokens = self.table()[order]  # (B, K, D)
        null = self.null.expand(len(y), 1, -1).to(tokens.dtype)  # (B, 1, D)
        keep = torch.ones(len(y), 1, dtype=torch.bool, device=y.device)
        return torch.cat([null, tokens], 1), torch.cat([keep, mask], 1)


class ConditionalUNet(nn.Module):
    """eps (or v) = model(x_t (B, C, H, W), t (B,), y (B, 24) multi-hot[, x0_self (B, C, H, W)]), where
    (C, H, W) = x_shape: what the model denoises (model.design: pixels, 2x2-patched pixels or latents)."""

    def __init__(self, cfg: ModelSettings):
        super().__init__()
        self.cfg = cfg
        self.__dict__["autoencoder"] = None  # latent: an iclevr.autoencoder.Autoencoder, kept out of state_dict
        self.unet = _tokens_unet(cfg) if cfg.condition == "tokens" else _pooled_unet(cfg)
        self.time_embed_dim = 4 * cfg.block_out_channels[0]
        if cfg.label_on_time_path:
            self.label_embed = nn.Linear(NUM_CLASSES, self.time_embed_dim)
        if cfg.condition == "tokens":
            self.tokens = ObjectTokens(_token_dim(cfg), cfg.token_embedding)

    def forward(
        self, x_t: torch.Tensor, t: torch.Tensor, y: torch.Tensor, x0_self: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Predict eps (or v) for noisy images x_t at timesteps t under conditions y; a self-conditioned model
        also takes an x0 estimate x0_self (None = zeros: no estimate yet)."""
        x = self.unet_input(x_t, x0_self)  # (B, C or 2C, H, W)
        class_emb = self.pooled(y)  # (B, time_embed_dim), or None without the time path
        if self.cfg.condition == "pooled":
            return self.from_unet(self.unet(self.to_unet(x), t, class_labels=class_emb).sample)  # (B, C, H, W)
        tokens, mask = self.tokens(y)  # (B, 1 + K, D), (B, 1 + K)
        return self.denoise(x, t, class_emb, tokens, mask)

    @property
    def x_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of x_t: RGB at sample_size (pixels) or twice it (patch2), latents at sample_size (latent)."""
        S = self.cfg.sample_size
        if self.cfg.design == "latent":
            return self.cfg.latent_channels, S, S
        return (3, 2 * S, 2 * S) if self.cfg.design == "patch2" else (3, S, S)

    def to_unet(self, x: torch.Tensor) -> torch.Tensor:
        """patch2: (B, C, 2S, 2S) -> 2x2 patches on channels (B, 4C, S, S) (pixel-unshuffle); else x as is."""
        return nn.functional.pixel_unshuffle(x, 2) if self.cfg.design == "patch2" else x

    def from_unet(self, out: torch.Tensor) -> torch.Tensor:
        """The inverse of to_unet for the UNet's output (pixel-shuffle under patch2)."""
        return nn.functional.pixel_shuffle(out, 2) if self.cfg.design == "patch2" else out

    def to_images(self, x0: torch.Tensor) -> torch.Tensor:
        """Denoised x0 -> RGB images in [-1, 1]: the autoencoder's decoding of latents, else x0 itself."""
        if self.cfg.design != "latent":
            return x0
        if self.autoencoder is None:
            raise RuntimeError("a latent model needs its autoencoder attached (iclevr.weights.load_weights)")
        return self.autoencoder.decode(x0)  # (B, 3, 64, 64)

    def attach_autoencoder(self, autoencoder) -> None:
        """Attach the latent design's autoencoder (not a submodule: it is neither trained nor saved with it)."""
        self.__dict__["autoencoder"] = autoencoder

    def pooled(self, y: torch.Tensor) -> torch.Tensor | None:
        """The pooled label vector for the time path, (B, time_embed_dim); None when the model has none."""
        if not self.cfg.label_on_time_path:
            return None
        return self.label_embed(y.to(self.label_embed.weight.dtype))

    def unet_input(self, x_t: torch.Tensor, x0_self: torch.Tensor | None) -> torch.Tensor:
        """x_t, or under self-conditioning (Chen, Zhang & Hinton 2022) x_t and x0_self (or zeros) on channels."""
        if not self.cfg.self_condition:
            if x0_self is not None:
                raise ValueError("x0_self was given to a model without model.self_condition")
            return x_t
        if x0_self is None:
            x0_self = torch.zeros_like(x_t)
        return torch.cat([x_t, x0_self.to(x_t.dtype)], 1)  # (B, 2C, H, W)

    def denoise(self, x, t, class_emb, tokens, mask) -> torch.Tensor:
        """The tokens UNet on its input x (unet_input) and given tokens (B, N, D) with mask (B, N); the order of
        the tokens does not matter."""
        out = self.unet(
            self.to_unet(x),
            t,
            encoder_hidden_states=tokens,
            class_labels=class_emb,
            encoder_attention_mask=mask.to(tokens.dtype),
        ).sample  # (B, C', S, S)
        return self.from_unet(out)  # (B, C, H, W)


def _out_channels(cfg: ModelSettings) -> int:
    """UNet output channels: RGB, its 2x2 patches (patch2) or the latent channels."""
    if cfg.design == "latent":
        return cfg.latent_channels
    return 12 if cfg.design == "patch2" else 3


def _in_channels(cfg: ModelSettings) -> int:
    """UNet input channels: x_t, and the x0 estimate under self-conditioning."""
    return 2 * _out_channels(cfg) if cfg.self_condition else _out_channels(cfg)


def _token_dim(cfg: ModelSettings) -> int:
    """Width of the object tokens."""
    return cfg.cross_attention_dim or max(cfg.block_out_channels)


def _pooled_unet(cfg: ModelSettings):
    """The pooled design's diffusers UNet2DModel."""
    from diffusers import UNet2DModel

    return UNet2DModel(
        sample_size=cfg.sample_size,
        in_channels=_in_channels(cfg),
        out_channels=_out_channels(cfg),
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


def _head_settings(cfg: ModelSettings) -> tuple[int, ...]:
    """UNet2DConditionModel's `attention_head_dim` tuple that gives every attention block heads of
    cfg.attention_head_dim channels (docs/diffusers-notes.md).

    The one tuple is read three ways: CrossAttn blocks and the mid block take entry i as a number of heads (up
    blocks reversed), plain Attn blocks take it as a head width (up blocks not reversed). Collect what each
    block needs and refuse a layout where two blocks need different values of the same entry.
    """
    from iclevr.errors import UserError

    n, width = len(cfg.block_out_channels), cfg.attention_head_dim
    heads = [max(1, c // width) for c in cfg.block_out_channels]
    need: dict[int, int] = {n - 1: heads[n - 1]}  # the mid block (cross-attention, heads)
    wants = [(i, heads[i] if "CrossAttn" in b else width) for i, b in enumerate(cfg.down_block_types) if "Attn" in b]
    wants += [
        (n - 1 - i, heads[n - 1 - i]) if "CrossAttn" in b else (i, width)
        for i, b in enumerate(cfg.up_block_types)
        if "Attn" in b
    ]
    for i, value in wants:
        if need.setdefault(i, value) != value:
            raise UserError(
                "model: diffusers cannot give every attention block heads of "
                f"{width} channels with these block types (entry {i} of its attention_head_dim "
                "is read as a head count by one block and as a head width by another); move the "
                "plain Attn blocks or use CrossAttn there"
            )
    return tuple(need.get(i, heads[i]) for i in range(n))


def _tokens_unet(cfg: ModelSettings):
    """The tokens design's diffusers UNet2DConditionModel (cross-attention where the block types say CrossAttn)."""
    from diffusers import UNet2DConditionModel

    heads = _head_settings(cfg)
    return UNet2DConditionModel(
        sample_size=cfg.sample_size,
        in_channels=_in_channels(cfg),
        out_channels=_out_channels(cfg),
        layers_per_block=cfg.layers_per_block,
        block_out_channels=tuple(cfg.block_out_channels),
        down_block_types=tuple(cfg.down_block_types),
        up_block_types=tuple(cfg.up_block_types),
        attention_head_dim=heads,
        norm_num_groups=cfg.norm_num_groups,
        dropout=cfg.dropout,
        cross_attention_dim=_token_dim(cfg),
        resnet_time_scale_shift=cfg.resnet_time_scale_shift,
        class_embed_type="identity" if cfg.label_on_time_path else None,
    )


def build_model(cfg: ModelSettings) -> ConditionalUNet:
    """Build the conditional UNet of a ModelSettings section (clear error for inconsistent settings)."""
    from iclevr.errors import UserError

    if len(cfg.down_block_types) != len(cfg.block_out_channels) or len(cfg.up_block_types) != len(
        cfg.block_out_channels
    ):
        raise UserError("model: down_block_types, up_block_types and block_out_channels need the same length")
    if any(c % cfg.norm_num_groups for c in cfg.block_out_channels):
        raise UserError(
            f"model: norm_num_groups={cfg.norm_num_groups} must divide every block_out_channels "
            f"value {tuple(cfg.block_out_channels)}"
        )
    if cfg.sample_size % (2 ** (len(cfg.block_out_channels) - 1)):
        raise UserError(
            f"model: sample_size={cfg.sample_size} must be divisible by 2^{len(cfg.block_out_channels) - 1}"
        )
    if cfg.condition == "tokens" and not any("CrossAttn" in b for b in cfg.down_block_types + cfg.up_block_types):
        raise UserError(
            "model: condition=tokens needs CrossAttnDownBlock2D / CrossAttnUpBlock2D at some level "
            "(the blocks that attend to the object tokens)"
        )
    if cfg.condition == "pooled" and any("CrossAttn" in b for b in cfg.down_block_types + cfg.up_block_types):
        raise UserError("model: CrossAttn blocks need condition=tokens (pooled has no tokens to attend to)")
    if cfg.condition == "pooled" and not cfg.label_on_time_path:
        raise UserError("model: condition=pooled needs label_on_time_path (it is pooled's only way in)")
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
