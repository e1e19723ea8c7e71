"""`iclevr export`: a folder plain diffusers can load, so a trained model can leave this tool.

<out>/unet/                     UNet2DModel.from_pretrained(out, subfolder="unet")
<out>/scheduler/                DDPMScheduler.from_pretrained(out, subfolder="scheduler")
<out>/label_embed.safetensors   weight (time_embed_dim, 24) and bias: class_labels = y @ weight.T + bias
<out>/iclevr.json               label order, settings, sampler defaults
<out>/README.md                 a loading and sampling snippet
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import Field

from iclevr.errors import UserError
from iclevr.settings import Section

SNIPPET = '''import torch
from diffusers import DDPMScheduler, UNet2DModel
from safetensors.torch import load_file

unet = UNet2DModel.from_pretrained("{out}", subfolder="unet").eval()
scheduler = DDPMScheduler.from_pretrained("{out}", subfolder="scheduler")
emb = load_file("{out}/label_embed.safetensors")           # weight (D, 24), bias (D,)
labels = {labels_head}  # ... the 24 names in iclevr.json
y = torch.zeros(1, 24); y[0, labels.index("red sphere")] = 1   # multi-hot condition; zeros = unconditional
s, g = {guidance}, torch.Generator().manual_seed(0)            # guidance scale
x = torch.randn(1, 3, {size}, {size}, generator=g)
scheduler.set_timesteps({steps})
with torch.no_grad():
    for t in scheduler.timesteps:
        cond = unet(x, t, class_labels=y @ emb["weight"].T + emb["bias"]).sample
        null = unet(x, t, class_labels=torch.zeros_like(y) @ emb["weight"].T + emb["bias"]).sample
        x = scheduler.step(null + s * (cond - null), t, x, generator=g).prev_sample
image = (x.clamp(-1, 1) + 1) / 2                              # (1, 3, {size}, {size}) in [0, 1]
'''


class ExportSettings(Section):
    """Settings of `iclevr export`."""

    checkpoint: Path | None = Field(None, description="Run folder or .safetensors weights; empty = newest run.")
    out: Path = Field(..., description="Folder to write (must be new or empty unless overwrite).")
    overwrite: bool = Field(False, description="Replace the exported files in an existing folder.")


def export(settings: ExportSettings) -> Path:
    """Write the diffusers folder for a checkpoint; returns the folder."""
    from safetensors.torch import save_file

    from iclevr.weights import load_weights, resolve_checkpoint
    from iclevr.fileio import atomic_write_text, check_writable, writing
    from iclevr.labels import LABELS
    from iclevr.sampling import SAMPLERS, resolve_steps

    model, info = load_weights(resolve_checkpoint(settings.checkpoint))
    out = Path(settings.out)
    if out.exists() and any(out.iterdir()) and not settings.overwrite:
        raise UserError(f"{out} exists and is not empty; choose a new folder or pass --overwrite")
    check_writable(out)
    with writing(out, "the export"):  # diffusers and safetensors write these files themselves
        model.unet.save_pretrained(out / "unet", safe_serialization=True)
        SAMPLERS["ddpm"].build_scheduler(info.schedule).save_pretrained(out / "scheduler")
        embed = model.label_embed.state_dict()
        save_file({k: v.contiguous() for k, v in embed.items()}, str(out / "label_embed.safetensors"))
    meta = {"labels": list(LABELS), "model": info.model.model_dump(mode="json"),
            "schedule": info.schedule.model_dump(mode="json"), "sampler": info.sampler.model_dump(mode="json"),
            "preset": info.preset, "step": info.step, "source": str(info.path),
            "note": "class_labels = multi_hot(24) @ weight.T + bias; the null condition is all zeros"}
    atomic_write_text(out / "iclevr.json", json.dumps(meta, indent=2) + "\n")
    steps = resolve_steps(info.sampler.model_copy(update={"sampler": "ddpm", "steps": None}), info.schedule)
    code = SNIPPET.format(out=out, labels_head=json.dumps(list(LABELS[:3]))[:-1] + ", ...]",
                          guidance=info.sampler.guidance_scale, size=info.model.sample_size, steps=steps)
    code = code.replace('labels = ["gray cube", "red cube", "blue cube", ...]',
                        f'labels = __import__("json").load(open("{out}/iclevr.json"))["labels"]')
    atomic_write_text(out / "README.md", "# iclevr export\n\nLoad and sample with plain diffusers:\n\n"
                      f"```python\n{code}```\n")
    return out
