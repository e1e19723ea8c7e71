"""The course metric (SPEC §6) against hand-computed cases, and the error analysis."""

from __future__ import annotations

import pytest
import torch

from iclevr import labels as L
from iclevr.evaluation.run import accuracy, analyse, classify_wrong, full_swaps, image_hits, score_split, topk_predictions


def _scores(*rows: dict[str, float]) -> torch.Tensor:
    """Build (N, 24) scores from {label name: score} rows (others 0)."""
    s = torch.zeros(len(rows), 24)
    for i, row in enumerate(rows):
        for name, v in row.items():
            s[i, L.LABEL_TO_INDEX[name]] = v
    return s


def test_topk_hits_hand_case():
    y = L.encode_many([["red sphere"], ["red sphere", "blue cube"], ["gray cube", "cyan cylinder", "yellow cube"]])
    scores = _scores(
        {"red sphere": 0.9, "blue cube": 0.8},  # k=1: top-1 = red sphere -> 1 hit
        {"red sphere": 0.9, "green cube": 0.8, "blue cube": 0.7},  # k=2: top-2 = red sphere, green cube -> 1
        {"gray cube": 0.5, "cyan cylinder": 0.6, "yellow cube": 0.7},  # k=3: all three -> 3
    )
    assert image_hits(scores, y) == [1, 1, 3]
    assert accuracy(scores, y) == (5, 6)
    assert topk_predictions(scores, y)[1] == [L.LABEL_TO_INDEX["red sphere"], L.LABEL_TO_INDEX["green cube"]]


def test_micro_average_differs_from_per_image_mean():
    y = L.encode_many([["red sphere"], ["gray cube", "blue cube", "cyan cylinder"]])
    scores = _scores({"blue sphere": 0.9, "red sphere": 0.1},  # 0 of 1
                     {"gray cube": 0.9, "blue cube": 0.8, "cyan cylinder": 0.7})  # 3 of 3
    hits, total = accuracy(scores, y)
    per_image_mean = (0 / 1 + 3 / 3) / 2
    assert (hits, total) == (3, 4)
    assert hits / total == pytest.approx(0.75) and per_image_mean == pytest.approx(0.5)


def test_top_k_uses_the_highest_scores_not_a_threshold():
    y = L.encode_many([["red sphere", "blue cube"]])
    # both requested scores are low, but they are the two highest: 2 hits (a 0.5 threshold would give 0)
    scores = torch.full((1, 24), 0.01)
    scores[0, L.LABEL_TO_INDEX["red sphere"]] = 0.2
    scores[0, L.LABEL_TO_INDEX["blue cube"]] = 0.3
    assert accuracy(scores, y) == (2, 2)


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError):
        accuracy(torch.zeros(2, 24), torch.zeros(3, 24))


def test_binding_errors_and_most_missed():
    red_sphere, blue_cube = L.LABEL_TO_INDEX["red sphere"], L.LABEL_TO_INDEX["blue cube"]
    blue_sphere, red_cube = L.LABEL_TO_INDEX["blue sphere"], L.LABEL_TO_INDEX["red cube"]
    assert classify_wrong(blue_sphere, [red_sphere, blue_cube]) == "binding"
    assert classify_wrong(L.LABEL_TO_INDEX["red cylinder"], [red_sphere, blue_cube]) == "colour"
    assert classify_wrong(L.LABEL_TO_INDEX["green sphere"], [red_sphere, blue_cube]) == "shape"
    assert classify_wrong(L.LABEL_TO_INDEX["green cylinder"], [red_sphere, blue_cube]) == "other"
    assert full_swaps([red_sphere, blue_cube], [blue_sphere, red_cube]) == 1
    assert full_swaps([red_sphere, blue_cube], [blue_sphere, blue_cube]) == 0
    a = analyse([[red_sphere, blue_cube], [red_sphere]], [[blue_sphere, red_cube], [red_sphere]])
    assert a["binding"] == {"wrong_predictions": 2, "share_of_wrong": 1.0, "images": 1, "images_total": 2,
                            "full_swaps": 1}
    assert a["per_class_recall"]["red sphere"] == 0.5 and a["per_class_recall"]["blue cube"] == 0.0
    assert a["per_class_recall"]["gray cube"] is None
    assert a["most_missed"][0] == {"label": "red sphere", "missed": 1, "requested": 2} or \
        a["most_missed"][0] == {"label": "blue cube", "missed": 1, "requested": 1}
    assert {m["label"] for m in a["most_missed"]} == {"red sphere", "blue cube"}


class _FixedEvaluator:
    """Stands in for a network: returns preset scores per call."""

    def __init__(self, outputs):
        self.outputs = list(outputs)

    def scores(self, x):
        return self.outputs.pop(0)


def test_score_split_mean_std_over_seeds():
    conditions = [["red sphere"], ["gray cube", "blue cube"]]
    good = _scores({"red sphere": 1}, {"gray cube": 1, "blue cube": 1})  # 3/3
    half = _scores({"red sphere": 1}, {"gray cube": 1, "green cube": 1})  # 2/3
    r = score_split(_FixedEvaluator([good, half]), {0: None, 1: None}, conditions)
    assert [run["hits"] for run in r["runs"]] == [3, 2] and r["objects"] == 3
    assert r["accuracy"] == pytest.approx([1.0, 2 / 3])
    assert r["mean"] == pytest.approx(5 / 6) and r["std"] == pytest.approx(1 / 6)
    assert (r["hits"], r["total"]) == (5, 6)
    assert r["runs"][1]["per_condition"] == [1, 1]
    assert r["runs"][1]["predicted"][1] == ["gray cube", "green cube"]
