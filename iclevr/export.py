"""`iclevr export`: a folder plain diffusers can load, so a trained model can leave this tool.

<out>/unet/                       UNet2DModel (pooled) or UNet2DConditionModel (tokens):
                                  <Class>.from_pretrained(out, subfolder="unet")
<out>/scheduler/                  DDPMScheduler.from_pretrained(out, subfolder="scheduler")
<out>/label_embed.safetensors     weight (time_embed_dim, 24) and bias: class_labels = y @ weight.T + bias
                                  (absent when model.label_on_time_path is off: the UNet takes no class_labels)
<out>/object_tokens.safetensors   tokens only: table (24, D), every class's token precomputed (so shape_colour
                                  needs no code), and null (D,), the learned null token (docs/conditioning.md)
<out>/vae/                        latent design only: AutoencoderKL.from_pretrained(out, subfolder="vae"), its
                                  config's scaling_factor the latent scale (z = scaling_factor * posterior mean)
<out>/iclevr.json                 label order, condition design, settings, sampler defaults
<out>/README.md                   a loading and sampling snippet that reproduces `iclevr sample --sampler ddpm`
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import Field

from iclevr.errors import UserError
from iclevr.settings import Section

_HEAD = """\
import json
from pathlib import Path

import torch
from diffusers import DDPMScheduler, {unet_class}
from safetensors.torch import load_file

root = Path({root})  # this folder
unet = {unet_class}.from_pretrained(root, subfolder="unet").eval()
scheduler = DDPMScheduler.from_pretrained(root, subfolder="scheduler")
{emb}labels = json.loads((root / "iclevr.json").read_text())["labels"]  # the 24 class names, in y's order
idx = [labels.index(n) for n in ["red sphere", "cyan cube"]]       # the requested objects
y = torch.zeros(1, 24); y[0, idx] = 1                              # multi-hot condition; zeros = unconditional
"""

_LOOP = """\
s = {guidance}  # guidance scale
g = torch.Generator().manual_seed({seed})  # {seed_note}
x = torch.randn(1, {c}, {h}, {w}, generator=g)
{x0_init}scheduler.set_timesteps({steps})
with torch.no_grad():
    for t in scheduler.timesteps:
{calls}{unpatch}        {step}
{decode}image = (x.clamp(-1, 1) + 1) / 2                                   # (1, 3, H, W) in [0, 1]
"""

_EMB = 'emb = load_file(root / "label_embed.safetensors")                 # weight (D, 24), bias (D,)\n'

_STEP = "x = scheduler.step(null + s * (cond - null), t, x, generator=g).prev_sample"

# self-conditioning (model.self_condition): the UNet's input is x_t and the previous step's predicted x0
_SELF_INIT = "x0_prev = torch.zeros_like(x)                                      # no x0 estimate before step 1\n"
_SELF_INPUT = "        x_in = torch.cat([x, x0_prev], 1)                          # x_t and the x0 estimate\n"
_SELF_STEP = (
    "out = scheduler.step(null + s * (cond - null), t, x, generator=g)\n"
    "        x, x0_prev = out.prev_sample, out.pred_original_sample     # x0 clipped to [-1, 1]"
)

_POOLED_CALLS = """\
        cond = unet({x}, t, class_labels=y @ emb["weight"].T + emb["bias"]).sample
        null = unet({x}, t, class_labels=torch.zeros_like(y) @ emb["weight"].T + emb["bias"]).sample
"""

# one condition needs no padding, so no encoder_attention_mask; the null condition is the null token alone
_TOKENS_SETUP = """\
tok = load_file(root / "object_tokens.safetensors")                # table (24, T), one per class; null (T,)
tokens = torch.cat([tok["null"][None], tok["table"][idx]])[None]   # (1, 1 + K, T): null + one per object
no_tokens = tok["null"][None, None]                                # (1, 1, T): the null condition
"""

_TOKENS_CALLS = """\
        cond = unet({x}, t, encoder_hidden_states=tokens,
                    class_labels=y @ emb["weight"].T + emb["bias"]).sample
        null = unet({x}, t, encoder_hidden_states=no_tokens,
                    class_labels=torch.zeros_like(y) @ emb["weight"].T + emb["bias"]).sample
"""

_TOKENS_ONLY_CALLS = """\
        cond = unet({x}, t, encoder_hidden_states=tokens).sample
        null = unet({x}, t, encoder_hidden_states=no_tokens).sample
"""

# patch2: the UNet sees 2x2 patches of the 64x64 image on channels (pixel-unshuffle in, pixel-shuffle out)
_UNPATCH = "        cond, null = F.pixel_shuffle(cond, 2), F.pixel_shuffle(null, 2)  # back to (1, 3, 64, 64)\n"
# latent: the denoised latents are decoded by the exported autoencoder (scaling_factor in its config)
_DECODE = (
    'vae = AutoencoderKL.from_pretrained(root, subfolder="vae").eval()\n'
    "with torch.no_grad():\n"
    "    x = vae.decode(x / vae.config.scaling_factor).sample             # latents -> (1, 3, 64, 64)\n"
)

_NOTES = {
    "pooled": "class_labels = multi_hot(24) @ weight.T + bias; the null condition is all zeros",
    "tokens": "class_labels = multi_hot(24) @ weight.T + bias; encoder_hidden_states = cat(null, table[requested "
    "classes]), an unordered set (pad to a common length with encoder_attention_mask = 0 when batching "
    "conditions); the null condition is y = zeros with the null token alone",
}


_DESIGN_NOTES = {
    "pixels": "",
    "patch2": "; design patch2: x is the 64x64 image, the UNet takes pixel_unshuffle(x, 2) (12 channels) and its "
    "output goes through pixel_shuffle(., 2)",
    "latent": "; design latent: x is the autoencoder's latent (C, 16, 16); images = vae.decode(x / "
    "vae.config.scaling_factor).sample",
}

_TOKENS_ONLY_NOTE = "; no label on the time path (model.label_on_time_path off): no class_labels, no label_embed"

_SELF_NOTE = (
    "; self-conditioning: the UNet's 6 input channels are x_t and the previous step's predicted x0 "
    "(zeros at the first step), the same for the conditional and the null pass"
)


class ExportSettings(Section):
    """Settings of `iclevr export`."""

    checkpoint: Path | None = Field(
        None,
        description="Run folder or .safetensors weights; empty = the newest finished run, else the packaged model.",
    )
    out: Path = Field(..., description="Folder to write (must be new or empty unless overwrite).")
    overwrite: bool = Field(False, description="Replace the exported files in an existing folder.")


def export(settings: ExportSettings) -> Path:
    """Write the diffusers folder for a checkpoint; returns the folder."""
    from iclevr.fileio import atomic_write_text, check_writable
    from iclevr.weights import load_weights, resolve_checkpoint

    model, info = load_weights(resolve_checkpoint(settings.checkpoint))
    out = Path(settings.out)
    if out.exists() and not out.is_dir():
        raise UserError(
            f"--out {out} is a file; export writes a folder (unet/, scheduler/, ...): name a new or empty folder"
        )
    if out.exists() and any(out.iterdir()) and not settings.overwrite:
        raise UserError(f"{out} exists and is not empty; choose a new folder or pass --overwrite")
    check_writable(out)
    _write_tensors(model, info, out)
    atomic_write_text(out / "iclevr.json", json.dumps(_metadata(info), indent=2) + "\n")
    atomic_write_text(
        out / "README.md",
        f"# iclevr export\n\nLoad and sample with plain diffusers:\n\n```python\n{snippet(info, out)}```\n",
    )
    return out


def _write_tensors(model, info, out: Path) -> None:
    """The UNet, the scheduler, the label embedding and (tokens) the object-token table."""
    import torch
    from safetensors.torch import save_file

    from iclevr.fileio import writing
    from iclevr.sampling import SAMPLERS

    with writing(out, "the export"):  # diffusers and safetensors write these files themselves
        model.unet.save_pretrained(out / "unet", safe_serialization=True)
        SAMPLERS["ddpm"].build_scheduler(info.schedule).save_pretrained(out / "scheduler")
        if info.model.label_on_time_path:
            embed = model.label_embed.state_dict()
            save_file({k: v.contiguous() for k, v in embed.items()}, str(out / "label_embed.safetensors"))
        if info.model.design == "latent":
            vae = model.autoencoder.vae
            vae.register_to_config(scaling_factor=model.autoencoder.scale_factor)
            vae.save_pretrained(out / "vae", safe_serialization=True)
        if info.model.condition == "tokens":
            with torch.no_grad():
                table = model.tokens.table().detach().float().contiguous()  # (24, D)
                null = model.tokens.null.detach().float().reshape(-1).contiguous()  # (D,)
            save_file({"table": table, "null": null}, str(out / "object_tokens.safetensors"))


def _metadata(info) -> dict:
    """iclevr.json: what a user of the folder needs besides the tensors."""
    from iclevr.labels import LABELS

    return {
        "labels": list(LABELS),
        "condition": info.model.condition,
        "unet_class": unet_class(info),
        "model": info.model.model_dump(mode="json"),
        "schedule": info.schedule.model_dump(mode="json"),
        "sampler": info.sampler.model_dump(mode="json"),
        "preset": info.preset,
        "step": info.step,
        "source": str(info.path),
        "design": info.model.design,
        "note": _NOTES[info.model.condition]
        + _DESIGN_NOTES[info.model.design]
        + (_SELF_NOTE if info.model.self_condition else "")
        + ("" if info.model.label_on_time_path else _TOKENS_ONLY_NOTE),
    }


def unet_class(info) -> str:
    """The diffusers class of the exported UNet."""
    return "UNet2DConditionModel" if info.model.condition == "tokens" else "UNet2DModel"


def snippet(info, out: Path) -> str:
    """The README's plain-diffusers code; it draws image 0 of `iclevr sample --sampler ddpm` for its condition."""
    from iclevr.generate import with_weights_defaults
    from iclevr.sampling import image_seeds, resolve_steps
    from iclevr.settings import SamplerSettings

    # what `iclevr sample --sampler ddpm` runs: the weights' guidance, their steps if they were stored for ddpm
    ddpm = with_weights_defaults(SamplerSettings(sampler="ddpm"), info.sampler)
    fields = {
        "guidance": ddpm.guidance_scale,
        "seed": image_seeds(ddpm.seed, 1)[0],
        "seed_note": f"image 0 of `iclevr sample --sampler ddpm --seed {ddpm.seed}`",
        "steps": resolve_steps(ddpm, info.schedule),
    }
    m = info.model
    c, h = (
        (m.latent_channels, m.sample_size)
        if m.design == "latent"
        else (3, m.sample_size * (2 if m.design == "patch2" else 1))
    )
    tokens, self_cond, patch = m.condition == "tokens", m.self_condition, m.design == "patch2"
    tokens_calls = _TOKENS_CALLS if m.label_on_time_path else _TOKENS_ONLY_CALLS  # alone: no class_labels
    x = "x_in" if self_cond else "x"
    calls = (tokens_calls if tokens else _POOLED_CALLS).format(x=f"F.pixel_unshuffle({x}, 2)" if patch else x)
    head = _HEAD.format(
        unet_class=unet_class(info), root=json.dumps(str(out.resolve())), emb=_EMB if m.label_on_time_path else ""
    )
    if patch:
        head = head.replace("import torch\n", "import torch\nimport torch.nn.functional as F\n", 1)
    if m.design == "latent":
        head = head.replace("from diffusers import ", "from diffusers import AutoencoderKL, ", 1)
    return (
        head
        + (_TOKENS_SETUP if tokens else "")
        + _LOOP.format(
            calls=(_SELF_INPUT if self_cond else "") + calls,
            x0_init=_SELF_INIT if self_cond else "",
            step=_SELF_STEP if self_cond else _STEP,
            c=c,
            h=h,
            w=h,
            unpatch=_UNPATCH if patch else "",
            decode=_DECODE if m.design == "latent" else "",
            **fields,
        )
    )
