"""The autoencoder of the latent design (Rombach et al. 2022, "High-Resolution Image Synthesis with Latent
Diffusion Models"): diffusers' AutoencoderKL, its file format, and where a latent model finds its autoencoder.

x0 (B, 3, 64, 64) in [-1, 1]  --encode-->  z (B, 4, 16, 16) = scale_factor * posterior mean  --decode-->  x0
The downsampling factor is f = 2^(levels - 1) (4 with three levels). `scale_factor` = 1 / std of the posterior
means over held-out images (LDM, section G), so the diffusion model sees latents of unit variance.

File: `*.safetensors` holding the AutoencoderKL state_dict (float32, or float16 when packaged), metadata
`format` = "iclevr-autoencoder", `model` (AutoencoderSettings JSON), `scale_factor`, and a JSON `info` (which
data it was trained on, steps, held-out PSNR and KID). A latent model's weights record the SHA-256 of the
autoencoder file they were trained with (ModelSettings.autoencoder_sha256); `find_autoencoder` looks for a
file with that hash beside the weights, in their run folder and in the package, and never takes another one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import Field

from iclevr.errors import UserError
from iclevr.settings import Section

FORMAT = "iclevr-autoencoder"
FILE_NAME = "autoencoder.safetensors"  # its name inside a run folder (and the package's assets)
PACKAGED = Path(__file__).resolve().parent / "assets" / FILE_NAME


class AutoencoderSettings(Section):
    """The AutoencoderKL architecture (diffusers), at the course's 64x64."""

    resolution: int = Field(64, gt=0, description="Image size it encodes and decodes (the course's 64x64).")
    block_out_channels: tuple[int, ...] = Field(
        (16, 32, 64),
        description="Channels per encoder/decoder level; f = 2^(levels - 1) (three levels: 64x64 -> 16x16).",
    )
    layers_per_block: int = Field(1, ge=1, description="ResNet layers per encoder block (decoder: one more).")
    latent_channels: int = Field(4, gt=0, description="Channels of the latent z.")
    norm_num_groups: int = Field(8, gt=0, description="GroupNorm groups (must divide every channel count).")
    mid_attention: bool = Field(
        False, description="Self-attention in the middle blocks (off: 30 % faster on a CPU at this size)."
    )

    @property
    def factor(self) -> int:
        """Downsampling factor f: the latent is resolution / f on a side."""
        return 2 ** (len(self.block_out_channels) - 1)

    @property
    def latent_size(self) -> int:
        """Side of the latent grid."""
        return self.resolution // self.factor


@dataclass
class Autoencoder:
    """A loaded autoencoder: the diffusers module (eval mode), its settings, scale factor, file and hash."""

    vae: object
    cfg: AutoencoderSettings
    scale_factor: float
    path: Path | None = None
    sha256: str = ""
    info: dict = field(default_factory=dict)

    def encode(self, x0):
        """Images (B, 3, R, R) in [-1, 1] -> scaled latents (B, C, R/f, R/f): the posterior mean."""
        import torch

        with torch.inference_mode():
            return self.vae.encode(x0.to(self.device)).latent_dist.mean * self.scale_factor

    def decode(self, z):
        """Scaled latents (B, C, r, r) -> images (B, 3, R, R) in [-1, 1] (float32, on z's device)."""
        import torch

        with torch.inference_mode():
            x = self.vae.decode(z.to(self.device, torch.float32) / self.scale_factor).sample
        return x.clamp(-1, 1).to(z.device)

    @property
    def device(self):
        """The device the module lives on."""
        return next(self.vae.parameters()).device


def build_autoencoder(cfg: AutoencoderSettings):
    """A fresh diffusers AutoencoderKL of these settings (random weights); clear error for bad settings."""
    from diffusers import AutoencoderKL

    n = len(cfg.block_out_channels)
    if any(c % cfg.norm_num_groups for c in cfg.block_out_channels):
        raise UserError(
            f"autoencoder: norm_num_groups={cfg.norm_num_groups} must divide every "
            f"block_out_channels value {tuple(cfg.block_out_channels)}"
        )
    if cfg.resolution % cfg.factor:
        raise UserError(f"autoencoder: resolution {cfg.resolution} is not divisible by its factor {cfg.factor}")
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=tuple(cfg.block_out_channels),
        layers_per_block=cfg.layers_per_block,
        latent_channels=cfg.latent_channels,
        norm_num_groups=cfg.norm_num_groups,
        sample_size=cfg.resolution,
        mid_block_add_attention=cfg.mid_attention,
    )


def save_autoencoder(
    vae, path: Path, cfg: AutoencoderSettings, scale_factor: float, info: dict, half: bool = False
) -> Path:
    """Write an AutoencoderKL as our safetensors file (atomic); `half` stores float16 (for the package)."""
    import torch
    from safetensors.torch import save_file

    from iclevr.fileio import atomic_path

    state = {
        k: (v.detach().cpu().to(torch.float16) if half and v.is_floating_point() else v.detach().cpu()).contiguous()
        for k, v in vae.state_dict().items()
    }
    meta = {
        "format": FORMAT,
        "model": cfg.model_dump_json(),
        "scale_factor": repr(float(scale_factor)),
        "info": json.dumps(info),
    }
    with atomic_path(Path(path), size=sum(v.nbytes for v in state.values()), what="autoencoder") as tmp:
        save_file(state, str(tmp), metadata=meta)
    return Path(path)


def read_meta(path: Path) -> tuple[AutoencoderSettings, float, dict]:
    """(settings, scale factor, info) of an autoencoder file, with one clear error for anything else."""
    from pydantic import ValidationError
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise UserError(f"autoencoder not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception:  # noqa: BLE001 - safetensors raises several types for foreign/truncated files
        raise UserError(f"{path} is not a readable safetensors file (truncated, or another format)") from None
    if meta.get("format") != FORMAT:
        kind = "iclevr diffusion weights" if meta.get("format") == "iclevr-unet" else "not an iclevr autoencoder"
        raise UserError(f"{path} is {kind}; expected an autoencoder written by `iclevr autoencoder train`")
    try:
        return (
            AutoencoderSettings.model_validate_json(meta["model"]),
            float(meta["scale_factor"]),
            json.loads(meta.get("info", "{}")),
        )
    except (KeyError, ValueError, ValidationError) as e:
        raise UserError(f"{path} has damaged autoencoder metadata ({type(e).__name__})") from None


def load_autoencoder(path: Path, device="cpu") -> Autoencoder:
    """Load one of our autoencoder files (float32, eval mode) on `device`."""
    from safetensors.torch import load_file

    from iclevr.fileio import file_sha256

    cfg, scale, info = read_meta(path)
    vae = build_autoencoder(cfg)
    try:
        state = {k: v.float() if v.is_floating_point() else v for k, v in load_file(str(path)).items()}
        vae.load_state_dict(state)
    except Exception:  # noqa: BLE001 - truncated tensors, or tensors of another architecture
        raise UserError(
            f"{path} is damaged or does not match its own settings (its tensors cannot be loaded)"
        ) from None
    vae.requires_grad_(False)
    return Autoencoder(vae.to(device).eval(), cfg, scale, Path(path), file_sha256(Path(path)), info)


def candidates(weights: Path) -> list[Path]:
    """Where a latent model's autoencoder may be: beside its weights file, in its run folder, in the package."""
    weights = Path(weights)
    found = [weights.parent / FILE_NAME, weights.parent.parent / FILE_NAME, PACKAGED]
    return list(dict.fromkeys(p for p in found if p.is_file()))


def find_autoencoder(weights: Path, sha256: str, device="cpu") -> Autoencoder:
    """The autoencoder whose file hash is `sha256`, found beside `weights` (one line naming what was seen)."""
    from iclevr.fileio import file_sha256

    seen = candidates(weights)
    for path in seen:
        if file_sha256(path) == sha256:
            return load_autoencoder(path, device)
    where = ", ".join(str(p) for p in seen) or "none found"
    raise UserError(
        f"{weights} is a latent model whose autoencoder (sha256 {sha256[:12]}) is missing: "
        f"looked beside it, in its run folder and in the package ({where}; none matches); put the "
        f"autoencoder it was trained with next to it as {FILE_NAME}"
    )


def resolve_autoencoder_file(value: str | Path | None) -> Path:
    """The autoencoder file a latent training run uses: a path, or empty / 'packaged' for the packaged one."""
    if value in (None, "", "packaged"):
        if not PACKAGED.is_file():
            raise UserError(
                "no packaged autoencoder in this install; train one with `iclevr autoencoder "
                "train` and pass it with --autoencoder PATH"
            )
        return PACKAGED
    path = Path(value)
    if path.is_dir():
        path = path / FILE_NAME
    read_meta(path)  # one clear line for a missing or foreign file
    return path
