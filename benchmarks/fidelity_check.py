"""Does the fidelity measure see what users see? (issue 26) KID/FD on real renders, degraded on purpose.

    python benchmarks/fidelity_check.py [--autoencoder iclevr/assets/autoencoder.safetensors]

Two disjoint sets of 500 training images of the embedded kit at 64x64 (A, and B of the same distribution). KID
(x 10^3, mean ± std over 100 subsets of 50) and FD of A against: B (the floor: real vs real), B through 32x32 and
back (the blur of the 32-upsampled design), B with Gaussian noise of std 0.1 (speckle), and optionally the
autoencoder's reconstructions of B (what the latent design can reach at best). Once in the evaluator's pooled
penultimate features (what the issue asked for first) and once in the features eval uses
(iclevr.evaluation.fidelity.TextureFeatures): a measure to trust scores the degraded sets far above the floor.
Writes benchmarks/results/fidelity/check.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

RESULTS = Path(__file__).parent / "results" / "fidelity"


class PooledFeatures(nn.Module):
    """The evaluator's pooled penultimate layer (512), images in [0, 1]."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        """(B, 3, 64, 64) in [0, 1] -> (B, 512)."""
        n = self.net
        h = n.maxpool(n.relu(n.bn1(n.conv1(x * 2 - 1))))
        return n.avgpool(n.layer4(n.layer3(n.layer2(n.layer1(h))))).flatten(1)


def kid_fd_with(features: nn.Module, a: torch.Tensor, b: torch.Tensor) -> dict:
    """KID x 1e3 (mean, std) and FD of b against a with a given feature module (torchmetrics)."""
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.kid import KernelInceptionDistance

    torch.manual_seed(0)
    kid = KernelInceptionDistance(feature=features, subsets=100, subset_size=50, normalize=True)
    fd = FrechetInceptionDistance(feature=features, normalize=True)
    with torch.no_grad():
        for m in (kid, fd):
            m.update((a + 1) / 2, real=True)
            m.update(((b + 1) / 2).clamp(0, 1), real=False)
        mean, std = kid.compute()
        return {
            "kid_x1e3": round(1e3 * float(mean), 2),
            "kid_std_x1e3": round(1e3 * float(std), 2),
            "fd": round(float(fd.compute()), 4),
        }


def main() -> None:
    """Build the sets, score them in both feature spaces, write the JSON."""
    from iclevr.data.course import load_kit, load_train_tensors, to_model_range
    from iclevr.data.kits import ensure_default_kit
    from iclevr.evaluation.evaluator import PACKAGED, load_own
    from iclevr.evaluation.fidelity import TextureFeatures
    from iclevr.fileio import write_result_json

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--autoencoder", type=Path, default=None)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    net = load_own(PACKAGED).net.eval()
    images, _ = load_train_tensors(load_kit(ensure_default_kit(), splits=False), 64)
    perm = torch.randperm(len(images), generator=torch.Generator().manual_seed(3))
    a, b = to_model_range(images[perm[:500]]), to_model_range(images[perm[500:1000]])
    sets = {
        "real B (floor)": b,
        "B through 32x32 (blur)": F.interpolate(
            F.interpolate(b, size=32, mode="bilinear", antialias=True, align_corners=False),
            size=64,
            mode="bilinear",
            align_corners=False,
        ),
        "B + noise std 0.1 (speckle)": (
            b + 0.1 * torch.randn(b.shape, generator=torch.Generator().manual_seed(4))
        ).clamp(-1, 1),
    }
    if args.autoencoder:
        from iclevr.autoencoder import load_autoencoder

        ae = load_autoencoder(args.autoencoder)
        sets["B through the autoencoder"] = torch.cat(
            [ae.decode(ae.encode(b[i : i + 100])) for i in range(0, 500, 100)]
        )
    out = {"features": {}}
    for name, feats in (
        ("pooled penultimate (512)", PooledFeatures(net)),
        ("layer1 mean+std (128, used)", TextureFeatures(net)),
    ):
        out["features"][name] = {k: kid_fd_with(feats, a, v) for k, v in sets.items()}
        print(name, json.dumps(out["features"][name]), flush=True)
    out.update(
        {
            "evaluator": "iclevr/assets/own-evaluator-v2.safetensors",
            "images_per_set": 500,
            "subsets": 100,
            "subset_size": 50,
            "autoencoder": str(args.autoencoder) if args.autoencoder else None,
            "command": "python benchmarks/fidelity_check.py"
            + (f" --autoencoder {args.autoencoder}" if args.autoencoder else ""),
            "when": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
    )
    RESULTS.mkdir(parents=True, exist_ok=True)
    write_result_json(RESULTS / "check.json", out, RESULTS.parents[2])


if __name__ == "__main__":
    main()
