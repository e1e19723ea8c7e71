"""The 24-class i-CLEVR vocabulary (docs/labels.md): index = shape_index * 8 + colour_index.

Conditions are parsed from comma-separated strings or JSON lists into (24,) multi-hot vectors and back.
The course's constants live here too: its two scored splits (plus our val list) and its denoising-trace condition.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Iterable, Sequence

from iclevr.errors import UserError

SHAPES: tuple[str, ...] = ("cube", "sphere", "cylinder")
COLOURS: tuple[str, ...] = ("gray", "red", "blue", "green", "brown", "purple", "cyan", "yellow")
NUM_CLASSES = len(SHAPES) * len(COLOURS)  # 24
MAX_OBJECTS = 3  # objects in an i-CLEVR scene (1 to 3): the object tokens are padded to this many slots
LABELS: tuple[str, ...] = tuple(f"{c} {s}" for s in SHAPES for c in COLOURS)
LABEL_TO_INDEX: dict[str, int] = {name: i for i, name in enumerate(LABELS)}
SPLITS: tuple[str, ...] = ("test", "new_test")  # the course's scored condition lists: <split>.json in a kit
VAL_SPLIT = "val"  # val.json: design choices are tuned on it, so SPLITS are only reported (disjoint from both)
ALL_SPLITS: tuple[str, ...] = SPLITS + (VAL_SPLIT,)  # every condition list a kit has
SPLIT_ROLE = {VAL_SPLIT: "chooses", **{s: "reported" for s in SPLITS}}  # what each list is for in a study
# the most objects in one training image of the course kit and the default embedded kit (docs/course-kit.md)
MAX_TRAINING_OBJECTS = 3


def ordered_splits(splits) -> list[str]:
    """Split names in study order: val (it chooses) first, then test and new_test, then any others."""
    known = [s for s in (VAL_SPLIT, *SPLITS) if s in splits]
    return known + [s for s in splits if s not in known]


TRACE_LABELS: tuple[str, ...] = ("red sphere", "cyan cylinder", "cyan cube")  # the course's denoising-trace condition


def normalise(name: str) -> str:
    """Lower-case a label name and collapse its whitespace: ' Cyan  Cylinder' -> 'cyan cylinder'."""
    return " ".join(str(name).lower().split())


def _closest_word(word: str, options: Sequence[str]) -> str:
    """The option most similar to `word` (character similarity, plus a bonus for the same first letter)."""

    def score(opt: str) -> float:
        return difflib.SequenceMatcher(None, word, opt).ratio() + (0.3 if word[:1] == opt[:1] else 0.0)

    return max(options, key=score)


def suggest(name: str) -> str | None:
    """Return the closest valid label name to `name` (colour and shape matched word by word)."""
    words = normalise(name).split()
    if not words:
        return None
    if len(words) == 2:
        return f"{_closest_word(words[0], COLOURS)} {_closest_word(words[1], SHAPES)}"
    hits = difflib.get_close_matches(" ".join(words), LABELS, n=1, cutoff=0.0)
    return hits[0] if hits else None


def label_index(name: str) -> int:
    """Index of one label name (case and spaces forgiven); a clear UserError for unknown names."""
    key = normalise(name)
    if key in LABEL_TO_INDEX:
        return LABEL_TO_INDEX[key]
    hint = suggest(key)
    did_you_mean = f' — did you mean "{hint}"?' if hint else ""
    raise UserError(f'unknown label "{name}"{did_you_mean} valid: {", ".join(LABELS)}')


def parse_names(names: Iterable[str]) -> list[int]:
    """Validate a list of label names into sorted-by-appearance indices (no duplicates, not empty)."""
    indices: list[int] = []
    for name in names:
        i = label_index(name)
        if i in indices:
            raise UserError(f'duplicate label "{LABELS[i]}" in condition: each object may appear once')
        indices.append(i)
    if not indices:
        raise UserError('empty condition: name at least one object, e.g. "red sphere"')
    return indices


def parse_condition(text: str | Sequence[str]) -> list[int]:
    """Parse 'red sphere, cyan cube', a JSON list string, or a list of names into label indices."""
    if isinstance(text, str):
        stripped = text.strip()
        if stripped.startswith("["):
            try:
                names = json.loads(stripped)
            except json.JSONDecodeError as e:
                raise UserError(f"labels: not valid JSON ({e.msg} at position {e.pos})") from None
            if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                raise UserError("labels: a JSON condition must be a list of strings")
        else:
            names = [part for part in stripped.split(",") if part.strip()] if stripped else []
    else:
        names = list(text)
    return parse_names(names)


def to_multi_hot(indices: Iterable[int]):
    """Indices -> float32 (24,) multi-hot tensor."""
    import torch

    y = torch.zeros(NUM_CLASSES, dtype=torch.float32)
    for i in indices:
        y[int(i)] = 1.0
    return y


def encode(text: str | Sequence[str]):
    """Parse a condition (string or names) straight into a (24,) multi-hot tensor."""
    return to_multi_hot(parse_condition(text))


def encode_many(conditions: Sequence[Sequence[str]]):
    """A list of conditions (lists of names) -> (N, 24) float32 multi-hot tensor."""
    import torch

    if not conditions:
        return torch.zeros(0, NUM_CLASSES)
    return torch.stack([encode(list(c)) for c in conditions])


def check_object_counts(y, what: str = "condition") -> None:
    """UserError when a row of multi-hot y (N, 24) names more than MAX_OBJECTS objects (the object tokens'
    slots); read on the host once, before y reaches a model."""
    most = int((y > 0.5).sum(1).max()) if len(y) else 0
    if most > MAX_OBJECTS:
        raise UserError(
            f"a {what} names {most} objects; the object-token model takes at most {MAX_OBJECTS} (an "
            "i-CLEVR scene holds 1 to 3)"
        )


def decode(multi_hot) -> list[str]:
    """(24,) multi-hot (tensor, array or list) -> list of label names in vocabulary order."""
    values = multi_hot.tolist() if hasattr(multi_hot, "tolist") else list(multi_hot)
    return [LABELS[i] for i, v in enumerate(values) if float(v) > 0.5]


def check_objects_mapping(mapping: dict) -> None:
    """Raise a clear UserError if an objects.json mapping disagrees with the built-in order."""
    if not isinstance(mapping, dict):
        raise UserError("objects.json must be a JSON object mapping label name -> index")
    given = {normalise(k): v for k, v in mapping.items()}
    if given != LABEL_TO_INDEX:
        diffs = [f'"{k}" is {given.get(k)!r}, expected {v}' for k, v in LABEL_TO_INDEX.items() if given.get(k) != v]
        extra = sorted(set(given) - set(LABEL_TO_INDEX))
        detail = "; ".join(diffs[:3] + [f'unknown "{e}"' for e in extra[:3]])
        raise UserError(
            f"objects.json disagrees with the built-in 24-class order ({detail}); "
            "the evaluator's outputs follow that order, so this file cannot be used"
        )


def crowded_warning(conditions: Sequence[Sequence[str]]) -> str | None:
    """One warning line when a condition asks for more objects than any training image holds, else None."""
    counts = [len(set(c)) for c in conditions]
    over = [n for n in counts if n > MAX_TRAINING_OBJECTS]
    if not over:
        return None
    kit = f"the training images of the course kit and the default kit hold at most {MAX_TRAINING_OBJECTS}"
    if len(counts) == 1:
        return f"warning: the condition asks for {over[0]} objects, but {kit}: expect some of them to be missing"
    return (
        f"warning: {len(over)} of {len(counts)} conditions ask for more objects (up to {max(over)}) than any "
        f"training image holds ({kit}): expect some of them to be missing"
    )
