"""The course metric and its error analysis (docs/metric.md), as pure functions of scores and label names.

The metric: for an image with k requested objects take the k classes with the highest evaluator outputs;
hits = how many of them were requested; accuracy = sum(hits) / sum(k) over the whole split (a micro
average, not a per-image mean), so a split of 72 objects moves in steps of 1/72.
Exactly tied outputs go to the lower class index. That is what the course script's `out[i].topk(k)` does
on the GPU it runs on (CUDA's top-k fills the places left at the k-th value in index order); torch.topk on
the CPU breaks ties in another, unspecified order, so a stable sort is used instead.

The error analysis reads label names of the form "<colour> <shape>" ("red sphere"), so this module needs
nothing from the rest of the package: callers pass the vocabulary in.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

# Why a predicted-but-not-requested object is wrong: "binding" = a requested colour on another requested
# object's shape; "colour" = only its colour was requested; "shape" = only its shape was; else "other".
KINDS = ("binding", "colour", "shape", "other")


# ---- the metric ------------------------------------------------------------------------------------


def topk_predictions(scores, y) -> list[list[int]]:
    """For each image the indices of its k highest scores, k = number of requested objects (ties: lower index)."""
    import torch

    scores, y = torch.as_tensor(scores, dtype=torch.float32).cpu(), torch.as_tensor(y).cpu()
    if scores.shape != y.shape or scores.ndim != 2:
        raise ValueError(f"scores {tuple(scores.shape)} and labels {tuple(y.shape)} must both be (N, classes)")
    ks = (y > 0.5).sum(dim=1).tolist()
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices  # (N, classes)
    return [order[i, :k].tolist() for i, k in enumerate(ks)]


def image_hits(scores, y) -> list[int]:
    """Hits per image: how many of its top-k classes were requested."""
    import torch

    y = torch.as_tensor(y).cpu()
    return [sum(int(y[i, c] > 0.5) for c in pred) for i, pred in enumerate(topk_predictions(scores, y))]


def accuracy(scores, y) -> tuple[int, int]:
    """The course metric's numerator and denominator: (sum of top-k hits, sum of k) over all images."""
    import torch

    return sum(image_hits(scores, y)), int((torch.as_tensor(y) > 0.5).sum())


# ---- error analysis --------------------------------------------------------------------------------


def _parts(name: str) -> tuple[str, str]:
    """'red sphere' -> ('red', 'sphere')."""
    colour, shape = name.split()
    return colour, shape


def classify_wrong(wrong: str, requested: Sequence[str]) -> str:
    """Why a predicted-but-not-requested object is wrong: one of KINDS."""
    colours, shapes = {_parts(r)[0] for r in requested}, {_parts(r)[1] for r in requested}
    colour, shape = _parts(wrong)
    if colour in colours and shape in shapes:
        return "binding"  # a requested colour on another requested object's shape
    return "colour" if colour in colours else "shape" if shape in shapes else "other"


def full_swaps(requested: Sequence[str], predicted: Sequence[str]) -> int:
    """Pairs of requested objects whose colours and shapes are both swapped in the prediction."""
    pred = set(predicted)
    count = 0
    for i, a in enumerate(requested):
        for b in requested[i + 1 :]:
            (ca, sa), (cb, sb) = _parts(a), _parts(b)
            if ca != cb and sa != sb and f"{ca} {sb}" in pred and f"{cb} {sa}" in pred:
                count += 1
    return count


def analyse(
    requested: Sequence[Sequence[str | int]], predicted: Sequence[Sequence[str | int]], vocabulary: Sequence[str]
) -> dict:
    """Per-class recall, the five objects most often missed, and the kinds of wrong predictions (KINDS)."""
    # objects are label names, or indices into `vocabulary` (the class names in the evaluator's output order)
    requested = [[o if isinstance(o, str) else vocabulary[o] for o in req] for req in requested]
    predicted = [[o if isinstance(o, str) else vocabulary[o] for o in pred] for pred in predicted]
    asked, found, kinds = Counter(), Counter(), Counter()
    binding_images = swaps = 0
    for req, pred in zip(requested, predicted):
        asked.update(req)
        found.update(set(req) & set(pred))
        wrong = [classify_wrong(w, req) for w in pred if w not in req]
        kinds.update(wrong)
        binding_images += "binding" in wrong
        swaps += full_swaps(req, pred)
    recall = {name: round(found[name] / asked[name], 4) if asked[name] else None for name in vocabulary}
    order = {name: i for i, name in enumerate(vocabulary)}
    missed = sorted(
        (name for name in asked if asked[name] > found[name]), key=lambda name: (found[name] - asked[name], order[name])
    )
    n_wrong = sum(kinds.values())
    return {
        "per_class_recall": recall,
        "most_missed": [
            {"label": name, "missed": asked[name] - found[name], "requested": asked[name]} for name in missed[:5]
        ],
        "wrong_predictions": {"total": n_wrong, **{k: kinds.get(k, 0) for k in KINDS}},
        "binding": {
            "wrong_predictions": kinds.get("binding", 0),
            "share_of_wrong": round(kinds.get("binding", 0) / n_wrong, 4) if n_wrong else 0.0,
            "images": binding_images,
            "images_total": len(requested),
            "full_swaps": swaps,
        },
    }
