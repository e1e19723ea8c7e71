"""Fidelity beside accuracy: KID and FD between generated images and real images of the same conditions.

Accuracy asks "are the requested objects there?"; it cannot see blur or speckle (the evaluator reads images
it was trained to classify through low-resolution augmentation). Fidelity asks "do the images look like real
renders?": the Kernel Inception Distance (Binkowski et al. 2018, "Demystifying MMD GANs": the unbiased MMD^2
with the cubic polynomial kernel, mean and std over random subsets) and the Frechet distance (Heusel et al.
2017) between feature sets, computed by torchmetrics with a custom feature extractor.

Features (`TextureFeatures`): the evaluator in use (own or course, both resnet18) up to its first residual
stage, 64 channels at 16x16, summarised per image by each channel's mean and standard deviation (128 numbers).
Its pooled penultimate layer was checked first and is blind to blur: on 500 vs 500 training renders of the
embedded kit (KID x 10^3, 100 subsets of 50; benchmarks/results/fidelity/check.json) real vs real -36 +- 294,
real vs the same renders through 32x32 29 +- 292. The first stage's statistics: real vs real -1.1 +- 5.2, through
32x32 35.8 +- 17.5, with noise of std 0.1 418 +- 20; FD 0.08, 0.76 and 7.4 (docs/fidelity.md).

Real images: the embedded kit renders each condition `per_condition` times (reference set A, seed 1) and once
more as an independent set (B, seed 2) whose distance to A is the floor: what two real samples of the same
conditions score. A course kit has no renders of the test conditions, so its training images stand in (two
disjoint random sets), and the report says so.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from iclevr.errors import UserError

SUBSET_SIZE = 50  # images per KID subset (the prior's); a set needs at least this many
SUBSETS = 100  # random subsets whose MMD^2 values give KID's mean and std
PER_CONDITION = 3  # reference renders per condition, per reference set
FEATURES = "evaluator layer1: per-channel mean and std (128)"


class TextureFeatures(nn.Module):
    """The evaluator's stem and first residual stage, pooled to per-channel mean and std: (B, 3, 64, 64) in
    [0, 1] (torchmetrics' normalize=True) -> (B, 128)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        if not all(hasattr(net, a) for a in ("conv1", "bn1", "relu", "maxpool", "layer1")):
            raise UserError("this evaluator is not a resnet18: fidelity needs its first residual stage")
        self.net = net.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Features of images in [0, 1]."""
        n = self.net
        h = n.layer1(n.maxpool(n.relu(n.bn1(n.conv1(x * 2 - 1)))))  # (B, 64, 16, 16)
        return torch.cat([h.mean((2, 3)), h.std((2, 3))], 1)  # (B, 128)


def check_count(n: int, what: str, subset_size: int = SUBSET_SIZE) -> None:
    """One clear error when a set is too small for KID's subsets."""
    if n < subset_size:
        raise UserError(
            f"KID needs at least {subset_size} images per set; {what} has {n} (score more "
            "sampling seeds with --seeds, or lower --kid-subset-size)"
        )


@torch.no_grad()
def kid_fd(
    net: nn.Module,
    generated: torch.Tensor,
    reference: torch.Tensor,
    *,
    subset_size: int = SUBSET_SIZE,
    subsets: int = SUBSETS,
    seed: int = 0,
) -> dict:
    """KID (mean, std over subsets) and FD between images (N, 3, 64, 64) and (M, 3, 64, 64), both in [-1, 1]."""
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.kid import KernelInceptionDistance

    check_count(len(generated), "the generated set", subset_size)
    check_count(len(reference), "the reference set", subset_size)
    feats = TextureFeatures(net).to(torch.float32)
    device = next(net.parameters()).device
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():  # KID's subsets come from the global RNG
        warnings.filterwarnings("ignore", message=".*will save all extracted features.*")
        torch.manual_seed(seed)
        kid = KernelInceptionDistance(feature=feats, subsets=subsets, subset_size=subset_size, normalize=True)
        fd = FrechetInceptionDistance(feature=feats, normalize=True)
        for metric in (kid, fd):
            metric.to(device)
            for real, x in ((True, reference), (False, generated)):
                for i in range(0, len(x), 256):
                    metric.update(((x[i : i + 256].to(device).float() + 1) / 2).clamp(0, 1), real=real)
        mean, std = kid.compute()
        return {
            "kid": float(mean),
            "kid_std": float(std),
            "fd": float(fd.compute()),
            "n_generated": len(generated),
            "n_reference": len(reference),
            "subset_size": subset_size,
            "subsets": subsets,
        }


def render_reference(
    conditions: list[list[str]], seed: int, per_condition: int = PER_CONDITION, size: tuple[int, int] = (128, 96)
) -> torch.Tensor:
    """Render each condition `per_condition` times in the embedded world, squashed to 64x64 like the course
    loader: uint8 (len(conditions) * per_condition, 3, 64, 64); render (i, r) is seeded from (seed, i, r)."""
    import numpy as np
    from PIL import Image

    from iclevr.data.world.render import render
    from iclevr.data.world.scene import place_sequence

    out = []
    for i, cond in enumerate(conditions):
        for r in range(per_condition):
            objects = place_sequence(np.random.default_rng([seed, i, r, 7]), list(cond))
            img = Image.fromarray(render(objects, size, 2)).resize((64, 64), Image.BILINEAR)
            out.append(torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1))
    return torch.stack(out)  # (N, 3, 64, 64)


def reference_sets(conditions: list[list[str]], data_dir, n: int) -> tuple[torch.Tensor, torch.Tensor, str]:
    """(reference A, floor set B, what they are), uint8 (.., 3, 64, 64): renders of these conditions for the
    embedded kit (cached under $ICLEVR_HOME), else two disjoint random sets of the course kit's training images."""
    from iclevr.data.synth import is_embedded_kit

    if is_embedded_kit(data_dir):  # no --data-dir, or the embedded kit named by its path (as `iclevr demo` does)
        a = _cached_render(conditions, seed=1)
        b = _cached_render(conditions, seed=2)
        return a, b, f"embedded renders of the same conditions ({PER_CONDITION} per condition per set)"
    from iclevr.data.course import load_kit, load_train_tensors

    kit = load_kit(data_dir, splits=False)
    images, _ = load_train_tensors(kit, 64)
    n = min(n, len(images) // 2)
    check_count(n, f"each of the two sets of training images of {data_dir}")
    perm = torch.randperm(len(images), generator=torch.Generator().manual_seed(5))
    return (
        images[perm[:n]],
        images[perm[n : 2 * n]],
        "course kit training images (random, not the same conditions: the kit has no renders of them)",
    )


def _cached_render(conditions: list[list[str]], seed: int) -> torch.Tensor:
    """render_reference, cached as safetensors under $ICLEVR_HOME/reference/ keyed by conditions and seed."""
    import hashlib
    import json

    from safetensors.torch import load_file, save_file

    from iclevr.fileio import atomic_path
    from iclevr.paths import iclevr_home

    key = hashlib.sha256(json.dumps([conditions, seed, PER_CONDITION, 1]).encode()).hexdigest()[:16]
    path = iclevr_home() / "reference" / f"{key}.safetensors"
    if path.is_file():
        try:
            return load_file(str(path))["images"]
        except Exception:  # noqa: BLE001 - a damaged cache is rebuilt
            path.unlink(missing_ok=True)
    images = render_reference(conditions, seed)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            save_file({"images": images}, str(tmp))
    except OSError:  # a read-only home: render again next time
        pass
    return images


def split_fidelity(
    net: nn.Module, generated: torch.Tensor, conditions: list[list[str]], data_dir, subset_size: int = SUBSET_SIZE
) -> dict:
    """A split's fidelity: KID/FD of the generated images (all seeds pooled) against reference set A, and the
    floor (set B against A); images in [-1, 1] or uint8."""
    from iclevr.data.course import to_model_range

    ref_a, ref_b, what = reference_sets(conditions, data_dir, len(generated))
    a, b = to_model_range(ref_a), to_model_range(ref_b)
    gen = to_model_range(generated) if generated.dtype == torch.uint8 else generated
    return {
        "generated": kid_fd(net, gen, a, subset_size=subset_size),
        "floor": kid_fd(net, b, a, subset_size=subset_size),
        "reference": what,
        "features": FEATURES,
    }
