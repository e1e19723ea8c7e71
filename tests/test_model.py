"""The conditional UNet: the seed's exact architecture, presets, conditioning, clear errors."""

from __future__ import annotations

import pytest
import torch

from iclevr.errors import UserError
from iclevr.model import build_model, count_parameters, unwrap
from iclevr.settings import ModelSettings, TrainSettings, resolve


def test_seed_preset_is_the_reference_architecture():
    model = build_model(resolve(TrainSettings, preset="seed").model)
    assert count_parameters(model) == 113_686_019  # docs/reference-config.md: about 113.7 M
    unet = model.unet
    assert [type(b).__name__ for b in unet.down_blocks] == ["DownBlock2D"] * 4 + ["AttnDownBlock2D", "DownBlock2D"]
    assert [type(b).__name__ for b in unet.up_blocks] == ["UpBlock2D", "AttnUpBlock2D"] + ["UpBlock2D"] * 4
    assert tuple(unet.config.block_out_channels) == (128, 128, 256, 256, 512, 512)
    assert unet.config.layers_per_block == 2 and unet.config.sample_size == 64
    assert unet.config.class_embed_type == "identity"
    assert (model.label_embed.in_features, model.label_embed.out_features) == (24, 512)


@pytest.mark.parametrize("preset,size", [("tiny", 32), ("small", 64)])
def test_other_presets_build(preset, size):
    cfg = resolve(TrainSettings, preset=preset).model
    model = build_model(cfg)
    assert cfg.sample_size == size
    assert count_parameters(model) < 30e6


def test_scale_shift_conditioning_reaches_every_resnet():
    cfg = resolve(TrainSettings, preset="tiny").model
    assert cfg.resnet_time_scale_shift == "scale_shift"
    unet = build_model(cfg).unet
    assert unet.config.resnet_time_scale_shift == "scale_shift"
    resnets = [m for m in unet.modules() if type(m).__name__ == "ResnetBlock2D"]
    assert resnets and all(r.time_emb_proj.out_features == 2 * r.conv1.out_channels for r in resnets)


def test_forward_shape_and_the_condition_matters(tiny_model_cfg):
    torch.manual_seed(0)
    model = build_model(tiny_model_cfg).eval()
    torch.nn.init.normal_(model.label_embed.weight)
    x_t, t = torch.randn(2, 3, 16, 16), torch.tensor([10, 500])
    y = torch.zeros(2, 24)
    y[:, 3] = 1
    with torch.no_grad():
        cond, null = model(x_t, t, y), model(x_t, t, torch.zeros(2, 24))
    assert cond.shape == (2, 3, 16, 16)
    assert not torch.allclose(cond, null)


@pytest.mark.parametrize("change,match", [
    ({"down_block_types": ["DownBlock2D"]}, "same length"),
    ({"norm_num_groups": 7}, "must divide"),
    ({"sample_size": 17}, "divisible"),
])
def test_inconsistent_model_settings_are_user_errors(tiny_model_cfg, change, match):
    with pytest.raises(UserError, match=match):
        build_model(ModelSettings(**{**tiny_model_cfg.model_dump(), **change}))


def test_unwrap_peels_nested_wrappers(tiny_model_cfg):
    model = build_model(tiny_model_cfg)

    class DataParallelLike(torch.nn.Module):  # DDP and Accelerate keep the wrapped model in .module
        def __init__(self, module):
            super().__init__()
            self.module = module

    compiled = torch.compile(model)  # compiles lazily, on the first call: cheap to build
    assert unwrap(compiled) is model and unwrap(DataParallelLike(compiled)) is model
    assert unwrap(model) is model
