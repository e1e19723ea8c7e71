"""Annotated grids: each generated image at a readable size with the evaluator's verdict written under it.

Under every image its requested objects are listed, each marked found (green) or missed (red) by the
judge, followed by the judge's wrong predictions ("+ blue cube", amber). The marks come from
`hits_from`, which counts exactly what the course metric counts (docs/metric.md): with the top-k predictions
of an image, a requested object is found when it is among them, so the number of green marks of an
image is its hits. Pure numpy/PIL: no torch, and the same inputs always give the same pixels.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from iclevr import labels as L

FOUND = (22, 163, 74)  # green: requested and among the top-k predictions
MISSED = (220, 38, 38)  # red: requested, not among them
WRONG = (217, 119, 6)  # amber: predicted but not requested
INK = (32, 32, 32)
FOUND_TEXT = (21, 112, 52)  # a darker green: text of FOUND stays readable on white
MUTED = (110, 110, 110)
PAPER = (255, 255, 255)
GAP = 6  # pixels between cells and around the grid


@dataclass(frozen=True)
class Mark:
    """One verdict drawn on the grid: the square's box (x0, y0, x1, y1), its colour, the object and its kind."""

    box: tuple[int, int, int, int]
    colour: tuple[int, int, int]
    label: str
    kind: str  # "found", "missed" or "wrong"
    image: int  # index of the condition the mark belongs to


@dataclass
class AnnotatedGrid:
    """The drawn grid, where each image sits (`cells`: (x0, y0, x1, y1) per condition) and every mark."""

    image: Image.Image
    cells: list[tuple[int, int, int, int]]
    marks: list[Mark] = field(default_factory=list)
    rows: int = 0
    columns: int = 0
    cell_size: tuple[int, int] = (0, 0)  # (width, height) of one cell: image plus caption
    header: int = 0  # height of the legend strip above the cells

    def png(self) -> bytes:
        """The grid as PNG bytes (for embedding in the HTML report)."""
        return png_bytes(self.image)


def png_bytes(image: Image.Image) -> bytes:
    """Encode a PIL image as PNG bytes."""
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def _name(item: str | int, label_names: Sequence[str]) -> str:
    """A label given as an index or a name -> its canonical name ('Red  Cube' -> 'red cube')."""
    if isinstance(item, (int, np.integer)):
        return label_names[int(item)]
    return L.normalise(item)


def hits_from(
    requested: Sequence[str | int], predicted: Sequence[str | int], *, label_names: Sequence[str] = L.LABELS
) -> tuple[list[bool], list[str]]:
    """Found flag per requested object and the predicted objects that were not requested; sum(flags) = hits."""
    req = [_name(r, label_names) for r in requested]
    pred = [_name(p, label_names) for p in predicted]
    return [r in pred for r in req], [p for p in pred if p not in req]


def _font(size: int):
    """Pillow's built-in font at `size` (FreeType, Pillow >= 10.1), else its fixed bitmap font."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):  # older Pillow or no FreeType: the small bitmap font
        return ImageFont.load_default()


def _as_hwc(images_u8) -> np.ndarray:
    """Images (N, H, W, 3) or (N, 3, H, W), uint8 (numpy, CPU tensor or list of PIL images) -> (N, H, W, 3)."""
    if isinstance(images_u8, (list, tuple)) and images_u8 and isinstance(images_u8[0], Image.Image):
        images_u8 = np.stack([np.asarray(im.convert("RGB")) for im in images_u8])
    arr = np.asarray(images_u8)
    if arr.ndim != 4 or 3 not in (arr.shape[1], arr.shape[-1]):
        raise ValueError(f"images must be (N, H, W, 3) or (N, 3, H, W), got shape {arr.shape}")
    if arr.dtype != np.uint8:
        raise ValueError(f"images must be uint8 in [0, 255], got {arr.dtype}")
    return arr if arr.shape[-1] == 3 else arr.transpose(0, 2, 3, 1)  # (N, H, W, 3)


def _fit(draw: ImageDraw.ImageDraw, text: str, font, width: float) -> str:
    """`text`, shortened with an ellipsis when it would be wider than `width` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text + "…"


def _legend(draw, font, x: int, y: int, line: int) -> None:
    """The colour key above the grid."""
    for colour, text in (
        (FOUND, "found by the evaluator"),
        (MISSED, "requested, missed"),
        (WRONG, "+ predicted, not requested"),
    ):
        draw.rectangle((x, y + line // 4, x + line // 2, y + line // 4 + line // 2), fill=colour)
        x += line // 2 + 4
        draw.text((x, y), text, fill=INK, font=font)
        x += int(draw.textlength(text, font=font)) + 3 * line // 2


def _caption(draw, font, box, index: int, found: list[bool], req: list[str], wrong: list[str], line: int) -> list[Mark]:
    """Write one image's verdict under it: '#i  hits/k', then a marked line per object; returns the marks."""
    x0, y, x1, _ = box
    side = max(6, line // 2)
    draw.text((x0, y), f"#{index}", fill=MUTED, font=font)
    score = f"{sum(found)}/{len(req)}"
    draw.text((x1 - draw.textlength(score, font=font), y), score, fill=INK, font=font)
    marks = []
    entries = [("found" if f else "missed", r) for f, r in zip(found, req)] + [("wrong", w) for w in wrong]
    for kind, label in entries:
        y += line
        colour = {"found": FOUND, "missed": MISSED, "wrong": WRONG}[kind]
        top = y + (line - side) // 2
        mark = (x0, top, x0 + side - 1, top + side - 1)
        draw.rectangle(mark, fill=colour)
        text = ("+ " if kind == "wrong" else "") + label
        tx = x0 + side + 4
        draw.text((tx, y), _fit(draw, text, font, x1 - tx), fill=FOUND_TEXT if kind == "found" else colour, font=font)
        marks.append(Mark(mark, colour, label, kind, index))
    return marks


def annotated_grid(
    images_u8,
    requested: Sequence[Sequence[str | int]],
    predicted: Sequence[Sequence[str | int]],
    *,
    label_names: Sequence[str] = L.LABELS,
    columns: int = 8,
    cell: int = 128,
    title: str | None = None,
) -> AnnotatedGrid:
    """Draw each image (upscaled to `cell` px) with its requested objects marked found/missed and the wrong
    predictions named; `predicted` holds each image's top-k classes as scored by the evaluator."""
    arr = _as_hwc(images_u8)  # (N, H, W, 3)
    n = len(arr)
    if n == 0 or len(requested) != n or len(predicted) != n:
        raise ValueError(
            f"need one condition and one prediction list per image: {n} images, "
            f"{len(requested)} conditions, {len(predicted)} predictions"
        )
    if columns < 1 or cell < 16:
        raise ValueError(f"columns must be >= 1 and cell >= 16 px, got {columns} and {cell}")
    verdicts = [hits_from(r, p, label_names=label_names) for r, p in zip(requested, predicted)]
    names = [[_name(x, label_names) for x in r] for r in requested]
    font = _font(max(9, round(cell / 10)))
    line = font.getbbox("Ag")[3] + 4 if hasattr(font, "getbbox") else 14
    lines = 1 + max(len(found) + len(wrong) for found, wrong in verdicts)
    columns = min(columns, n)
    rows = math.ceil(n / columns)
    cell_w, cell_h = cell, cell + 4 + lines * line
    header = line * (2 if title else 1) + GAP
    canvas = Image.new("RGB", (GAP + columns * (cell_w + GAP), header + GAP + rows * (cell_h + GAP)), PAPER)
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((GAP, GAP // 2), title, fill=INK, font=font)
    _legend(draw, font, GAP, GAP // 2 + (line if title else 0), line)
    # integer upscales keep the judged pixels exact; other sizes are smoothed
    resample = Image.NEAREST if cell % arr.shape[1] == 0 and cell % arr.shape[2] == 0 else Image.BICUBIC
    cells, marks = [], []
    for i in range(n):
        x = GAP + (i % columns) * (cell_w + GAP)
        y = header + GAP + (i // columns) * (cell_h + GAP)
        canvas.paste(Image.fromarray(arr[i]).resize((cell, cell), resample), (x, y))
        cells.append((x, y, x + cell, y + cell))
        found, wrong = verdicts[i]
        marks += _caption(draw, font, (x, y + cell + 4, x + cell_w, y + cell_h), i, found, names[i], wrong, line)
    return AnnotatedGrid(canvas, cells, marks, rows, columns, (cell_w, cell_h), header)


def annotate_split(images_u8, split_report: dict, *, run: int = 0, **kwargs) -> AnnotatedGrid:
    """The annotated grid of one split of `iclevr eval`'s report (its conditions and run `run`'s top-k
    predictions); refuses a report whose per-condition hits disagree with the marks."""
    conditions, chosen = split_report["conditions"], split_report["runs"][run]
    grid = annotated_grid(images_u8, conditions, chosen["predicted"], **kwargs)
    per_image = [sum(hits_from(r, p)[0]) for r, p in zip(conditions, chosen["predicted"])]
    if "per_condition" in chosen and per_image != list(chosen["per_condition"]):
        raise ValueError("the report's per-condition hits disagree with its predictions")
    return grid


def save_annotated(path: Path, images_u8, requested, predicted, **kwargs) -> AnnotatedGrid:
    """Draw the annotated grid (arguments as `annotated_grid`) and write it to `path` as PNG, atomically."""
    from iclevr.fileio import atomic_write_bytes

    grid = annotated_grid(images_u8, requested, predicted, **kwargs)
    atomic_write_bytes(Path(path), grid.png())
    return grid
