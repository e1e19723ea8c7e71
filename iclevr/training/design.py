"""What a training run feeds its UNet, by model.design, and where a run starts from (--init-from).

- pixels: the kit's images at sample_size (uint8, decoded once and cached; iclevr.data.course).
- patch2: the kit's images at 2 x sample_size; the model cuts them into 2x2 patches itself (iclevr.model).
- latent: the kit's images at the autoencoder's resolution, encoded once into scaled posterior means
  (float16, cached on disk beside the image cache, keyed by the image cache and the autoencoder's SHA-256).
  The autoencoder is copied into the run folder (RUN/autoencoder.safetensors) and its hash recorded in the model
  settings, so the run's weights always find the one they were trained with.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from iclevr.errors import UserError
from iclevr.settings import TrainSettings


def prepare_autoencoder(settings: TrainSettings, run: Path, console) -> TrainSettings:
    """latent: copy the chosen autoencoder into the run folder and record its hash and latent grid in the
    model settings (a course kit never gets the packaged autoencoder silently); other designs: unchanged."""
    from iclevr.autoencoder import FILE_NAME, read_meta, resolve_autoencoder_file
    from iclevr.data.synth import is_embedded_kit
    from iclevr.fileio import file_sha256

    if settings.model.design != "latent":
        return settings
    if (
        settings.autoencoder in (None, "", "packaged")
        and (run / FILE_NAME).is_file()
        and settings.model.autoencoder_sha256 == file_sha256(run / FILE_NAME)
    ):
        source = run / FILE_NAME  # a resumed run keeps its own copy
    else:
        source = resolve_autoencoder_file(settings.autoencoder)
    cfg, _, info = read_meta(source)
    if not is_embedded_kit(settings.data.data_dir) and info.get("embedded", False):
        raise UserError(
            f"the autoencoder {source} was trained on the embedded kit, not on {settings.data.data_dir}; "
            f"train one on your kit with `iclevr autoencoder train --data-dir {settings.data.data_dir}` "
            "and pass it with --autoencoder RUN"
        )
    from iclevr.images import OUTPUT_SIZE

    if cfg.resolution != OUTPUT_SIZE:
        raise UserError(
            f"the autoencoder {source} is for {cfg.resolution}x{cfg.resolution} images; the latent "
            f"design draws the course's {OUTPUT_SIZE}x{OUTPUT_SIZE} (train one with the default "
            "--resolution)"
        )
    if cfg.latent_size != settings.model.sample_size:
        raise UserError(
            f"the autoencoder {source} makes {cfg.latent_size}x{cfg.latent_size} latents from "
            f"{cfg.resolution}x{cfg.resolution} images; set model.sample_size = {cfg.latent_size}"
        )
    sha = file_sha256(source)
    if settings.model.autoencoder_sha256 not in (None, sha):
        raise UserError(
            f"this run was trained with another autoencoder (sha256 "
            f"{settings.model.autoencoder_sha256[:12]}) than {source} ({sha[:12]})"
        )
    target = run / FILE_NAME
    if not target.is_file() or file_sha256(target) != sha:
        from iclevr.fileio import atomic_path

        with atomic_path(target, size=source.stat().st_size, what="autoencoder copy") as tmp:
            shutil.copyfile(source, tmp)
    console.print(
        f"latent design: autoencoder {source} ({info.get('data', 'unknown data')}, "
        f"{info.get('steps', '?')} steps, held-out PSNR {info.get('psnr_db', '?')} dB) -> {target}"
    )
    model = settings.model.model_copy(update={"autoencoder_sha256": sha, "latent_channels": cfg.latent_channels})
    return settings.model_copy(update={"model": model})


def training_tensors(kit, settings: TrainSettings, run: Path, console=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(x0 source, labels (N, 24)): uint8 images (N, 3, R, R) for pixels/patch2, float16 scaled latents
    (N, C, S, S) for latent (encoded once, cached)."""
    from iclevr.data.course import load_train_tensors

    cfg = settings.model
    if cfg.design == "pixels":
        return load_train_tensors(kit, cfg.sample_size, settings.data.cache)
    if cfg.design == "patch2":
        return load_train_tensors(kit, 2 * cfg.sample_size, settings.data.cache)
    return _latents(kit, settings, run, console)


def _latents(kit, settings: TrainSettings, run: Path, console) -> tuple[torch.Tensor, torch.Tensor]:
    """The kit's training images as scaled latents of the run's autoencoder, cached as float16."""
    from safetensors.torch import load_file, save_file

    from iclevr.autoencoder import FILE_NAME, load_autoencoder
    from iclevr.data.course import cache_dir_for, cache_key, load_train_tensors, to_model_range
    from iclevr.fileio import atomic_path

    ae = load_autoencoder(run / FILE_NAME)
    sha = settings.model.autoencoder_sha256 or ae.sha256
    path = cache_dir_for(kit) / f"latents-{cache_key(kit, ae.cfg.resolution)}-{sha[:16]}.safetensors"
    if settings.data.cache and path.is_file():
        try:
            t = load_file(str(path))
            return t["latents"], t["labels"]
        except Exception:  # noqa: BLE001 - a damaged cache is rebuilt
            path.unlink(missing_ok=True)
    images_u8, labels = load_train_tensors(kit, ae.cfg.resolution, settings.data.cache)
    if console is not None:
        console.print(
            f"[dim]encoding {len(images_u8):,} training images into latents (once; cached in {path.parent})[/]"
        )
    latents = torch.cat(
        [ae.encode(to_model_range(images_u8[i : i + 256])).to(torch.float16) for i in range(0, len(images_u8), 256)]
    )  # (N, C, S, S)
    if settings.data.cache:
        with atomic_path(path) as tmp:
            save_file({"latents": latents.contiguous(), "labels": labels}, str(tmp))
    return latents, labels


def x0_batch(source: torch.Tensor, idx: torch.Tensor, device) -> torch.Tensor:
    """One batch of x0 in the space the model denoises: images in [-1, 1], or latents, as float32."""
    from iclevr.data.course import to_model_range

    batch = source[idx].to(device)
    return to_model_range(batch) if batch.dtype == torch.uint8 else batch.float()


def init_weights(model, settings: TrainSettings, console) -> None:
    """--init-from: load existing weights of the same architecture into `model` (the optimizer starts fresh)."""
    from iclevr.paths import packaged_model_path
    from iclevr.weights import _for_model, read_info, resolve_checkpoint

    value = settings.init_from
    path = packaged_model_path() if value == "packaged" else resolve_checkpoint(Path(value))
    if value == "packaged" and not path.is_file():
        raise UserError("--init-from packaged: this install has no packaged model")
    info = read_info(path)
    mine, theirs = settings.model.model_dump(), info.model.model_dump()
    differ = [k for k in mine if mine[k] != theirs.get(k)]
    if differ:
        raise UserError(
            f"--init-from {value}: {path} holds a model of another architecture (differs in "
            f"model.{', model.'.join(differ)}); use weights trained with the same model settings"
        )
    from safetensors.torch import load_file

    try:
        model.load_state_dict(_for_model(load_file(str(path))))
    except Exception:  # noqa: BLE001 - truncated or foreign tensors
        raise UserError(f"--init-from {value}: the tensors of {path} cannot be loaded into this model") from None
    console.print(f"initialised from {path} (step {info.step:,}); the optimizer starts fresh")
