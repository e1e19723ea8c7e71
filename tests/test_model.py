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


@pytest.mark.parametrize("preset,size,params", [("tiny", 32, 4_700_163), ("small", 64, 26_629_763)])
def test_other_presets_build(preset, size, params):
    cfg = resolve(TrainSettings, preset=preset).model
    model = build_model(cfg)
    assert cfg.sample_size == size
    assert count_parameters(model) == params  # the README's presets table


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


@pytest.mark.parametrize(
    "change,match",
    [
        ({"down_block_types": ["DownBlock2D"]}, "same length"),
        ({"norm_num_groups": 7}, "must divide"),
        ({"sample_size": 17}, "divisible"),
    ],
)
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


# ---- object tokens (docs/conditioning.md) ----------------------------------------------------------

TOKENS_MODEL = {
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"],
    "condition": "tokens",
}


def _tokens_model(tiny_model_cfg, **change):
    """A 16x16 tokens model whose tokens visibly matter (random, not tiny, token weights)."""
    torch.manual_seed(0)
    model = build_model(ModelSettings(**{**tiny_model_cfg.model_dump(), **TOKENS_MODEL, **change}))
    with torch.no_grad():
        for p in model.tokens.parameters():
            p.mul_(3)
    return model


def _y(*conditions):
    y = torch.zeros(len(conditions), 24)
    for i, c in enumerate(conditions):
        y[i, list(c)] = 1
    return y


@pytest.mark.parametrize("embedding", ["class", "shape_colour"])
def test_tokens_model_forward_backward_at_16(tiny_model_cfg, embedding):
    model = _tokens_model(tiny_model_cfg, token_embedding=embedding)
    assert type(model.unet).__name__ == "UNet2DConditionModel"
    x_t, t = torch.randn(3, 3, 16, 16), torch.tensor([1, 400, 999])
    out = model(x_t, t, _y([0], [1, 9], [2, 10, 23]))
    assert out.shape == (3, 3, 16, 16)
    out.square().mean().backward()
    grads = [p.grad for p in model.tokens.parameters()]
    assert all(g is not None and g.abs().sum() > 0 for g in grads)  # every token table learns


def test_tokens_without_the_time_path_condition_through_the_tokens_alone(tiny_model_cfg):
    model = _tokens_model(tiny_model_cfg, label_on_time_path=False)
    assert not hasattr(model, "label_embed") and model.unet.config.class_embed_type is None
    x_t, t = torch.randn(2, 3, 16, 16), torch.tensor([100, 800])
    y = _y([1, 9], [4])
    out = model(x_t, t, y)
    out.square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.tokens.parameters())
    with torch.no_grad():  # the labels still matter, and the set is still unordered
        assert not torch.allclose(model(x_t, t, y), model(x_t, t, _y([5], [6])), atol=1e-3)
        tokens, mask = model.tokens(y)
        perm = torch.tensor([2, 0, 1])
        shuffled = model.denoise(x_t, t, None, tokens[:, perm], mask[:, perm])
        assert torch.allclose(model(x_t, t, y), shuffled, atol=1e-5)


def test_pooled_needs_the_time_path(tiny_model_cfg):
    with pytest.raises(UserError, match="label_on_time_path"):
        build_model(ModelSettings(**{**tiny_model_cfg.model_dump(), "label_on_time_path": False}))


def test_tokens_are_a_set_permuting_them_changes_nothing(tiny_model_cfg):
    model = _tokens_model(tiny_model_cfg).eval()
    x_t, t, y = torch.randn(2, 3, 16, 16), torch.tensor([300, 700]), _y([1, 9, 23], [4])
    with torch.no_grad():
        class_emb = model.label_embed(y)
        tokens, mask = model.tokens(y)  # (2, 4, D), (2, 4): null + 3 slots, the second row padded
        assert mask.tolist() == [[True, True, True, True], [True, True, False, False]]
        ref = model.denoise(x_t, t, class_emb, tokens, mask)
        perm = torch.tensor([3, 0, 2, 1])
        shuffled = model.denoise(x_t, t, class_emb, tokens[:, perm], mask[:, perm])
        assert torch.allclose(ref, shuffled, atol=1e-5)
        assert torch.allclose(ref, model(x_t, t, y), atol=1e-6)
        # padding does not matter: the single-object row alone (K = 1) gives the same output as in the batch
        assert torch.allclose(ref[1:], model(x_t[1:], t[1:], y[1:]), atol=1e-5)
        # and the tokens are not ignored: another object set changes the output
        assert not torch.allclose(ref[1:], model(x_t[1:], t[1:], _y([5])), atol=1e-3)


def test_tokens_null_condition_is_the_null_token_alone(tiny_model_cfg):
    model = _tokens_model(tiny_model_cfg).eval()
    tokens, mask = model.tokens(torch.zeros(2, 24))
    assert tokens.shape[1] == 4 and mask.tolist() == [[True, False, False, False]] * 2  # one key: the null token
    assert torch.equal(tokens[0, 0], model.tokens.null[0, 0])
    with torch.no_grad():
        null = model(torch.randn(2, 3, 16, 16), torch.tensor([5, 5]), torch.zeros(2, 24))
    assert torch.isfinite(null).all()


def test_shape_colour_tokens_share_their_parts(tiny_model_cfg):
    model = _tokens_model(tiny_model_cfg, token_embedding="shape_colour")
    table = model.tokens.table()  # (24, D)
    from iclevr.labels import LABEL_TO_INDEX as I

    # red sphere - red cube == cyan sphere - cyan cube (the shape part is shared across colours)
    assert torch.allclose(
        table[I["red sphere"]] - table[I["red cube"]], table[I["cyan sphere"]] - table[I["cyan cube"]], atol=1e-5
    )


@pytest.mark.parametrize(
    "condition,blocks,match",
    [
        ("tokens", {}, "needs CrossAttn"),
        ("pooled", TOKENS_MODEL, "need condition=tokens"),
    ],
)
def test_conditioning_and_block_types_must_agree(tiny_model_cfg, condition, blocks, match):
    cfg = {**tiny_model_cfg.model_dump(), **blocks, "condition": condition}
    with pytest.raises(UserError, match=match):
        build_model(ModelSettings(**cfg))


def test_tokens_weights_round_trip_with_their_metadata(tiny_model_cfg, tmp_path):
    from iclevr.settings import ScheduleSettings
    from iclevr.weights import load_weights, save_weights

    model = _tokens_model(tiny_model_cfg, token_embedding="shape_colour").eval()
    path = save_weights(
        model, tmp_path / "w.safetensors", model_cfg=model.cfg, schedule_cfg=ScheduleSettings(), preset="test", step=7
    )
    loaded, info = load_weights(path)
    assert (info.model.condition, info.model.token_embedding, info.step) == ("tokens", "shape_colour", 7)
    x_t, t, y = torch.randn(2, 3, 16, 16), torch.tensor([3, 900]), _y([0, 12], [7])
    with torch.no_grad():
        assert torch.equal(model(x_t, t, y), loaded(x_t, t, y))


@pytest.mark.parametrize("preset", ["tiny-tokens", "small-tokens"])
def test_every_attention_block_of_a_tokens_preset_has_heads_of_the_requested_width(preset):
    cfg = resolve(TrainSettings, preset=preset).model
    unet = build_model(cfg).unet
    attention = [m for m in unet.modules() if type(m).__name__ == "Attention"]
    assert any(m.is_cross_attention for m in attention) and any(not m.is_cross_attention for m in attention)
    assert all(m.inner_dim // m.heads == cfg.attention_head_dim for m in attention), [
        (m.heads, m.inner_dim) for m in attention
    ]


def test_an_attention_layout_diffusers_cannot_express_is_a_user_error(tiny_model_cfg):
    # entry 1 would be a head width for the plain Attn up block and a head count for the CrossAttn down block
    cfg = {
        **tiny_model_cfg.model_dump(),
        "condition": "tokens",
        "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"],
        "up_block_types": ["UpBlock2D", "AttnUpBlock2D"],
        "attention_head_dim": 4,
    }
    with pytest.raises(UserError, match="head width"):
        build_model(ModelSettings(**cfg))


def test_tokens_have_a_fixed_shape_and_padding_changes_no_output(tiny_model_cfg):
    """Issue 29: K is MAX_OBJECTS whatever the batch (no .item() to read the object count: no host
    synchronisation, one compiled graph), and the masked slots change nothing: the output equals that of the
    unpadded tokens (K = the batch's largest object count, as before)."""
    from iclevr.labels import MAX_OBJECTS

    model = _tokens_model(tiny_model_cfg).eval()
    x_t, t = torch.randn(2, 3, 16, 16), torch.tensor([300, 700])
    with torch.no_grad():
        for y in (_y([4], [1, 9]), _y([5], [6]), torch.zeros(2, 24)):
            tokens, mask = model.tokens(y)
            assert tokens.shape[1] == mask.shape[1] == 1 + MAX_OBJECTS
            k = 1 + int(mask.sum(1).max())  # the null token and the largest object count
            class_emb = model.label_embed(y)
            padded = model.denoise(x_t, t, class_emb, tokens, mask)
            assert torch.allclose(padded, model.denoise(x_t, t, class_emb, tokens[:, :k], mask[:, :k]), atol=1e-6)
    with pytest.raises(RuntimeError, match="more than 3 objects"):  # never dropped silently
        model.tokens(_y([0, 1, 2, 3]))
    from iclevr.sampling import sample
    from iclevr.settings import SamplerSettings, ScheduleSettings

    with pytest.raises(UserError, match="names 4 objects; the object-token model takes at most 3"):  # one line
        sample(model, _y([0, 1, 2, 3]), schedule=ScheduleSettings(), sampler=SamplerSettings(sampler="ddim", steps=1))
