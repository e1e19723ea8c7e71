"""The core of `iclevr eval`: draw (or read) each split's images, score them with the course metric
(evaluation/metric.py), and write the images, one grid per split and report.json.

Cheap checks come first, so a missing model fails before any data work: the trained weights (or the --images
folders), the evaluator file, then the condition lists, which are read from <split>.json alone (the
training images are never touched, and the embedded kit's lists are computed without rendering it).
Only then is an own evaluator trained if none exists yet, and the images drawn.

`--split val` scores the kit's val list (labels.VAL_SPLIT), the one design choices are tuned on; "all" means
the two reported lists, test and new_test, which are never tuned on.

report.json: {"checkpoint", "images", "model": {"preset", "step"}, "sampler", "data_dir" (null = the
embedded default kit), "evaluator": {"kind", "path", "sha256", "heldout"?}, "settings", "splits": {split:
{"conditions", "objects", "runs": [{"seed", "hits", "total", "accuracy", "per_condition", "predicted"}],
"accuracy", "mean", "std", "hits", "total", "per_class_recall", "most_missed", "wrong_predictions",
"binding"}}}; the dict `evaluate` returns adds "out".
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Literal

from pydantic import Field

from iclevr import labels as L
from iclevr.errors import UserError
from iclevr.evaluation.fit import EvaluatorTrainSettings
from iclevr.evaluation.metric import analyse, image_hits, topk_predictions
from iclevr.settings import SamplerSettings, Section


class EvalSettings(Section):
    """Settings of `iclevr eval`."""

    checkpoint: Path | None = Field(
        None,
        description="Run folder or .safetensors weights; empty = the newest "
        "run under checkpoints/, else the packaged pretrained model.",
    )
    split: Literal["test", "new_test", "val", "all"] = Field(
        "all",
        description="Which conditions to generate "
        "and score: test, new_test, val (the list to tune "
        "on) or all (test and new_test).",
    )
    data_dir: Path | None = Field(
        None,
        description="Course data folder (test.json, new_test.json, maybe "
        "checkpoint.pth); empty = the embedded rendered kit.",
    )
    evaluator: Path | None = Field(
        None,
        description="Evaluator file (course checkpoint.pth or our .safetensors); "
        "empty = checkpoint.pth in the data folder, else the project's own.",
    )
    seeds: list[int] = Field([0, 1, 2], min_length=1, description="Sampling seeds; accuracy is mean ± std over them.")
    sampler: SamplerSettings = Field(
        default_factory=SamplerSettings, description="Sampler; unset fields come from the weights' metadata."
    )
    out: Path | None = Field(None, description="Output folder; empty = <run folder>/eval (or ./eval).")
    images: Path | None = Field(
        None,
        description="Score already generated images (<dir>/<split>/0.png.. or a "
        "flat <dir>/0.png.. for one split) instead of sampling.",
    )
    fidelity: bool | None = Field(
        None,
        description="KID and FD against real images of the same conditions "
        "(iclevr.evaluation.fidelity): true = required (an error when a split has "
        "fewer images than --kid-subset-size), false = off, empty = when enough.",
    )
    kid_subset_size: int = Field(50, ge=2, description="Images per KID subset; each set needs at least this many.")
    annotate_all_seeds: bool = Field(
        False,
        description="Write an annotated grid for every sampling seed "
        "(<split>_annotated_s<seed>.png), not only the first seed's.",
    )
    own_evaluator: EvaluatorTrainSettings = Field(
        default_factory=EvaluatorTrainSettings, description="How the project's own evaluator is trained on first use."
    )


def score_split(evaluator, runs: dict, conditions: list[list[str]]) -> dict:
    """Score one split: runs = {seed label: images (N, 3, 64, 64)}; accuracy per run, mean ± std, analysis."""
    y = L.encode_many(conditions)  # (N, 24)
    requested = [[L.LABELS[i] for i in L.parse_names(c)] for c in conditions]
    per_run, all_pred = [], []
    for label, x in runs.items():
        scores = evaluator.scores(x)  # (N, 24)
        predicted = [[L.LABELS[c] for c in p] for p in topk_predictions(scores, y)]
        hits = image_hits(scores, y)
        per_run.append(
            {
                "seed": label,
                "hits": sum(hits),
                "total": int(y.sum()),
                "accuracy": sum(hits) / int(y.sum()),
                "per_condition": hits,
                "predicted": predicted,
            }
        )
        all_pred += predicted
    accs = [r["accuracy"] for r in per_run]
    return {
        "conditions": conditions,
        "objects": int(y.sum()),
        "runs": per_run,
        "accuracy": accs,
        "mean": statistics.fmean(accs),
        "std": statistics.pstdev(accs),
        "hits": sum(r["hits"] for r in per_run),
        "total": sum(r["total"] for r in per_run),
        **analyse(requested * len(per_run), all_pred, L.LABELS),
    }


# ---- images ---------------------------------------------------------------------------------------


def load_image_folder(folder: Path, n: int):
    """Read folder/0.png .. (n-1).png, squashed to 64x64 like the course loader: (n, 3, 64, 64) in [-1, 1]."""
    import torch

    from iclevr.data.course import load_image, to_model_range

    missing = [f"{i}.png" for i in range(n) if not (folder / f"{i}.png").is_file()]
    if missing:
        raise UserError(
            f"{folder} lacks {len(missing)} of the {n} images 0.png..{n - 1}.png "
            f"(e.g. {', '.join(missing[:3])}); name them in JSON order"
        )
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
    raise UserError(f"expected {want} holding 0.png, 1.png, ... (or a flat folder with --split test|new_test|val)")


def default_out(weights: Path | None) -> Path:
    """<run folder>/eval for weights inside a run folder, else ./eval."""
    if weights is not None and weights.parent.name == "weights":
        return weights.parent.parent / "eval"
    return Path("eval")


# ---- `iclevr eval` ---------------------------------------------------------------------------------


def generate(
    model, info, sampler: SamplerSettings, conditions: list[list[str]], seeds: list[int], on_step=None
) -> dict:
    """Sample every condition once per seed, resized to 64x64 batch by batch: {seed: (N, 3, 64, 64) in [-1, 1]}."""
    import torch

    from iclevr.images import OUTPUT_SIZE, to_output_size
    from iclevr.sampling import sample_batches

    y = L.encode_many(conditions)  # (N, 24)
    runs = {}
    for s in seeds:
        runs[s] = torch.empty((len(y), 3, OUTPUT_SIZE, OUTPUT_SIZE))  # filled batch by batch, no copies
        for start, x in sample_batches(
            model, y, schedule=info.schedule, sampler=sampler.model_copy(update={"seed": s}), callback=on_step
        ):
            runs[s][start : start + len(x)] = to_output_size(x)  # (b, 3, 64, 64)
    return runs


def _sampling_task(bar, sampler: SamplerSettings, info, conditions: dict, seeds: list[int]):
    """Add the sampling task to `bar`: one tick per sampler step of every chunk of every split and seed."""
    import math

    from iclevr.sampling import resolve_steps

    steps = resolve_steps(sampler, info.schedule)
    chunks = sum(math.ceil(len(c) / sampler.batch_size) for c in conditions.values())
    return bar.add_task(
        f"sampling ({sampler.sampler}, {steps} steps, {len(seeds)} seed(s))", total=chunks * len(seeds) * steps
    )


def _drawing_source(settings: EvalSettings, splits: tuple[str, ...], console=None) -> dict:
    """What is scored, checked first: the --images folders, or the trained model and its resolved sampler."""
    from iclevr.device import pick_device
    from iclevr.generate import load_model, with_weights_defaults

    if settings.images is not None:
        return {
            "folders": image_folders(settings.images, splits),
            "model": None,
            "info": None,
            "sampler": None,
            "device": pick_device(settings.sampler.device),
        }
    model, info, device = load_model(settings.checkpoint, settings.sampler.device, console)
    return {
        "folders": None,
        "model": model,
        "info": info,
        "device": device,
        "sampler": with_weights_defaults(settings.sampler, info.sampler),
    }


def _check_evaluator_file(settings: EvalSettings) -> None:
    """Fail before any other work when the evaluator named or found is not a file."""
    from iclevr.evaluation.evaluator import choose_evaluator_file

    chosen = choose_evaluator_file(settings.evaluator, settings.data_dir)
    if chosen is not None and not chosen.is_file():
        raise UserError(f"evaluator file not found: {chosen}")


def _report_head(settings: EvalSettings, src: dict, evaluator) -> dict:
    """report.json's fields besides the splits."""
    info, sampler = src["info"], src["sampler"]
    return {
        "checkpoint": str(info.path) if info else None,
        "images": str(settings.images) if src["folders"] else None,
        "model": {"preset": info.preset, "step": info.step} if info else None,
        "sampler": sampler.model_dump(mode="json") if sampler else None,
        "data_dir": str(settings.data_dir) if settings.data_dir else None,
        "evaluator": evaluator.describe(),
        "settings": settings.model_dump(mode="json"),
        "splits": {},
    }


def evaluate(settings: EvalSettings, console=None) -> dict:
    """Draw (or read) each split's images, score them, write PNGs, grids and report.json; returns the report."""
    from iclevr.data.course import derived_val_note, load_conditions
    from iclevr.evaluation.fit import load_evaluator
    from iclevr.evaluation.html import write_report
    from iclevr.fileio import check_writable, write_result_json
    from iclevr.images import save_grid, save_images
    from iclevr.progress import progress_bar

    splits = L.SPLITS if settings.split == "all" else (settings.split,)
    src = _drawing_source(settings, splits, console)  # fails fast: no trained model, no image folder
    _check_evaluator_file(settings)
    conditions = load_conditions(settings.data_dir, splits)  # the JSON lists only, never the training images
    note = derived_val_note(settings.data_dir) if L.VAL_SPLIT in splits else None
    if note and console is not None:
        console.print(note)
    wanted = _fidelity_wanted(settings, conditions, console)  # a KID request that cannot be met fails here
    out = check_writable(settings.out or default_out(src["info"].path if src["info"] else None))
    evaluator = load_evaluator(settings.evaluator, settings.data_dir, src["device"], console, settings.own_evaluator)
    report = _report_head(settings, src, evaluator)
    sampling = src["folders"] is None
    annotated: dict[str, bytes] = {}
    with progress_bar(console, enabled=sampling and console is not None, transient=True) as bar:
        task = _sampling_task(bar, src["sampler"], src["info"], conditions, settings.seeds) if sampling else None
        for split in splits:  # one split at a time: only its images are held, then scored and released
            if sampling:
                runs = generate(
                    src["model"],
                    src["info"],
                    src["sampler"],
                    conditions[split],
                    settings.seeds,
                    on_step=lambda d: bar.advance(task),
                )
                save_images(next(iter(runs.values())), out / "images" / split)
            else:
                runs = {"images": load_image_folder(src["folders"][split], len(conditions[split]))}
            save_grid(next(iter(runs.values())), out / f"{split}_grid.png", nrow=8)  # the first seed's
            report["splits"][split] = score_split(evaluator, runs, conditions[split])
            if wanted and (f := _fidelity(evaluator, runs, conditions[split], settings, console)) is not None:
                report["splits"][split]["fidelity"] = f
            annotated[split] = _write_annotated(out, split, runs, report["splits"][split], settings.annotate_all_seeds)
            del runs
    write_result_json(out / "report.json", report)  # paths relative to out (or iclevr/...)
    write_report(out / "report.html", report, images=annotated, title=_report_title(report))
    report["out"] = str(out)
    return report


def _fidelity_wanted(settings: EvalSettings, conditions: dict, console) -> bool:
    """Whether to measure KID/FD: asked for (then every split must have enough images, else one error before
    anything is written), off, or by default wherever every split has enough images (else one note)."""
    from iclevr.evaluation.fidelity import check_count

    per_seed = 1 if settings.images is not None else len(settings.seeds)
    smallest = min(conditions, key=lambda s: len(conditions[s]))
    n = len(conditions[smallest]) * per_seed
    if settings.fidelity is False:
        return False
    if settings.fidelity:
        check_count(
            n, f"{smallest} ({len(conditions[smallest])} conditions x {per_seed} seed(s))", settings.kid_subset_size
        )
        return True
    if n < settings.kid_subset_size:
        if console is not None:
            console.print(
                f"[dim]fidelity (KID) skipped: {smallest} gives {n} images, fewer than the subset size "
                f"{settings.kid_subset_size}; score more seeds to measure it[/]"
            )
        return False
    return True


def _fidelity(evaluator, runs: dict, conditions: list[list[str]], settings: EvalSettings, console) -> dict | None:
    """KID/FD of a split's images (all seeds pooled) against real images, with the real-vs-real floor; None
    (with a note) where the default could not measure it, an error where --kid asked for it."""
    import torch

    from iclevr.evaluation.fidelity import split_fidelity

    generated = torch.cat([x for x in runs.values()])  # (seeds * N, 3, 64, 64)
    try:
        return split_fidelity(evaluator.net, generated, conditions, settings.data_dir, settings.kid_subset_size)
    except UserError as e:
        if settings.fidelity:
            raise
        if console is not None:
            console.print(f"[dim]fidelity (KID) skipped: {e}[/]")
        return None


def _write_annotated(out: Path, split: str, runs: dict, split_report: dict, every_seed: bool) -> bytes:
    """Write <split>_annotated.png (the first run) and, if asked, one per further seed; returns the first's PNG."""
    from iclevr.evaluation.annotate import annotate_split
    from iclevr.fileio import atomic_write_bytes
    from iclevr.images import to_uint8

    first = b""
    for i, (label, x) in enumerate(runs.items()):
        if i and not every_seed:
            break
        seed = "images" if label == "images" else f"sampling seed {label}"
        png = annotate_split(to_uint8(x), split_report, run=i, title=f"{split}, {seed}").png()
        name = f"{split}_annotated.png" if i == 0 else f"{split}_annotated_s{label}.png"
        atomic_write_bytes(out / name, png)
        first = first or png
    return first


def _report_title(report: dict) -> str:
    """The HTML page's title: what was scored."""
    what = report.get("checkpoint") or report.get("images") or "model"
    return f"iclevr eval: {Path(str(what)).name or what}"


def score_run(
    run_dir: Path,
    *,
    data,
    sampler: SamplerSettings,
    seeds: list[int],
    evaluator: Path | None = None,
    grid_path: Path | None = None,
    console=None,
) -> dict:
    """Evaluate a run folder on both splits (for compare-schedules): {"accuracy": {split: [per seed]}, ...}."""
    import shutil

    settings = EvalSettings(
        checkpoint=run_dir, split="all", data_dir=data.data_dir, evaluator=evaluator, seeds=seeds, sampler=sampler
    )
    report = evaluate(settings, console)
    if grid_path is not None:
        Path(grid_path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(Path(report["out"]) / "new_test_grid.png", grid_path)
    return {
        "accuracy": {s: r["accuracy"] for s, r in report["splits"].items()},
        "mean": {s: r["mean"] for s, r in report["splits"].items()},
        "hits": {s: [x["hits"] for x in r["runs"]] for s, r in report["splits"].items()},
        "evaluator": report["evaluator"],
    }
