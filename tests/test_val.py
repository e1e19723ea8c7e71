"""The val list, the one design choices are tuned on: 64 conditions of 1-3 objects, fixed, never equal to a
test or new_test condition; computed without rendering, derived for a kit without val.json, and scored by
`iclevr eval --split val`."""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from itertools import combinations
from pathlib import Path

import pytest
from evaluator_standin import colour_reader, fixed_ranking, fixed_topk
from test_cli_eval import _assert_scored, _painted
from typer.testing import CliRunner

from iclevr import labels as L
from iclevr.cli.app import app
from iclevr.data import plan as P
from iclevr.data.course import derived_val_note, load_conditions, load_kit
from iclevr.errors import UserError

runner = CliRunner()

# sha256 (first 12 hex digits) of json.dumps of the embedded default kit's val list: a change here changes
# the list every tuned choice was measured on
DEFAULT_VAL_SHA256 = "54f2b9e0eaed"


def assert_valid_val(val: list[list[str]], reported: list[list[str]]) -> None:
    """64 conditions of 1-3 distinct known objects, distinct as sets, none equal to a reported condition."""
    assert len(val) == P.VAL_SIZE == 64
    assert Counter(len(c) for c in val) == P.VAL_SIZES
    assert all(len(set(c)) == len(c) and all(x in L.LABELS for x in c) for c in val)
    assert len({frozenset(c) for c in val}) == 64
    assert not {frozenset(c) for c in val} & {frozenset(c) for c in reported}


@pytest.mark.parametrize("spec", [P.DEFAULT_KIT, P.MINI_KIT], ids=["default", "mini"])
def test_embedded_kits_val_avoids_their_reported_lists(spec):
    lists = P.kit_conditions(spec)
    assert_valid_val(lists[L.VAL_SPLIT], lists["test"] + lists["new_test"])
    assert P.kit_conditions(spec)[L.VAL_SPLIT] == lists[L.VAL_SPLIT]  # deterministic


def test_default_val_is_pinned_and_computed_without_rendering(monkeypatch):
    from iclevr.data import synth

    def refuse(*args, **kwargs):
        raise AssertionError("the val list must not render anything")

    monkeypatch.setattr(synth, "write_kit", refuse)
    monkeypatch.setattr(synth, "render_scene", refuse)
    val = load_conditions(None, (L.VAL_SPLIT,))
    assert list(val) == [L.VAL_SPLIT] and val[L.VAL_SPLIT] == P.kit_conditions(P.DEFAULT_KIT)[L.VAL_SPLIT]
    assert hashlib.sha256(json.dumps(val[L.VAL_SPLIT]).encode()).hexdigest()[:12] == DEFAULT_VAL_SHA256
    assert not (Path(os.environ["ICLEVR_HOME"]) / "kits").exists()  # nothing rendered, nothing written
    assert derived_val_note(None) is None  # the embedded kit's val is its own list, not a derived one


def test_avoided_conditions_are_skipped_as_sets():
    free = P.val_conditions([])
    # the reported lists hold the first picks of the free draw, in another object order: none may come back
    avoid = [list(reversed(c)) for c in free[:4] + free[10:40]]
    val = P.val_conditions(avoid)
    assert_valid_val(val, avoid)
    assert [c for c in val if c in free] == [c for c in free if c not in free[:4] + free[10:40]]
    # every single object avoided: the six one-object conditions move to the next size up, still 64
    val = P.val_conditions([[name] for name in L.LABELS])
    assert len(val) == 64 and Counter(map(len, val)) == {2: 30, 3: 34}
    with pytest.raises(UserError, match="cannot draw 64 val conditions"):
        P.val_conditions([list(c) for k in (1, 2, 3) for c in combinations(L.LABELS, k)])


def test_course_kit_without_val_json_gets_the_derived_list(course_kit):
    lists = load_conditions(course_kit, (L.VAL_SPLIT, "test"))
    assert list(lists) == [L.VAL_SPLIT, "test"]
    reported = load_conditions(course_kit)
    assert_valid_val(lists[L.VAL_SPLIT], reported["test"] + reported["new_test"])
    assert lists[L.VAL_SPLIT] == P.val_conditions(reported["test"] + reported["new_test"])
    assert load_conditions(course_kit, (L.VAL_SPLIT,)) == {L.VAL_SPLIT: lists[L.VAL_SPLIT]}  # deterministic
    assert "has no val.json" in derived_val_note(course_kit) and L.VAL_SPLIT not in load_kit(course_kit).splits


def test_course_kit_whose_reported_lists_are_the_free_draw(course_kit):
    """The kit's test and new_test are exactly the first 64 free picks: the derived val must avoid all of them."""
    free = P.val_conditions([])
    (course_kit / "test.json").write_text(json.dumps(free[:32]))
    (course_kit / "new_test.json").write_text(json.dumps([list(reversed(c)) for c in free[32:]]))
    assert_valid_val(load_conditions(course_kit, (L.VAL_SPLIT,))[L.VAL_SPLIT], free)


def test_a_val_json_is_read_and_refused_when_it_overlaps(course_kit):
    mine = [["red cube"], ["blue sphere", "cyan cylinder"]]
    test = json.loads((course_kit / "test.json").read_text())
    mine = [c for c in mine if frozenset(c) not in {frozenset(t) for t in test}]
    (course_kit / "val.json").write_text(json.dumps(mine))
    assert load_conditions(course_kit, (L.VAL_SPLIT,)) == {L.VAL_SPLIT: mine}
    assert derived_val_note(course_kit) is None and load_kit(course_kit).splits[L.VAL_SPLIT] == mine
    new_test = json.loads((course_kit / "new_test.json").read_text())
    (course_kit / "val.json").write_text(json.dumps(mine + [list(reversed(new_test[5]))]))
    for load in (lambda: load_conditions(course_kit, (L.VAL_SPLIT,)), lambda: load_kit(course_kit)):
        with pytest.raises(UserError, match=f"val.json condition {len(mine)} .* is also in new_test.json"):
            load()
    with pytest.raises(UserError, match='unknown split "train"; valid: test, new_test, val'):
        load_conditions(course_kit, ("train",))


def test_eval_split_val_images_on_a_course_kit(course_kit, tmp_path):
    """--images with the colour reader: report.json has splits.val, scored exactly, and the derived list is said."""
    colour_reader(course_kit / "checkpoint.pth")
    val = load_conditions(course_kit, (L.VAL_SPLIT,))[L.VAL_SPLIT]
    predicted = _painted(tmp_path / "flat", val)
    out = tmp_path / "out"
    result = runner.invoke(
        app,
        [
            "eval",
            "--images",
            str(tmp_path / "flat"),
            "--split",
            "val",
            "--data-dir",
            str(course_kit),
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "has no val.json; scoring the derived list" in " ".join(result.output.split())
    report = json.loads((out / "report.json").read_text())
    assert list(report["splits"]) == [L.VAL_SPLIT]
    _assert_scored(report["splits"][L.VAL_SPLIT], val, predicted)
    assert (out / "val_grid.png").is_file() and (out / "val_annotated.png").is_file()


def test_eval_split_val_samples_the_embedded_kits_list(tiny_run, tmp_path):  # noqa: F811 - the fixture
    """Sampling with no --data-dir: 64 val images drawn and scored, nothing rendered, no derived-list line."""
    from iclevr.paths import iclevr_home

    val = load_conditions(None, (L.VAL_SPLIT,))[L.VAL_SPLIT]
    order = [c[0] for c in val[:3]]
    evaluator = fixed_ranking(tmp_path / "fixed.pth", order)
    out = tmp_path / "eval"
    result = runner.invoke(
        app,
        [
            "eval",
            "--split",
            "val",
            "--evaluator",
            str(evaluator),
            "--seeds",
            "0",
            "--steps",
            "2",
            "--out",
            str(out),
            "--device",
            "cpu",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "derived" not in result.output
    report = json.loads((out / "report.json").read_text())
    assert list(report["splits"]) == [L.VAL_SPLIT] and report["data_dir"] is None
    _assert_scored(report["splits"][L.VAL_SPLIT], val, [fixed_topk(order, c) for c in val])
    assert sorted(p.name for p in (out / "images" / "val").iterdir()) == sorted(f"{i}.png" for i in range(64))
    assert not (iclevr_home() / "kits").exists()
