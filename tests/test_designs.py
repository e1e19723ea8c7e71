"""Native 64x64 designs (issue 26): 2x2 patches, the shifted schedule, latents through an autoencoder, the
autoencoder's training and file, and --init-from."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from conftest import TINY_MODEL
from typer.testing import CliRunner

from iclevr.cli.app import app
from iclevr.settings import ModelSettings, SamplerSettings, ScheduleSettings

runner = CliRunner()
pytestmark = pytest.mark.usefixtures("one_thread")
TINY_AE = {"block_out_channels": [8, 8, 8], "norm_num_groups": 8, "latent_channels": 4}  # 64x64 -> 16x16


def flat(text: str) -> str:
    return " ".join(text.split())


def test_patch2_sees_twice_the_resolution_through_2x2_patches():
    from iclevr.model import build_model

    model = build_model(ModelSettings(**TINY_MODEL, design="patch2"))
    assert model.x_shape == (3, 32, 32)
    assert model.unet.config.in_channels == 12 and model.unet.config.out_channels == 12
    x = torch.randn(2, 3, 32, 32)
    out = model(x, torch.tensor([10, 500]), torch.zeros(2, 24))
    assert out.shape == (2, 3, 32, 32)
    # the patches are the image's 2x2 blocks: pixel-unshuffle then pixel-shuffle is the identity
    assert torch.equal(model.from_unet(model.to_unet(x)), x)
    assert torch.equal(model.to_unet(x)[0, :4, 0, 0], x[0, 0, :2, :2].flatten())


def test_shifted_schedule_is_noisier_by_exactly_the_shift_in_log_snr():
    from iclevr.schedules import alpha_bar, betas_from_alpha_bar, make_scheduler, shift_alpha_bar

    ab = alpha_bar("squaredcos_cap_v2", 1000)
    shifted = shift_alpha_bar(ab, 2.0)
    logsnr = lambda a: torch.log(a) - torch.log1p(-a)  # noqa: E731
    assert torch.allclose(
        logsnr(ab[:900]) - logsnr(shifted[:900]), torch.full((900,), 2 * math.log(2.0), dtype=torch.float64)
    )
    assert torch.allclose(torch.cumprod(1 - betas_from_alpha_bar(shifted), 0)[:900], shifted[:900])
    sched = make_scheduler(ScheduleSettings(prediction_type="v_prediction", shift=2.0))
    assert sched.alphas_cumprod[500] == pytest.approx(float(shifted[500]), rel=1e-5)
    assert sched.alphas_cumprod[500] < make_scheduler(ScheduleSettings()).alphas_cumprod[500]  # noisier
    assert float(shifted[500]) == pytest.approx(float(ab[500]) / (float(ab[500]) + 4 * (1 - float(ab[500]))))


def _train_autoencoder(tmp_path: Path, course_kit: Path, steps: int = 3) -> Path:
    run = tmp_path / "ae"
    cfg = tmp_path / "ae.json"
    cfg.write_text(json.dumps({"model": TINY_AE, "batch_size": 4, "heldout": 50, "log_every": 1}))
    # 12 training images in the kit fixture are too few for 50 held out: make a bigger kit
    r = runner.invoke(
        app,
        [
            "autoencoder",
            "train",
            "--config",
            str(cfg),
            "--data-dir",
            str(course_kit),
            "--out",
            str(run),
            "--max-steps",
            str(steps),
            "--device",
            "cpu",
        ],
    )
    assert r.exit_code == 0, r.output
    return run


@pytest.fixture
def big_kit(tmp_path):
    from conftest import write_course_kit

    return write_course_kit(tmp_path / "bigkit", scenes=24)  # 72 images


def test_autoencoder_train_writes_its_file_and_resumes(tmp_path, big_kit):
    from iclevr.autoencoder import load_autoencoder, read_meta

    run = _train_autoencoder(tmp_path, big_kit)
    cfg, scale, info = read_meta(run / "autoencoder.safetensors")
    assert cfg.latent_size == 16 and scale > 0 and info["steps"] == 3 and info["embedded"] is False
    assert 0 < info["psnr_db"] < 60 and info["data"] == "course kit"
    report = json.loads((run / "report.json").read_text())
    assert report["psnr_db"] == info["psnr_db"]
    assert [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]
    ae = load_autoencoder(run / "autoencoder.safetensors")
    z = ae.encode(torch.zeros(2, 3, 64, 64))
    assert z.shape == (2, 4, 16, 16) and ae.decode(z).shape == (2, 3, 64, 64)
    # a second train into the same folder is refused; --resume continues to a larger budget
    r = runner.invoke(
        app,
        ["autoencoder", "train", "--out", str(run), "--max-steps", "5", "--device", "cpu", "--data-dir", str(big_kit)],
    )
    assert r.exit_code == 2 and "already holds an autoencoder run" in flat(r.output)
    r = runner.invoke(app, ["autoencoder", "train", "--resume", str(run), "--max-steps", "5", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert read_meta(run / "autoencoder.safetensors")[2]["steps"] == 5
    r = runner.invoke(app, ["autoencoder", "train", "--resume", str(tmp_path / "nothing"), "--max-steps", "5"])
    assert r.exit_code == 2 and "nothing to resume" in flat(r.output)


def _latent_config(tmp_path: Path) -> Path:
    model = {
        **TINY_MODEL,
        "design": "latent",
        "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"],
        "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"],
        "condition": "tokens",
    }
    cfg = tmp_path / "latent.json"
    cfg.write_text(
        json.dumps(
            {
                "model": model,
                "sampler": {"sampler": "ddim", "steps": 3},
                "train": {"log_every": 2, "lr": 1e-3, "batch_size": 4},
            }
        )
    )
    return cfg


def test_latent_model_trains_on_cached_latents_samples_decoded_images_and_refuses_a_missing_autoencoder(
    tmp_path, big_kit
):
    from iclevr.fileio import file_sha256
    from iclevr.generate import SampleSettings, run_sample
    from iclevr.weights import load_weights

    ae_run = _train_autoencoder(tmp_path, big_kit)
    run = tmp_path / "latent"
    args = [
        "train",
        "--config",
        str(_latent_config(tmp_path)),
        "--data-dir",
        str(big_kit),
        "--out",
        str(run),
        "--max-steps",
        "2",
        "--device",
        "cpu",
        "--autoencoder",
        str(ae_run),
        "--sample-grids",
        "off",
    ]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    assert "latent design: autoencoder" in flat(r.output)
    settings = json.loads((run / "settings.json").read_text())
    sha = file_sha256(ae_run / "autoencoder.safetensors")
    assert settings["model"]["autoencoder_sha256"] == sha == file_sha256(run / "autoencoder.safetensors")
    assert list((big_kit / ".iclevr-cache").glob(f"latents-*-{sha[:16]}.safetensors"))
    model, info = load_weights(run / "weights" / "ema.safetensors")
    assert model.autoencoder is not None and "autoencoder" not in json.dumps(list(model.state_dict()))
    out = run_sample(SampleSettings(checkpoint=run, labels=[["red sphere"], ["cyan cube"]], out=tmp_path / "g.png"))
    assert out["images"] == 2
    from PIL import Image

    assert Image.open(tmp_path / "g.png").size == (2 * 64 + 3 * 2, 64 + 2 * 2)  # decoded at 64, not resized
    same = run_sample(SampleSettings(checkpoint=run, labels=[["red sphere"], ["cyan cube"]], out=tmp_path / "h.png"))
    assert same["images"] == 2 and (tmp_path / "g.png").read_bytes() == (tmp_path / "h.png").read_bytes()
    # the autoencoder gone, or replaced by another: one line, exit 2
    (run / "autoencoder.safetensors").unlink()
    r = runner.invoke(
        app, ["sample", "--checkpoint", str(run), "--labels", "red sphere", "--out", str(tmp_path / "x.png")]
    )
    assert r.exit_code == 2 and "autoencoder (sha256" in flat(r.output) and "is missing" in flat(r.output)
    assert not (tmp_path / "x.png").exists()


def test_latent_training_refuses_the_embedded_autoencoder_for_a_course_kit_and_a_wrong_grid(tmp_path, big_kit):
    ae_run = _train_autoencoder(tmp_path, big_kit)
    from iclevr.autoencoder import load_autoencoder, save_autoencoder

    ae = load_autoencoder(ae_run / "autoencoder.safetensors")
    embedded = tmp_path / "embedded.safetensors"
    save_autoencoder(ae.vae, embedded, ae.cfg, ae.scale_factor, {**ae.info, "embedded": True})
    base = [
        "train",
        "--config",
        str(_latent_config(tmp_path)),
        "--data-dir",
        str(big_kit),
        "--max-steps",
        "1",
        "--device",
        "cpu",
    ]
    r = runner.invoke(app, base + ["--out", str(tmp_path / "r1"), "--autoencoder", str(embedded)])
    assert r.exit_code == 2 and "trained on the embedded kit" in flat(r.output)
    assert "iclevr autoencoder train --data-dir" in flat(r.output)
    cfg = json.loads(_latent_config(tmp_path).read_text())
    cfg["model"]["sample_size"] = 8
    (tmp_path / "c4.json").write_text(json.dumps(cfg))
    r = runner.invoke(
        app,
        [
            "train",
            "--config",
            str(tmp_path / "c4.json"),
            "--data-dir",
            str(big_kit),
            "--max-steps",
            "1",
            "--device",
            "cpu",
            "--out",
            str(tmp_path / "r2"),
            "--autoencoder",
            str(ae_run),
        ],
    )
    assert r.exit_code == 2 and "makes 16x16 latents" in flat(r.output)
    small = tmp_path / "small.safetensors"  # an autoencoder of another resolution
    save_autoencoder(ae.vae, small, ae.cfg.model_copy(update={"resolution": 32}), ae.scale_factor, ae.info)
    r = runner.invoke(app, base + ["--out", str(tmp_path / "r4"), "--autoencoder", str(small)])
    assert r.exit_code == 2 and "is for 32x32 images" in flat(r.output) and not (tmp_path / "r4" / "weights").exists()
    r = runner.invoke(app, base + ["--out", str(tmp_path / "r3"), "--autoencoder", str(tmp_path / "none")])
    assert r.exit_code == 2 and "autoencoder not found" in flat(r.output)


def test_init_from_starts_from_weights_of_the_same_architecture_only(tmp_path, course_kit):
    from safetensors.torch import load_file

    cfg = tmp_path / "c.json"
    cfg.write_text(
        json.dumps(
            {
                "preset": "tiny",
                "model": TINY_MODEL,
                "train": {"batch_size": 4, "lr": 1e-3},
                "sampler": {"sampler": "ddim", "steps": 2},
            }
        )
    )
    base = ["train", "--config", str(cfg), "--data-dir", str(course_kit), "--device", "cpu", "--sample-grids", "off"]
    assert runner.invoke(app, base + ["--out", str(tmp_path / "a"), "--max-steps", "2", "--seed", "1"]).exit_code == 0
    r = runner.invoke(
        app, base + ["--out", str(tmp_path / "b"), "--max-steps", "1", "--init-from", str(tmp_path / "a")]
    )
    assert r.exit_code == 0, r.output
    assert "initialised from" in flat(r.output) and "optimizer starts fresh" in flat(r.output)
    # one step of lr 1e-3 from a's weights (seed 1): b (seed 0) is close to a; a fresh seed-0 start is not
    a = load_file(str(tmp_path / "a" / "weights" / "model.safetensors"))
    b = load_file(str(tmp_path / "b" / "weights" / "model.safetensors"))
    assert runner.invoke(app, base + ["--out", str(tmp_path / "c"), "--max-steps", "1"]).exit_code == 0
    c = load_file(str(tmp_path / "c" / "weights" / "model.safetensors"))
    key = "unet.conv_in.weight"
    assert (b[key] - a[key]).abs().max() < 0.01 < (c[key] - a[key]).abs().max()
    other = {**json.loads(cfg.read_text()), "model": {**TINY_MODEL, "block_out_channels": [8, 16]}}
    cfg.write_text(json.dumps(other))
    r = runner.invoke(
        app, base + ["--out", str(tmp_path / "d"), "--max-steps", "1", "--init-from", str(tmp_path / "a")]
    )
    assert r.exit_code == 2 and "another architecture" in flat(r.output) and "block_out_channels" in flat(r.output)
    assert not (tmp_path / "d" / "weights").exists()


def test_patch2_samples_at_64_without_resizing(tmp_path):
    from iclevr.model import build_model
    from iclevr.sampling import sample

    torch.manual_seed(0)
    model = build_model(ModelSettings(**TINY_MODEL, design="patch2")).eval()
    x = sample(
        model,
        torch.zeros(2, 24),
        schedule=ScheduleSettings(shift=2.0),
        sampler=SamplerSettings(sampler="ddim", steps=2),
    )
    assert x.shape == (2, 3, 32, 32) and x.abs().max() <= 1


def test_latents_are_never_clipped_to_the_pixel_range():
    """clip_x0 bounds pixels to [-1, 1]; a latent model's x0 has unit variance and would lose its colours."""
    from iclevr.model import build_model
    from iclevr.sampling import clips_x0, sample

    torch.manual_seed(0)
    cfg = ModelSettings(**TINY_MODEL, design="latent", autoencoder_sha256="0" * 64)
    model = build_model(cfg).eval()
    model.attach_autoencoder(type("Identity", (), {"decode": staticmethod(lambda z: z[:, :3])})())
    with torch.no_grad():
        model.unet.conv_out.bias.fill_(-3.0)  # a prediction far outside [-1, 1]
    kw = dict(schedule=ScheduleSettings(), device="cpu")
    clipped = sample(model, torch.zeros(2, 24), sampler=SamplerSettings(sampler="ddim", steps=3), **kw)
    free = sample(model, torch.zeros(2, 24), sampler=SamplerSettings(sampler="ddim", steps=3, clip_x0=False), **kw)
    assert not clips_x0(model) and clips_x0(build_model(ModelSettings(**TINY_MODEL)))
    assert torch.equal(clipped, free)


def test_the_packaged_autoencoder_serves_the_embedded_kit_named_by_its_path_but_not_a_course_kit(tmp_path):
    """`iclevr demo` passes the embedded kit as a path under $ICLEVR_HOME/kits: the CPU preset must take the
    packaged autoencoder there (a fresh demo once stopped here), and still refuse it for a course kit."""
    from rich.console import Console

    from iclevr.autoencoder import PACKAGED
    from iclevr.data.synth import embedded_kit_dir
    from iclevr.errors import UserError
    from iclevr.fileio import file_sha256
    from iclevr.settings import CPU_PRESET, TrainSettings, resolve
    from iclevr.training.design import prepare_autoencoder

    def prepared(data_dir, run):
        settings = resolve(TrainSettings, preset=CPU_PRESET, overrides={"data.data_dir": str(data_dir)})
        return prepare_autoencoder(settings, run, Console(quiet=True))

    settings = prepared(embedded_kit_dir("default-v1"), tmp_path / "demo-run")
    assert settings.model.design == "latent" and settings.model.autoencoder_sha256 == file_sha256(PACKAGED)
    assert file_sha256(tmp_path / "demo-run" / "autoencoder.safetensors") == file_sha256(PACKAGED)
    with pytest.raises(UserError, match="trained on the embedded kit"):
        prepared(tmp_path / "course-kit", tmp_path / "course-run")
