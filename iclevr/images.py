"""Images in and out: model-range tensors to uint8 and PIL, PNG files, grids, and the course's 64x64 size.

Model range is float in [-1, 1] (ToTensor + Normalize(0.5, 0.5)); uint8 is [0, 255]. Tensors are
(B, 3, H, W) or one image (3, H, W).
"""

from __future__ import annotations

from pathlib import Path

import torch

OUTPUT_SIZE = 64  # the course's image size: outputs are resized to 64x64 when the model runs lower


def to_output_size(x: torch.Tensor, size: int = OUTPUT_SIZE) -> torch.Tensor:
    """Bilinear resize of (B, 3, S, S) to (B, 3, size, size) when the model runs at another resolution."""
    import torch.nn.functional as F

    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    # antialias only when shrinking: a downscale needs the low-pass filter, an upscale does not
    return F.interpolate(
        x.float(), size=(size, size), mode="bilinear", align_corners=False, antialias=x.shape[-1] > size
    ).clamp(-1, 1)


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] -> uint8 in [0, 255], same shape (4x smaller to keep); uint8 input is returned as is."""
    if x.dtype == torch.uint8:
        return x
    return ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def to_pil(x: torch.Tensor):
    """One image (3, H, W), float in [-1, 1] or uint8 -> PIL RGB image."""
    from PIL import Image

    return Image.fromarray(to_uint8(x).permute(1, 2, 0).numpy())


def save_png(image, path: Path) -> Path:
    """Save a PIL image as PNG atomically."""
    from iclevr.fileio import atomic_path

    with atomic_path(Path(path)) as tmp:
        image.save(tmp, format="PNG")
    return Path(path)


def save_grid(x: torch.Tensor, path: Path, nrow: int = 8) -> Path:
    """Save images (B, 3, H, W) (float in [-1, 1] or uint8) as one PNG grid (nrow per row, black padding, atomic)."""
    from torchvision.utils import make_grid

    grid = make_grid(to_uint8(x), nrow=nrow, padding=2, pad_value=0)  # (3, H', W') uint8
    return save_png(to_pil(grid), path)


def save_images(x: torch.Tensor, folder: Path, first: int = 0) -> list[Path]:
    """Save each image of (B, 3, H, W) as folder/<first>.png, <first + 1>.png, ... (numbered in order)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    return [save_png(to_pil(img), folder / f"{first + i}.png") for i, img in enumerate(x)]
