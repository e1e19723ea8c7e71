"""Annotated grids: marks agree with the course metric, one cell per condition, deterministic pixels."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image
from report_fixture import fake_conditions, fake_split, solid_images

from iclevr import labels as L
from iclevr.evaluation.annotate import FOUND, MISSED, WRONG, annotate_split, annotated_grid, hits_from, save_annotated
from iclevr.evaluation.metric import image_hits, topk_predictions

# a stand-in evaluator whose answers are known: condition -> its top-k predictions
CONDITIONS = [
    ["red cube", "blue sphere"],
    ["yellow cylinder"],
    ["gray cube", "purple sphere", "cyan cylinder"],
    ["green cube", "brown sphere"],
]
PREDICTED = [
    ["red cube", "green cylinder"],
    ["yellow cylinder"],
    ["gray sphere", "purple cube", "cyan cylinder"],
    ["brown sphere", "green cube"],
]


def centre(box):
    """The middle pixel of a box (x0, y0, x1, y1)."""
    return ((box[0] + box[2]) // 2, (box[1] + box[3]) // 2)


def stand_in_scores(predicted: list[list[str]]) -> np.ndarray:
    """(N, 24) scores whose top-k are exactly `predicted` (descending 0.9, 0.8, ...; the rest below 0.1)."""
    rng = np.random.default_rng(0)
    scores = rng.uniform(0.0, 0.1, size=(len(predicted), L.NUM_CLASSES)).astype(np.float32)
    for i, pred in enumerate(predicted):
        for rank, name in enumerate(pred):
            scores[i, L.LABEL_TO_INDEX[name]] = 0.9 - 0.1 * rank
    return scores


def test_hits_from_marks_found_missed_and_wrong():
    assert hits_from(["red cube", "blue sphere"], ["red cube", "green cylinder"]) == ([True, False], ["green cylinder"])
    assert hits_from([1, 10], [1, 19]) == ([True, False], ["green cylinder"])  # indices work too
    assert hits_from([" Red  Cube"], ["red cube"]) == ([True], [])


def test_marks_agree_with_the_metric_of_a_known_judge():
    scores = stand_in_scores(PREDICTED)
    y = np.stack([np.asarray(L.encode(c)) for c in CONDITIONS])  # (4, 24)
    assert [[L.LABELS[c] for c in p] for p in topk_predictions(scores, y)] == PREDICTED
    hits = image_hits(scores, y)
    assert hits == [1, 1, 1, 2]
    grid = annotated_grid(solid_images(4), CONDITIONS, PREDICTED)
    for i, h in enumerate(hits):
        assert sum(m.kind == "found" for m in grid.marks if m.image == i) == h
    first = [(m.kind, m.label) for m in grid.marks if m.image == 0]
    assert first == [("found", "red cube"), ("missed", "blue sphere"), ("wrong", "green cylinder")]
    wrong_2 = [m.label for m in grid.marks if m.image == 2 and m.kind == "wrong"]
    assert wrong_2 == ["gray sphere", "purple cube"]
    for m in grid.marks:  # the drawn squares carry the verdict's colour
        assert m.colour == {"found": FOUND, "missed": MISSED, "wrong": WRONG}[m.kind]
        assert grid.image.getpixel(centre(m.box)) == m.colour
        x0, y0, x1, y1 = grid.cells[m.image]
        assert x0 <= m.box[0] and m.box[2] <= x1 and m.box[1] >= y1  # under its own image


def test_one_cell_per_condition_in_order():
    n, columns, cell = 32, 8, 96
    images = solid_images(n)
    conditions = fake_conditions(n, 1, seed=3)
    grid = annotated_grid(images, conditions, conditions, columns=columns, cell=cell)
    assert (grid.rows, grid.columns) == (math.ceil(n / columns), columns) == (4, 8)
    assert len(grid.cells) == n
    w, h = grid.cell_size
    assert grid.image.size == (6 + columns * (w + 6), grid.header + 6 + grid.rows * (h + 6))
    for i, box in enumerate(grid.cells):
        assert box[2] - box[0] == box[3] - box[1] == cell
        assert grid.image.getpixel(centre(box)) == tuple(int(v) for v in images[i, 0, 0])  # image i sits in cell i
        assert grid.image.getpixel((box[0] + 1, box[1] + 1)) == tuple(int(v) for v in images[i, 0, 0])
    assert all(m.kind == "found" for m in grid.marks)  # a perfect judge: every mark green


@pytest.mark.parametrize(("n", "columns", "rows", "cols"), [(5, 8, 1, 5), (9, 8, 2, 8), (7, 3, 3, 3)])
def test_rows_and_columns(n, columns, rows, cols):
    grid = annotated_grid(solid_images(n), fake_conditions(n, 1, 0), fake_conditions(n, 1, 1), columns=columns)
    assert (grid.rows, grid.columns, len(grid.cells)) == (rows, cols, n)


def test_deterministic_and_layout_independent_of_tensor_order():
    images = solid_images(4)
    a = annotated_grid(images, CONDITIONS, PREDICTED, title="test, seed 0").png()
    b = annotated_grid(images.transpose(0, 3, 1, 2).copy(), CONDITIONS, PREDICTED, title="test, seed 0").png()
    c = annotated_grid([Image.fromarray(im) for im in images], CONDITIONS, PREDICTED, title="test, seed 0").png()
    assert a == b == c


def test_a_small_cell_shortens_long_names_but_keeps_the_marks():
    grid = annotated_grid(solid_images(4), CONDITIONS, PREDICTED, cell=48)
    assert [m.kind for m in grid.marks if m.image == 0] == ["found", "missed", "wrong"]
    assert grid.image.getpixel(centre(grid.marks[1].box)) == MISSED


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="one condition"):
        annotated_grid(solid_images(3), CONDITIONS, PREDICTED)
    with pytest.raises(ValueError, match="uint8"):
        annotated_grid(solid_images(4).astype(np.float32), CONDITIONS, PREDICTED)
    with pytest.raises(ValueError, match="shape"):
        annotated_grid(np.zeros((4, 64, 64), np.uint8), CONDITIONS, PREDICTED)


def test_annotate_split_follows_the_report_and_checks_its_hits():
    conditions = fake_conditions(12, 1, seed=5)
    split = fake_split(conditions, seeds=(0, 1))
    for run in (0, 1):
        grid = annotate_split(solid_images(12), split, run=run)
        per_image = [sum(m.kind == "found" for m in grid.marks if m.image == i) for i in range(12)]
        assert per_image == split["runs"][run]["per_condition"]
    assert any(m.kind == "missed" for m in grid.marks)  # the stand-in judge misses some objects
    split["runs"][0]["per_condition"][0] += 1
    with pytest.raises(ValueError, match="disagree"):
        annotate_split(solid_images(12), split)


def test_save_annotated_writes_a_png(tmp_path):
    path = tmp_path / "out" / "test_annotated.png"
    grid = save_annotated(path, solid_images(4), CONDITIONS, PREDICTED)
    with Image.open(path) as im:
        assert im.size == grid.image.size and im.format == "PNG"
    assert [p.name for p in path.parent.iterdir()] == ["test_annotated.png"]  # no temporary file left
