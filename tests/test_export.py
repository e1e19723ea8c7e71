"""`iclevr export`: plain diffusers loads the folder and reproduces our sampler for the same seed."""

import json

import pytest
import torch
from typer.testing import CliRunner

from iclevr.cli.app import app

runner = CliRunner()


@pytest.mark.parametrize("shift, prediction", [("default", "epsilon"), ("scale_shift", "v_prediction")])
def test_export_loads_in_plain_diffusers_and_reproduces_our_samples(tmp_path, tiny_model_cfg, shift, prediction):
    from diffusers import DDPMScheduler, UNet2DModel
    from safetensors.torch import load_file

    from iclevr.weights import load_weights, save_weights
    from iclevr.labels import LABELS, encode
    from iclevr.model import build_model
    from iclevr.sampling import image_seeds, sample
    from iclevr.settings import SamplerSettings, ScheduleSettings

    cfg = tiny_model_cfg.model_copy(update={"resnet_time_scale_shift": shift})  # the tiny preset: scale_shift, v
    torch.manual_seed(0)
    weights = save_weights(build_model(cfg), tmp_path / "w.safetensors", model_cfg=cfg,
                           schedule_cfg=ScheduleSettings(prediction_type=prediction), sampler_cfg=SamplerSettings(),
                           preset="test")
    out = tmp_path / "export"
    r = runner.invoke(app, ["export", "--checkpoint", str(weights), "--out", str(out)])
    assert r.exit_code == 0, r.stdout + r.stderr
    for name in ("unet/config.json", "scheduler/scheduler_config.json", "label_embed.safetensors",
                 "iclevr.json", "README.md"):
        assert (out / name).is_file(), name
    assert json.loads((out / "iclevr.json").read_text())["labels"] == list(LABELS)

    # plain diffusers, as in the exported README snippet: two passes per step, one generator
    unet = UNet2DModel.from_pretrained(out, subfolder="unet").eval()
    scheduler = DDPMScheduler.from_pretrained(out, subfolder="scheduler")
    emb = load_file(str(out / "label_embed.safetensors"))
    y = encode("red sphere, cyan cube")[None]
    s, steps = 2.0, 6
    g = torch.Generator().manual_seed(image_seeds(0, 1)[0])
    x = torch.randn(1, 3, 16, 16, generator=g)
    scheduler.set_timesteps(steps)
    with torch.no_grad():
        for t in scheduler.timesteps:
            cond = unet(x, t, class_labels=y @ emb["weight"].T + emb["bias"]).sample
            null = unet(x, t, class_labels=torch.zeros_like(y) @ emb["weight"].T + emb["bias"]).sample
            x = scheduler.step(null + s * (cond - null), t, x, generator=g).prev_sample
    plain = x.clamp(-1, 1)

    model, info = load_weights(weights)
    ours = sample(model, y, schedule=info.schedule,
                  sampler=SamplerSettings(sampler="ddpm", steps=steps, guidance_scale=s, seed=0))
    # equal up to fp32 round-off: at t=999 alpha_bar ~ 2e-9, so re-deriving the clipped x0 from eps costs ~1e-3
    diff = (plain - ours).abs()
    assert diff.max() < 5e-3 and diff.mean() < 2e-4, (diff.max(), diff.mean())


def test_export_refuses_to_overwrite(tmp_path, tiny_model_cfg):
    from iclevr.weights import save_weights
    from iclevr.model import build_model
    from iclevr.settings import ScheduleSettings

    weights = save_weights(build_model(tiny_model_cfg), tmp_path / "w.safetensors", model_cfg=tiny_model_cfg,
                           schedule_cfg=ScheduleSettings())
    out = tmp_path / "taken"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    r = runner.invoke(app, ["export", "--checkpoint", str(weights), "--out", str(out)])
    assert r.exit_code == 2 and "--overwrite" in r.stderr
    assert (out / "mine.txt").read_text() == "keep"
