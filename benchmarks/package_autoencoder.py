"""Package a trained autoencoder run as iclevr/assets/autoencoder.safetensors (float16), measured as shipped.

    python benchmarks/package_autoencoder.py --run checkpoints/autoencoder-s0

Loads RUN/autoencoder.safetensors, stores its tensors as float16, reloads the packaged file (as every user will)
and measures it on the run's own held-out images (never trained on): reconstruction PSNR, and KID/FD of the
reconstructions against the originals, beside the floor (the originals against as many other training images).
The scale factor is recomputed on the float16 weights. Writes the packaged file and
benchmarks/results/autoencoder/packaged.json (with the run's settings and training facts).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "autoencoder"


def main() -> None:
    """Package and measure."""
    from iclevr.autoencoder import FILE_NAME, PACKAGED, load_autoencoder, read_meta, save_autoencoder
    from iclevr.data.course import load_kit, load_train_tensors, to_model_range
    from iclevr.data.kits import resolve_data_dir
    from iclevr.evaluation.evaluator import PACKAGED as EVALUATOR
    from iclevr.evaluation.evaluator import load_own
    from iclevr.evaluation.fidelity import kid_fd
    from iclevr.fileio import file_sha256, write_result_json
    from iclevr.training.autoencoder import AutoencoderTrainSettings, heldout_split, measure

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", type=Path, required=True)
    p.add_argument("--out", type=Path, default=PACKAGED)
    args = p.parse_args()
    settings = AutoencoderTrainSettings.model_validate_json((args.run / "settings.json").read_text())
    cfg, _, info = read_meta(args.run / FILE_NAME)
    ae = load_autoencoder(args.run / FILE_NAME)
    images, _ = load_train_tensors(load_kit(resolve_data_dir(settings.data.data_dir), splits=False), cfg.resolution)
    held, train_idx = heldout_split(len(images), settings.heldout, settings.seed)
    half = {k: v.half().float() for k, v in ae.vae.state_dict().items()}  # what float16 storage keeps
    ae.vae.load_state_dict(half)
    m = measure(ae.vae, images[held])
    packaged_info = {**info, "psnr_db": round(m["psnr_db"], 3), "packaged": "float16"}
    save_autoencoder(ae.vae, args.out, cfg, m["scale_factor"], packaged_info, half=True)
    shipped = load_autoencoder(args.out)
    x = to_model_range(images[held])  # (H, 3, 64, 64)
    recon = torch.cat([shipped.decode(shipped.encode(x[i : i + 100])) for i in range(0, len(x), 100)])
    other = to_model_range(images[train_idx[: len(held)]])
    net = load_own(EVALUATOR).net
    row = {
        "file": str(args.out.relative_to(ROOT)) if args.out.is_relative_to(ROOT) else args.out.name,
        "sha256": file_sha256(args.out),
        "bytes": args.out.stat().st_size,
        "settings": {**json.loads((args.run / "settings.json").read_text()), "out": args.run.name},
        "training": info,
        "heldout_psnr_db": round(m["psnr_db"], 3),
        "scale_factor": m["scale_factor"],
        "kid_reconstruction": kid_fd(net, recon, x),
        "kid_floor": kid_fd(net, other, x),
        "features": "evaluator layer1 mean+std (iclevr.evaluation.fidelity)",
        "command": f"python benchmarks/package_autoencoder.py --run {args.run.name}",
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    write_result_json(RESULTS / "packaged.json", row, RESULTS.parents[2])
    print(
        f"{args.out}: {row['bytes'] / 1e6:.2f} MB, PSNR {row['heldout_psnr_db']:.2f} dB, KID x1e3 "
        f"{1e3 * row['kid_reconstruction']['kid']:.1f} (floor {1e3 * row['kid_floor']['kid']:.1f})"
    )


if __name__ == "__main__":
    main()
