"""The course metric (SPEC §6), error analysis, the evaluator choice and the core of `iclevr eval`.

Metric: for an image with k requested objects take the k classes with the highest evaluator outputs;
hits = how many of them were requested. accuracy = sum(hits) / sum(k) over the whole split (a micro
average, not a per-image mean), so a split of 72 objects moves in steps of 1/72.

Evaluator choice: --evaluator PATH, else `checkpoint.pth` in the data folder, else the project's own
evaluator for the embedded world (trained once on first use and cached).
"""

from __future__ import annotations

import statistics
from collections import Counter
from pathlib import Path
from typing import Literal

from pydantic import Field

from iclevr import labels as L
from iclevr.errors import UserError
from iclevr.evaluation.fit import EvaluatorTrainSettings
from iclevr.settings import SamplerSettings, Section

SPLITS = ("test", "new_test")


class EvalSettings(Section):
    """Settings of `iclevr eval`."""

    checkpoint: Path | None = Field(None, description="Run folder or .safetensors weights; empty = newest run "
                                    "under checkpoints/.")
    split: Literal["test", "new_test", "all"] = Field("all", description="Which conditions to generate and score.")
    data_dir: Path | None = Field(None, description="Course data folder (test.json, new_test.json, maybe "
                                  "checkpoint.pth); empty = the embedded rendered kit.")
    evaluator: Path | None = Field(None, description="Evaluator file (course checkpoint.pth or our .safetensors); "
                                   "empty = checkpoint.pth in the data folder, else the project's own.")
    seeds: list[int] = Field([0, 1, 2], min_length=1, description="Sampling seeds; accuracy is mean ± std over them.")
    sampler: SamplerSettings = Field(default_factory=SamplerSettings, description="Sampler; unset fields come "
                                     "from the weights' metadata.")
    out: Path | None = Field(None, description="Output folder; empty = <run folder>/eval (or ./eval).")
    images: Path | None = Field(None, description="Score already generated images (<dir>/<split>/0.png.. or a "
                                "flat <dir>/0.png.. for one split) instead of sampling.")
    own_evaluator: EvaluatorTrainSettings = Field(default_factory=EvaluatorTrainSettings, description="How the "
                                                  "project's own evaluator is trained on first use.")


# ---- the metric ------------------------------------------------------------------------------------

def topk_predictions(scores, y) -> list[list[int]]:
    """For each image the indices of its k highest scores, k = number of requested objects (ties: lower index)."""
    import torch

    scores, y = torch.as_tensor(scores, dtype=torch.float32), torch.as_tensor(y)
    if scores.shape != y.shape or scores.ndim != 2:
        raise ValueError(f"scores {tuple(scores.shape)} and labels {tuple(y.shape)} must both be (N, 24)")
    ks = (y > 0.5).sum(dim=1).tolist()
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices  # (N, 24)
    return [order[i, :k].tolist() for i, k in enumerate(ks)]


def image_hits(scores, y) -> list[int]:
    """Hits per image: how many of its top-k classes were requested."""
    import torch

    y = torch.as_tensor(y)
    return [sum(int(y[i, c] > 0.5) for c in pred) for i, pred in enumerate(topk_predictions(scores, y))]


def accuracy(scores, y) -> tuple[int, int]:
    """The course metric's numerator and denominator: (sum of top-k hits, sum of k) over all images."""
    import torch

    return sum(image_hits(scores, y)), int((torch.as_tensor(y) > 0.5).sum())


# ---- error analysis --------------------------------------------------------------------------------

def classify_wrong(wrong: int, requested: list[int]) -> str:
    """Why a predicted-but-not-requested class is wrong: binding (a requested colour on another requested
    object's shape), colour (right colour, shape not requested), shape (right shape, colour not requested),
    or other."""
    colours, shapes = {r % 8 for r in requested}, {r // 8 for r in requested}
    c, s = wrong % 8, wrong // 8
    if c in colours and s in shapes:
        return "binding"
    return "colour" if c in colours else "shape" if s in shapes else "other"


def full_swaps(requested: list[int], predicted: list[int]) -> int:
    """Pairs of requested objects whose colours and shapes are both swapped in the prediction."""
    pred = set(predicted)
    count = 0
    for i, a in enumerate(requested):
        for b in requested[i + 1:]:
            ca, sa, cb, sb = a % 8, a // 8, b % 8, b // 8
            if ca != cb and sa != sb and (sb * 8 + ca) in pred and (sa * 8 + cb) in pred:
                count += 1
    return count


def analyse(requested: list[list[int]], predicted: list[list[int]]) -> dict:
    """Per-class recall, the objects most often missed, and the kinds of wrong predictions (binding errors)."""
    asked, found, kinds = Counter(), Counter(), Counter()
    binding_images = swaps = 0
    for req, pred in zip(requested, predicted):
        asked.update(req)
        found.update(set(req) & set(pred))
        wrong = [classify_wrong(w, req) for w in pred if w not in req]
        kinds.update(wrong)
        binding_images += "binding" in wrong
        swaps += full_swaps(req, pred)
    recall = {L.LABELS[i]: round(found[i] / asked[i], 4) if asked[i] else None for i in range(L.NUM_CLASSES)}
    missed = sorted(((asked[i] - found[i], i) for i in asked if asked[i] > found[i]), key=lambda t: (-t[0], t[1]))
    n_wrong = sum(kinds.values())
    return {
        "per_class_recall": recall,
        "most_missed": [{"label": L.LABELS[i], "missed": m, "requested": asked[i]} for m, i in missed[:5]],
        "wrong_predictions": {"total": n_wrong, **{k: kinds.get(k, 0) for k in ("binding", "colour", "shape",
                                                                                  "other")}},
        "binding": {"wrong_predictions": kinds.get("binding", 0), "share_of_wrong":
                    round(kinds.get("binding", 0) / n_wrong, 4) if n_wrong else 0.0,
                    "images": binding_images, "images_total": len(requested), "full_swaps": swaps},
    }


def score_split(evaluator, runs: dict, conditions: list[list[str]]) -> dict:
    """Score one split: runs = {seed label: images (N, 3, 64, 64)}; accuracy per run, mean ± std, analysis."""
    y = L.encode_many(conditions)  # (N, 24)
    requested = [L.parse_names(c) for c in conditions]
    per_run, all_req, all_pred = [], [], []
    for label, x in runs.items():
        scores = evaluator.scores(x)  # (N, 24)
        pred = topk_predictions(scores, y)
        hits = image_hits(scores, y)
        per_run.append({"seed": label, "hits": sum(hits), "total": int(y.sum()),
                        "accuracy": sum(hits) / int(y.sum()), "per_condition": hits,
                        "predicted": [[L.LABELS[c] for c in p] for p in pred]})
        all_req += requested
        all_pred += pred
    accs = [r["accuracy"] for r in per_run]
    return {"conditions": conditions, "objects": int(y.sum()), "runs": per_run, "accuracy": accs,
            "mean": statistics.fmean(accs), "std": statistics.pstdev(accs),
            "hits": sum(r["hits"] for r in per_run), "total": sum(r["total"] for r in per_run),
            **analyse(all_req, all_pred)}


# ---- evaluators, conditions and images ---------------------------------------------------------------

def _chosen_file(path: Path | None, data_dir: Path | None) -> Path | None:
    """`path`, else data_dir/checkpoint.pth when it exists, else None (the project's own evaluator)."""
    if path is not None:
        return Path(path)
    if data_dir is not None and (Path(data_dir) / "checkpoint.pth").is_file():
        return Path(data_dir) / "checkpoint.pth"
    return None


def load_evaluator(path: Path | None, data_dir: Path | None, device="cpu", console=None,
                   own: EvaluatorTrainSettings | None = None):
    """Pick the evaluator: `path`, else data_dir/checkpoint.pth, else the project's own (trained on first use)."""
    from iclevr.evaluation.evaluator import load_file
    from iclevr.evaluation.fit import ensure_own_evaluator

    chosen = _chosen_file(path, data_dir)
    return load_file(chosen, device) if chosen is not None else ensure_own_evaluator(device, console, own)


def evaluator_file(path: Path | None, data_dir: Path | None) -> Path | None:
    """The file load_evaluator would read, without loading it; None while the own evaluator is still to train."""
    from iclevr.evaluation.fit import own_evaluator_file

    return _chosen_file(path, data_dir) or own_evaluator_file()


def load_conditions(data_dir: Path, splits: tuple[str, ...]) -> dict[str, list[list[str]]]:
    """The conditions of the given splits from a data folder (objects.json checked when present)."""
    from iclevr.data.course import load_split, read_json

    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise UserError(f"data folder not found: {data_dir}")
    if (data_dir / "objects.json").is_file():
        L.check_objects_mapping(read_json(data_dir / "objects.json", "objects.json"))
    return {s: load_split(data_dir, s) for s in splits}


def load_image_folder(folder: Path, n: int):
    """Read folder/0.png .. (n-1).png, squashed to 64x64 like the course loader: (n, 3, 64, 64) in [-1, 1]."""
    import torch

    from iclevr.data.course import load_image, to_model_range

    missing = [f"{i}.png" for i in range(n) if not (folder / f"{i}.png").is_file()]
    if missing:
        raise UserError(f"{folder} lacks {len(missing)} of the {n} images 0.png..{n - 1}.png "
                        f"(e.g. {', '.join(missing[:3])}); name them in JSON order")
    images = []
    for i in range(n):
        try:
            images.append(load_image(folder / f"{i}.png", 64))
        except Exception:  # noqa: BLE001 - any decoder failure
            raise UserError(f"{folder / f'{i}.png'} is not a readable image") from None
    return to_model_range(torch.stack(images))  # (n, 3, 64, 64)


def image_folders(root: Path, splits: tuple[str, ...]) -> dict[str, Path]:
    """Map each split to its image folder: root/<split>/ when present, else root itself for a single split."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"images folder not found: {root}")
    if all((root / s).is_dir() for s in splits):
        return {s: root / s for s in splits}
    if len(splits) == 1 and (root / "0.png").is_file():
        return {splits[0]: root}
    want = " and ".join(f"{root}/{s}/" for s in splits)
    raise UserError(f"expected {want} holding 0.png, 1.png, ... (or a flat folder with --split test|new_test)")


def default_out(weights: Path | None) -> Path:
    """<run folder>/eval for weights inside a run folder, else ./eval."""
    if weights is not None and weights.parent.name == "weights":
        return weights.parent.parent / "eval"
    return Path("eval")


# ---- `iclevr eval` ---------------------------------------------------------------------------------

def generate(model, info, sampler: SamplerSettings, conditions: list[list[str]], seeds: list[int],
             on_step=None) -> dict:
    """Sample every condition once per seed, resized to 64x64 batch by batch: {seed: (N, 3, 64, 64) in [-1, 1]}."""
    import torch

    from iclevr.sampling import OUTPUT_SIZE, sample_batches, to_output_size

    y = L.encode_many(conditions)  # (N, 24)
    runs = {}
    for s in seeds:
        runs[s] = torch.empty((len(y), 3, OUTPUT_SIZE, OUTPUT_SIZE))  # filled batch by batch, no copies
        for start, x in sample_batches(model, y, schedule=info.schedule,
                                       sampler=sampler.model_copy(update={"seed": s}), callback=on_step):
            runs[s][start:start + len(x)] = to_output_size(x)  # (b, 3, 64, 64)
    return runs


def _sampling_progress(console):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn, TimeRemainingColumn

    return Progress("{task.description}", BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TimeRemainingColumn(), console=console, disable=console is None, transient=True)


def _sampling_task(bar, sampler: SamplerSettings, info, conditions: dict, seeds: list[int]):
    """Add the sampling task to `bar`: one tick per sampler step of every chunk of every split and seed."""
    import math

    from iclevr.sampling import resolve_steps

    steps = resolve_steps(sampler, info.schedule)
    chunks = sum(math.ceil(len(c) / sampler.batch_size) for c in conditions.values())
    return bar.add_task(f"sampling ({sampler.sampler}, {steps} steps, {len(seeds)} seed(s))",
                        total=chunks * len(seeds) * steps)


def evaluate(settings: EvalSettings, console=None) -> dict:
    """Generate (or read) each split's images, score them with the course metric, write the PNGs, grids and
    report.json into the output folder; returns the report."""
    from iclevr.weights import write_json
    from iclevr.data.course import resolve_data_dir
    from iclevr.device import pick_device
    from iclevr.fileio import check_writable
    from iclevr.sampling import load_model, save_grid, save_images, with_weights_defaults

    splits = SPLITS if settings.split == "all" else (settings.split,)
    folders = image_folders(settings.images, splits) if settings.images else None
    data_dir = resolve_data_dir(settings.data_dir, console)
    conditions = load_conditions(data_dir, splits)
    model = info = sampler = None
    if folders is None:
        model, info, device = load_model(settings.checkpoint, settings.sampler.device)
        sampler = with_weights_defaults(settings.sampler, info.sampler)
    else:
        device = pick_device(settings.sampler.device)
    out = check_writable(settings.out or default_out(info.path if info else None))
    evaluator = load_evaluator(settings.evaluator, data_dir, device, console, settings.own_evaluator)
    report = {"checkpoint": str(info.path) if info else None, "images": str(settings.images) if folders else None,
              "model": {"preset": info.preset, "step": info.step} if info else None,
              "sampler": sampler.model_dump(mode="json") if sampler else None, "data_dir": str(data_dir),
              "evaluator": evaluator.describe(), "settings": settings.model_dump(mode="json"), "splits": {}}
    with _sampling_progress(console if folders is None else None) as bar:
        task = _sampling_task(bar, sampler, info, conditions, settings.seeds) if folders is None else None
        for split in splits:  # one split at a time: only its images are held, then scored and released
            if folders is None:
                runs = generate(model, info, sampler, conditions[split], settings.seeds,
                                on_step=lambda d: bar.advance(task))
            else:
                runs = {"images": load_image_folder(folders[split], len(conditions[split]))}
            first = next(iter(runs.values()))  # (N, 3, 64, 64) of the first seed
            if folders is None:
                save_images(first, out / "images" / split)
            save_grid(first, out / f"{split}_grid.png", nrow=8)
            report["splits"][split] = score_split(evaluator, runs, conditions[split])
            del runs, first
    write_json(out / "report.json", report)
    report["out"] = str(out)
    return report


def score_run(run_dir: Path, *, data, sampler: SamplerSettings, seeds: list[int], evaluator: Path | None = None,
              grid_path: Path | None = None, console=None) -> dict:
    """Evaluate a run folder on both splits (for compare-schedules): {"accuracy": {split: [per seed]}, ...}."""
    import shutil

    settings = EvalSettings(checkpoint=run_dir, split="all", data_dir=data.data_dir, evaluator=evaluator,
                            seeds=seeds, sampler=sampler)
    report = evaluate(settings, console)
    if grid_path is not None:
        Path(grid_path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(Path(report["out"]) / "new_test_grid.png", grid_path)
    return {"accuracy": {s: r["accuracy"] for s, r in report["splits"].items()},
            "mean": {s: r["mean"] for s, r in report["splits"].items()},
            "hits": {s: [x["hits"] for x in r["runs"]] for s, r in report["splits"].items()},
            "evaluator": report["evaluator"]}
