"""The course metric (docs/metric.md) against hand-computed cases, and the error analysis."""

from __future__ import annotations

import pytest
import torch

from iclevr import labels as L
from iclevr.evaluation.metric import accuracy, analyse, classify_wrong, full_swaps, image_hits, topk_predictions
from iclevr.evaluation.run import score_split


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
    scores = _scores(
        {"blue sphere": 0.9, "red sphere": 0.1},  # 0 of 1
        {"gray cube": 0.9, "blue cube": 0.8, "cyan cylinder": 0.7},
    )  # 3 of 3
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


def test_tied_scores_go_to_the_lower_class_index():
    """The course script's out[i].topk(k) runs on CUDA, whose top-k fills the places left at the k-th value
    in index order (the CPU's torch.topk picks other tied classes, so it is not what the metric uses)."""
    i = L.LABEL_TO_INDEX
    y = L.encode_many([["gray cube", "red cube"], ["yellow cylinder", "gray cube"], ["red cube", "cyan sphere"]])
    scores = torch.full((3, 24), 0.5)  # row 0: all 24 tied
    scores[1, i["yellow cylinder"]] = 0.9  # row 1: one clear winner, then 23 tied
    scores[2, [i["red cube"], i["blue cube"], i["cyan cube"]]] = 0.8  # row 2: three tied above the rest
    assert topk_predictions(scores, y) == [
        [i["gray cube"], i["red cube"]],
        [i["yellow cylinder"], i["gray cube"]],
        [i["red cube"], i["blue cube"]],
    ]
    assert image_hits(scores, y) == [2, 2, 1] and accuracy(scores, y) == (5, 6)

    def higher_index_first(row: torch.Tensor, k: int) -> list[int]:
        return sorted(range(24), key=lambda c: (-float(row[c]), -c))[:k]

    other = [sum(int(y[n, c]) for c in higher_index_first(scores[n], 2)) for n in range(3)]
    assert other == [0, 1, 0]  # another tie rule scores these rows differently: each row tests the rule


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError):
        accuracy(torch.zeros(2, 24), torch.zeros(3, 24))


def test_binding_errors_and_most_missed():
    assert classify_wrong("blue sphere", ["red sphere", "blue cube"]) == "binding"
    assert classify_wrong("red cylinder", ["red sphere", "blue cube"]) == "colour"
    assert classify_wrong("green sphere", ["red sphere", "blue cube"]) == "shape"
    assert classify_wrong("green cylinder", ["red sphere", "blue cube"]) == "other"
    assert full_swaps(["red sphere", "blue cube"], ["blue sphere", "red cube"]) == 1
    assert full_swaps(["red sphere", "blue cube"], ["blue sphere", "blue cube"]) == 0
    assert full_swaps(["red sphere", "red cube"], ["red cube", "red sphere"]) == 0  # same colour: nothing swapped
    a = analyse([["red sphere", "blue cube"], ["red sphere"]], [["blue sphere", "red cube"], ["red sphere"]], L.LABELS)
    assert a["binding"] == {
        "wrong_predictions": 2,
        "share_of_wrong": 1.0,
        "images": 1,
        "images_total": 2,
        "full_swaps": 1,
    }
    assert a["wrong_predictions"] == {"total": 2, "binding": 2, "colour": 0, "shape": 0, "other": 0}
    assert list(a["per_class_recall"]) == list(L.LABELS)
    assert a["per_class_recall"]["red sphere"] == 0.5 and a["per_class_recall"]["blue cube"] == 0.0
    assert a["per_class_recall"]["gray cube"] is None
    # both missed once; red sphere (index 9) was asked twice, blue cube (index 2) once: ties go in class order
    assert a["most_missed"] == [
        {"label": "blue cube", "missed": 1, "requested": 1},
        {"label": "red sphere", "missed": 1, "requested": 2},
    ]
    by_index = analyse(
        [L.parse_names(["red sphere", "blue cube"]), L.parse_names(["red sphere"])],
        [L.parse_names(["blue sphere", "red cube"]), L.parse_names(["red sphere"])],
        L.LABELS,
    )
    assert by_index == a  # indices into the vocabulary read the same as names


def test_analysis_counts_each_kind_of_wrong_prediction():
    requested = [["red sphere", "blue cube"]] * 4
    predicted = [
        ["red cylinder", "blue cube"],
        ["green sphere", "blue cube"],
        ["green cylinder", "blue cube"],
        ["red sphere", "blue cube"],
    ]
    a = analyse(requested, predicted, L.LABELS)
    assert a["wrong_predictions"] == {"total": 3, "binding": 0, "colour": 1, "shape": 1, "other": 1}
    assert a["binding"]["images"] == 0 and a["binding"]["share_of_wrong"] == 0.0
    assert a["most_missed"] == [{"label": "red sphere", "missed": 3, "requested": 4}]


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
