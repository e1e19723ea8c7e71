"""Stand-ins for the report tests: images of known colours and `iclevr eval`-shaped reports from a judge whose
answers are fixed by a seed (no diffusion model, no evaluator network)."""

from __future__ import annotations

import random
import statistics

import numpy as np

from iclevr import labels as L
from iclevr.evaluation.metric import analyse


def solid_images(n: int, size: int = 64) -> np.ndarray:
    """n single-colour images (n, size, size, 3) uint8, each a different colour."""
    colours = [((37 * i + 40) % 256, (91 * i + 20) % 256, (53 * i + 200) % 256) for i in range(n)]
    return np.stack([np.full((size, size, 3), c, dtype=np.uint8) for c in colours])


def judge(condition: list[str], rng: random.Random, p_found: float = 0.75) -> list[str]:
    """A stand-in evaluator's top-k for one image: each requested object kept with p_found, else replaced by
    a class that is not requested (often a colour/shape swap, the typical failure)."""
    pred = []
    for name in condition:
        if rng.random() < p_found:
            pred.append(name)
            continue
        colour, shape = name.split()
        others = [c for c in L.LABELS if c not in condition and c not in pred]
        swaps = [c for c in others if c.split()[0] == colour or c.split()[1] == shape]
        pred.append(rng.choice(swaps or others))
    return pred


def fake_split(conditions: list[list[str]], seeds=(0, 1, 2)) -> dict:
    """One split of report.json as `iclevr eval` writes it, with the judge's answers fixed by the seeds."""
    objects = sum(len(c) for c in conditions)
    runs, all_req, all_pred = [], [], []
    for seed in seeds:
        rng = random.Random(seed)
        predicted = [judge(c, rng) for c in conditions]
        hits = [len(set(c) & set(p)) for c, p in zip(conditions, predicted)]
        runs.append(
            {
                "seed": seed,
                "hits": sum(hits),
                "total": objects,
                "accuracy": sum(hits) / objects,
                "per_condition": hits,
                "predicted": predicted,
            }
        )
        all_req += conditions
        all_pred += predicted
    accs = [r["accuracy"] for r in runs]
    return {
        "conditions": conditions,
        "objects": objects,
        "runs": runs,
        "accuracy": accs,
        "mean": statistics.fmean(accs),
        "std": statistics.pstdev(accs),
        "hits": sum(r["hits"] for r in runs),
        "total": sum(r["total"] for r in runs),
        **analyse(all_req, all_pred, L.LABELS),
    }


def fake_conditions(n: int, min_objects: int, seed: int) -> list[list[str]]:
    """n random conditions of min_objects..3 distinct objects."""
    rng = random.Random(seed)
    return [rng.sample(L.LABELS, rng.randint(min_objects, 3)) for _ in range(n)]


def fake_report(splits: dict[str, list[list[str]]], seeds=(0, 1, 2)) -> dict:
    """A whole report.json of `iclevr eval` around fake_split's splits."""
    return {
        "checkpoint": "checkpoints/tiny-run/weights/ema.safetensors",
        "images": None,
        "model": {"preset": "tiny", "step": 1200, "condition_type": "class_embedding"},
        "sampler": {"sampler": "dpmpp-sde", "steps": 20, "guidance_scale": 1.0, "batch_size": 64, "seed": 0},
        "data_dir": "/data/iclevr",
        "evaluator": {
            "kind": "own",
            "path": "/cache/evaluator.safetensors",
            "sha256": "ab" * 32,
            "heldout": {"test-like": 0.981},
        },
        "settings": {"split": "all", "seeds": list(seeds), "note": "<script>alert(1)</script> & more"},
        "splits": {s: fake_split(c, seeds) for s, c in splits.items()},
    }


def write_example(kit, out) -> None:
    """The docs' example: a synth kit's renders stand in for generated images, fake_report's judge scores them;
    writes <split>_annotated.png, report.json and report.html into `out`."""
    import json
    from pathlib import Path

    from PIL import Image

    from iclevr.evaluation.annotate import annotate_split
    from iclevr.evaluation.html import write_report

    kit, out = Path(kit), Path(out)
    train = json.loads((kit / "train.json").read_text())
    names = sorted(train)
    files = {"test": names[:32], "new_test": [n for n in names if not n.endswith("_0.png")][:32]}
    report = fake_report({s: [train[f] for f in fs] for s, fs in files.items()})
    out.mkdir(parents=True, exist_ok=True)
    grids = {}
    for split, fs in files.items():  # squashed to 64x64 like the course loader
        images = np.stack(
            [np.asarray(Image.open(kit / "iclevr" / f).convert("RGB").resize((64, 64), Image.BILINEAR)) for f in fs]
        )
        grid = annotate_split(images, report["splits"][split], title=f"{split}, sampling seed 0")
        grids[split] = grid.png()
        (out / f"{split}_annotated.png").write_bytes(grids[split])
    (out / "report.json").write_text(json.dumps(report, indent=1))
    write_report(
        out / "report.html",
        report,
        images=grids,
        title="Example report: synthetic renders, verdicts from a stand-in judge",
    )


if __name__ == "__main__":  # python tests/report_fixture.py KIT OUT (KIT from `iclevr data synth --out KIT`)
    import sys

    write_example(sys.argv[1], sys.argv[2])
