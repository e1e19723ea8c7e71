"""The condition every user tries first, judged after the fact: "red sphere, cyan cylinder, cyan cube" over 10 seeds.

    python benchmarks/trace_condition.py --checkpoint RUN_OR_WEIGHTS [--name NAME] [--seeds 10]

Draws the trace condition (iclevr.labels.TRACE_LABELS) once per sampling seed 0..N-1 with the weights' stored
sampler, asks the packaged evaluator which objects it finds (the course metric's top-k rule, per image), and
counts the seeds whose image has all three. Nothing is picked or re-drawn: every seed's image is counted.
Writes benchmarks/results/trace_condition/<name>.json and a grid of the N images beside it.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results" / "trace_condition"


def main() -> None:
    """Sample, judge, write."""
    import torch

    from iclevr import labels as L
    from iclevr.evaluation.evaluator import PACKAGED, load_own
    from iclevr.evaluation.metric import image_hits
    from iclevr.fileio import write_result_json
    from iclevr.generate import load_model, with_weights_defaults
    from iclevr.images import save_grid, to_output_size
    from iclevr.sampling import sample
    from iclevr.settings import SamplerSettings

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", type=Path, default=None, help="Run folder or weights (default: as `sample`).")
    p.add_argument("--name", default="packaged")
    p.add_argument("--seeds", type=int, default=10)
    args = p.parse_args()
    model, info, device = load_model(args.checkpoint)
    sampler = with_weights_defaults(SamplerSettings(), info.sampler)
    y = L.encode_many([list(L.TRACE_LABELS)])  # (1, 24)
    images = torch.cat(
        [
            to_output_size(
                sample(model, y, schedule=info.schedule, sampler=sampler.model_copy(update={"seed": s}), device=device)
            )
            for s in range(args.seeds)
        ]
    )  # (N, 3, 64, 64)
    hits = image_hits(load_own(PACKAGED).scores(images), y.repeat(args.seeds, 1))
    RESULTS.mkdir(parents=True, exist_ok=True)
    save_grid(images, RESULTS / f"{args.name}.png", nrow=args.seeds)
    row = {
        "condition": list(L.TRACE_LABELS),
        "checkpoint": info.path.name,
        "step": info.step,
        "sampler": sampler.model_dump(mode="json"),
        "found_per_seed": hits,
        "all_three": sum(h == 3 for h in hits),
        "seeds": args.seeds,
        "command": f"python benchmarks/trace_condition.py --name {args.name}",
        "when": time.strftime("%F %T"),
    }
    write_result_json(RESULTS / f"{args.name}.json", row, RESULTS.parents[2])
    print(f"{args.name}: all three objects found in {row['all_three']} of {args.seeds} seeds ({hits})")


if __name__ == "__main__":
    main()
