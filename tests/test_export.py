"""`iclevr export`: plain diffusers loads the folder, and the exported README's own code reproduces our sampler
for the same seed, for both condition designs (pooled, tokens), with and without self-conditioning."""

import json
import re

import pytest
import torch
from typer.testing import CliRunner

from iclevr.cli.app import app

runner = CliRunner()
STEPS = 6  # the snippet's 1000 DDPM steps, cut to keep the test fast
CONDITION = "red sphere, cyan cube"  # the snippet's condition
TOKENS = {
    "condition": "tokens",
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"],
}


def _export(tmp_path, cfg, prediction, scale_tokens=1.0):
    """Save a random tiny model with our metadata (guidance 2.5) and export it through the CLI."""
    from iclevr.model import build_model
    from iclevr.settings import SamplerSettings, ScheduleSettings
    from iclevr.weights import save_weights

    torch.manual_seed(0)
    model = build_model(cfg)
    if cfg.condition == "tokens":  # larger tokens: the cross-attention then visibly changes the image
        with torch.no_grad():
            for p in model.tokens.parameters():
                p.mul_(scale_tokens)
    if cfg.self_condition:  # a stronger x0 input: the fed-back estimate then visibly changes the image
        with torch.no_grad():
            model.unet.conv_in.weight[:, 3:].mul_(5)
    weights = save_weights(
        model,
        tmp_path / "w.safetensors",
        model_cfg=cfg,
        schedule_cfg=ScheduleSettings(prediction_type=prediction),
        sampler_cfg=SamplerSettings(guidance_scale=2.5),
        preset="test",
    )
    out = tmp_path / "export"
    r = runner.invoke(app, ["export", "--checkpoint", str(weights), "--out", str(out)])
    assert r.exit_code == 0, r.stdout + r.stderr
    return weights, out


def _run_readme_snippet(out):
    """Run the exported README's code as a user would (fewer steps); returns its image in [-1, 1]."""
    text = (out / "README.md").read_text()
    code = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    assert not re.search(r"^\s*(import|from)\s+iclevr", code, re.M)  # plain diffusers, nothing of ours
    code, n = re.subn(r"set_timesteps\(1000\)", f"set_timesteps({STEPS})", code)
    assert n == 1
    scope = {}
    exec(compile(code, str(out / "README.md"), "exec"), scope)
    return scope["image"] * 2 - 1  # (1, 3, S, S)


def _ours(model, info):
    """What `iclevr sample --sampler ddpm --steps STEPS` draws for CONDITION (image 0, seed 0)."""
    from iclevr.generate import with_weights_defaults
    from iclevr.labels import encode
    from iclevr.sampling import sample
    from iclevr.settings import SamplerSettings

    sampler = with_weights_defaults(SamplerSettings(sampler="ddpm", steps=STEPS), info.sampler)
    assert sampler.guidance_scale == 2.5
    return sample(model, encode(CONDITION)[None], schedule=info.schedule, sampler=sampler)


def _assert_same(plain, ours):
    # equal up to fp32 round-off: at t=999 alpha_bar ~ 2e-9, so re-deriving the clipped x0 from eps costs ~1e-3
    diff = (plain - ours).abs()
    assert diff.max() < 5e-3 and diff.mean() < 2e-4, (diff.max(), diff.mean())


@pytest.mark.parametrize("shift, prediction", [("default", "epsilon"), ("scale_shift", "v_prediction")])
def test_pooled_export_loads_in_plain_diffusers_and_reproduces_our_samples(tmp_path, tiny_model_cfg, shift, prediction):
    from diffusers import UNet2DModel

    from iclevr.labels import LABELS
    from iclevr.weights import load_weights

    cfg = tiny_model_cfg.model_copy(update={"resnet_time_scale_shift": shift})  # the tiny preset: scale_shift, v
    weights, out = _export(tmp_path, cfg, prediction)
    for name in (
        "unet/config.json",
        "scheduler/scheduler_config.json",
        "label_embed.safetensors",
        "iclevr.json",
        "README.md",
    ):
        assert (out / name).is_file(), name
    assert not (out / "object_tokens.safetensors").exists()
    meta = json.loads((out / "iclevr.json").read_text())
    assert meta["labels"] == list(LABELS) and meta["condition"] == "pooled"
    assert isinstance(UNet2DModel.from_pretrained(out, subfolder="unet"), UNet2DModel)
    _assert_same(_run_readme_snippet(out), _ours(*load_weights(weights)))


@pytest.mark.parametrize(
    "embedding, shift, prediction, time_path",
    [
        ("class", "default", "epsilon", True),
        ("shape_colour", "scale_shift", "v_prediction", True),
        ("shape_colour", "scale_shift", "v_prediction", False),
    ],
)  # tokens alone: no label on the time path
def test_tokens_export_loads_in_plain_diffusers_and_reproduces_our_samples(
    tmp_path, tiny_model_cfg, embedding, shift, prediction, time_path
):
    from diffusers import UNet2DConditionModel
    from safetensors.torch import load_file

    from iclevr.weights import load_weights

    cfg = type(tiny_model_cfg)(
        **{
            **tiny_model_cfg.model_dump(),
            **TOKENS,
            "token_embedding": embedding,
            "resnet_time_scale_shift": shift,
            "label_on_time_path": time_path,
        }
    )
    weights, out = _export(tmp_path, cfg, prediction, scale_tokens=4.0)
    meta = json.loads((out / "iclevr.json").read_text())
    assert meta["condition"] == "tokens" and meta["unet_class"] == "UNet2DConditionModel"
    assert (out / "label_embed.safetensors").exists() == time_path
    assert ("class_labels" in (out / "README.md").read_text()) == time_path
    assert isinstance(UNet2DConditionModel.from_pretrained(out, subfolder="unet"), UNet2DConditionModel)
    model, info = load_weights(weights)
    tok = load_file(str(out / "object_tokens.safetensors"))
    assert torch.equal(tok["table"], model.tokens.table().detach())  # (24, D), shape_colour sums precomputed
    assert torch.equal(tok["null"], model.tokens.null.detach().reshape(-1))  # (D,)

    plain = _run_readme_snippet(out)  # our sampler batches cond + null with padding and a mask; the snippet not
    ours = _ours(model, info)
    _assert_same(plain, ours)
    # the tokens matter: the same weights with every class's token moved to another class draw another image
    table = model.tokens.table().detach()
    model.tokens.table = lambda: table.roll(1, 0)  # class i gets the token of class i - 1
    moved = (_ours(model, info) - ours).abs().mean()
    assert moved > 100 * 2e-4


@pytest.mark.parametrize("design, prediction", [("pooled", "v_prediction"), ("tokens", "epsilon")])
def test_self_conditioned_export_feeds_back_x0_and_reproduces_our_samples(tmp_path, tiny_model_cfg, design, prediction):
    import diffusers

    from iclevr.export import unet_class
    from iclevr.weights import load_weights

    cfg = type(tiny_model_cfg)(
        **{**tiny_model_cfg.model_dump(), **(TOKENS if design == "tokens" else {}), "self_condition": True}
    )
    weights, out = _export(tmp_path, cfg, prediction, scale_tokens=4.0)
    meta = json.loads((out / "iclevr.json").read_text())
    assert meta["model"]["self_condition"] and "self-conditioning" in meta["note"]
    model, info = load_weights(weights)
    unet = getattr(diffusers, unet_class(info)).from_pretrained(out, subfolder="unet")
    assert unet.config.in_channels == 6  # x_t and the x0 estimate
    ours = _ours(model, info)
    _assert_same(_run_readme_snippet(out), ours)
    # the estimate matters: the same weights always given zeros for it draw another image
    model.unet_input = lambda x_t, x0_self: torch.cat([x_t, torch.zeros_like(x_t)], 1)
    assert (_ours(model, info) - ours).abs().mean() > 100 * 2e-4


@pytest.mark.parametrize("design", ["patch2", "latent"])
def test_native_64_designs_export_and_reproduce_our_samples(tmp_path, tiny_model_cfg, design):
    """patch2: the snippet cuts x into 2x2 patches like the model; latent: it decodes with the exported VAE."""
    from diffusers import AutoencoderKL

    from iclevr.autoencoder import AutoencoderSettings, build_autoencoder, save_autoencoder
    from iclevr.fileio import file_sha256
    from iclevr.weights import load_weights

    update = {**TOKENS, "design": design}
    if design == "latent":
        torch.manual_seed(1)
        ae_cfg = AutoencoderSettings(resolution=16, block_out_channels=(8, 16), norm_num_groups=8)
        ae_file = save_autoencoder(build_autoencoder(ae_cfg), tmp_path / "autoencoder.safetensors", ae_cfg, 0.7, {})
        update.update(sample_size=8, autoencoder_sha256=file_sha256(ae_file))
    cfg = type(tiny_model_cfg)(**{**tiny_model_cfg.model_dump(), **update})
    weights, out = _export(tmp_path, cfg, "v_prediction", scale_tokens=4.0)
    meta = json.loads((out / "iclevr.json").read_text())
    assert meta["design"] == design and f"design {design}" in meta["note"]
    assert (out / "vae").is_dir() == (design == "latent")
    if design == "latent":
        assert AutoencoderKL.from_pretrained(out, subfolder="vae").config.scaling_factor == pytest.approx(0.7)
    model, info = load_weights(weights)
    ours = _ours(model, info)
    assert ours.shape == ((1, 3, 32, 32) if design == "patch2" else (1, 3, 16, 16))
    _assert_same(_run_readme_snippet(out), ours)


def test_export_refuses_to_overwrite(tmp_path, tiny_model_cfg):
    from iclevr.model import build_model
    from iclevr.settings import ScheduleSettings
    from iclevr.weights import save_weights

    weights = save_weights(
        build_model(tiny_model_cfg),
        tmp_path / "w.safetensors",
        model_cfg=tiny_model_cfg,
        schedule_cfg=ScheduleSettings(),
    )
    out = tmp_path / "taken"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    r = runner.invoke(app, ["export", "--checkpoint", str(weights), "--out", str(out)])
    assert r.exit_code == 2 and "--overwrite" in r.stderr
    assert (out / "mine.txt").read_text() == "keep"
