"""The kit writer and the embedded kits: course layout, sequences, balance, splits, determinism, resume, CLI,
and the embedded default's condition lists produced without rendering."""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections import Counter
from pathlib import Path

import pytest
from typer.testing import CliRunner

from iclevr import labels as L
from iclevr.cli.app import app
from iclevr.data import kits as K
from iclevr.data import plan as P
from iclevr.data import synth as Y
from iclevr.data.course import check_images, load_conditions, load_kit, load_train_tensors
from iclevr.errors import UserError

SMALL = dict(scenes=6, max_objects=3, size=(64, 48), seed=5)


def digest(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def kit(tmp_path_factory) -> Path:
    return Y.write_kit(tmp_path_factory.mktemp("synth") / "kit", workers=1, **SMALL)


def test_layout_loads_and_trains_unchanged(kit):
    loaded = load_kit(kit)
    assert len(loaded.train) == 18 and check_images(loaded) == ([], [])
    assert json.loads((kit / "objects.json").read_text()) == L.LABEL_TO_INDEX
    images, y = load_train_tensors(loaded, 64, cache=False)
    assert tuple(images.shape) == (18, 3, 64, 64) and tuple(y.shape) == (18, 24)
    assert (y.sum(1) == y.new_tensor([1, 2, 3] * 6)).all()
    assert Y.is_complete(kit)


def test_sequences_are_prefixes_without_duplicates(kit):
    train = json.loads((kit / "train.json").read_text())
    for scene in range(SMALL["scenes"]):
        seq = [train[Y.image_name(scene, k)] for k in range(3)]
        assert [len(s) for s in seq] == [1, 2, 3]
        assert seq[0] == seq[1][:1] and seq[1] == seq[2][:2]
        assert len(set(seq[2])) == 3


def test_label_plan_is_balanced_and_duplicate_free():
    plan = P.label_plan(6003, 3, 0)
    assert all(len(set(p)) == 3 for p in plan)
    for k in range(3):
        counts = Counter(p[k] for p in plan)
        assert len(counts) == 24 and max(counts.values()) - min(counts.values()) <= 1
    assert P.label_plan(6003, 3, 0) == plan and P.label_plan(6003, 3, 1) != plan


def test_split_sizes(kit):
    test = json.loads((kit / "test.json").read_text())
    new_test = json.loads((kit / "new_test.json").read_text())
    assert Counter(len(c) for c in test) == {1: 6, 2: 12, 3: 14} and sum(map(len, test)) == 72
    assert Counter(len(c) for c in new_test) == {2: 12, 3: 20} and sum(map(len, new_test)) == 84
    for c in test + new_test:
        assert len(set(c)) == len(c) and all(x in L.LABELS for x in c)
    train_sets = {tuple(v) for v in json.loads((kit / "train.json").read_text()).values()}
    assert all(tuple(c) in train_sets for c in test)  # test conditions are combinations seen in training


def test_same_bytes_whatever_the_worker_count(kit, tmp_path):
    other = Y.write_kit(tmp_path / "two", workers=2, **SMALL)
    assert digest(other) == digest(kit)


def test_interrupted_render_resumes_to_the_same_bytes(kit, tmp_path):
    out = tmp_path / "resume"

    def stop_after_first_chunk(done, total):
        if done >= Y.CHUNK * 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        Y.write_kit(out, workers=1, progress=stop_after_first_chunk, **{**SMALL, "scenes": 2 * Y.CHUNK})
    assert not Y.is_complete(out) and not (out / "train.json").exists()
    assert not list(out.rglob("*.tmp"))  # never a half-written file
    first = {p: p.stat().st_mtime_ns for p in (out / "iclevr").glob("*.png")}
    assert len(first) == Y.CHUNK * 3
    (out / "iclevr" / ".CLEVR_train_000020_0.png.abc.tmp").write_bytes(b"half")  # as if killed mid-write
    Y.write_kit(out, workers=1, **{**SMALL, "scenes": 2 * Y.CHUNK})
    assert all(p.stat().st_mtime_ns == t for p, t in first.items())  # finished PNGs were not re-rendered
    assert not list(out.rglob("*.tmp"))
    fresh = Y.write_kit(tmp_path / "fresh", workers=1, **{**SMALL, "scenes": 2 * Y.CHUNK})
    assert digest(out) == digest(fresh)


def test_refuses_foreign_or_different_folders(kit, course_kit):
    with pytest.raises(UserError, match="did not render"):
        Y.write_kit(course_kit, **SMALL)
    with pytest.raises(UserError, match="other settings"):
        Y.write_kit(kit, **{**SMALL, "seed": 6})


def test_parse_size():
    assert Y.parse_size("320x240") == (320, 240) and Y.parse_size("128X96") == (128, 96)
    for bad in ("128", "axb", "100x30", "4x3"):
        with pytest.raises(UserError):
            Y.parse_size(bad)


def test_mini_kit_is_rendered_once_under_iclevr_home(monkeypatch):
    monkeypatch.setattr(P, "MINI_KIT", {**P.MINI_KIT, "scenes": 4})  # the real one is 200 scenes
    first = K.ensure_mini_kit()
    assert first == Path(os.environ["ICLEVR_HOME"]) / "kits" / "mini-v1"
    assert Y.is_complete(first) and len(load_kit(first).train) == 12
    assert json.loads((first / "val.json").read_text()) == P.kit_conditions(P.MINI_KIT)[L.VAL_SPLIT]
    stamp = (first / "train.json").stat().st_mtime_ns
    assert K.ensure_mini_kit() == first and (first / "train.json").stat().st_mtime_ns == stamp


def test_cli_synth_preview_and_check(tmp_path):
    runner = CliRunner()
    out = tmp_path / "cli-kit"
    r = runner.invoke(
        app,
        [
            "data",
            "synth",
            "--out",
            str(out),
            "--scenes",
            "4",
            "--size",
            "64x48",
            "--seed",
            "2",
            "--workers",
            "1",
            "--preview",
            str(tmp_path / "sheet.png"),
        ],
    )
    assert r.exit_code == 0, r.output
    assert "wrote 12 images (64x48)" in r.output and (tmp_path / "sheet.png").is_file()
    assert len(json.loads((out / "train.json").read_text())) == 12
    r = runner.invoke(app, ["data", "check", "--data-dir", str(out)])
    assert r.exit_code == 0 and "ok:" in r.output
    r = runner.invoke(
        app,
        ["data", "preview", "--data-dir", str(out), "--out", str(tmp_path / "full.png"), "--n", "6", "--size", "full"],
    )
    assert r.exit_code == 0 and "6 images" in r.output
    from PIL import Image

    with Image.open(tmp_path / "full.png") as sheet:
        assert sheet.width >= 6 * 64
    for bad, why in (
        (["--size", "100x30"], "not 4:3"),
        (["--max-objects", "0"], "max[-_]objects"),
        (["--scenes", "3"], "other settings"),
    ):  # the folder holds the 4-scene kit
        r = runner.invoke(app, ["data", "synth", "--out", str(out), *bad])
        assert r.exit_code == 2 and re.search(why, r.output), r.output
    r = runner.invoke(app, ["data", "preview", "--data-dir", str(out), "--size", "32"])
    assert r.exit_code == 2


def test_default_kit_is_announced_and_used_when_no_data_dir(monkeypatch):
    from io import StringIO

    from rich.console import Console

    monkeypatch.setattr(P, "DEFAULT_KIT", {**P.DEFAULT_KIT, "scenes": 3, "size": (64, 48)})
    text = StringIO()
    path = K.resolve_data_dir(None, Console(file=text, width=200))
    assert path == Path(os.environ["ICLEVR_HOME"]) / "kits" / "default-v1" and Y.is_complete(path)
    assert "rendering the embedded kit 'default-v1' (9 images" in text.getvalue()
    text.truncate(0)
    assert K.resolve_data_dir(None, Console(file=text)) == path and text.getvalue() == ""  # reused silently
    # the lists eval scores against, produced without rendering, are the ones the rendered kit holds
    assert load_conditions(None, L.ALL_SPLITS) == {
        s: json.loads((path / f"{s}.json").read_text()) for s in L.ALL_SPLITS
    }
    assert load_conditions(None, L.ALL_SPLITS) == load_conditions(path, L.ALL_SPLITS)


def test_cli_synth_three_scenes_into_a_fresh_folder(tmp_path):
    out = tmp_path / "three"
    r = CliRunner().invoke(
        app, ["data", "synth", "--out", str(out), "--scenes", "3", "--size", "64x48", "--workers", "1"]
    )
    assert r.exit_code == 0, r.output
    assert "wrote 9 images (64x48)" in r.output and Y.is_complete(out)
    train = json.loads((out / "train.json").read_text())
    assert sorted(train) == sorted(Y.image_name(i, k) for i in range(3) for k in range(3))
    assert sorted(p.name for p in (out / "iclevr").glob("*.png")) == sorted(train)
    assert [len(train[Y.image_name(i, 2)]) for i in range(3)] == [3, 3, 3]
    assert len(json.loads((out / "val.json").read_text())) == P.VAL_SIZE


# sha256 of each list of the embedded default kit (json.dumps of test.json / new_test.json as the kit holds them):
# a change here means every cached default-v1 kit on disk disagrees with what eval scores against
DEFAULT_LISTS_SHA256 = {"test": "5a64d18fc91b", "new_test": "9c1501905090"}


def test_default_kit_conditions_need_no_rendering():
    lists = load_conditions(None)
    assert {
        s: hashlib.sha256(json.dumps(c).encode()).hexdigest()[:12] for s, c in lists.items()
    } == DEFAULT_LISTS_SHA256
    assert not (Path(os.environ["ICLEVR_HOME"]) / "kits").exists()  # nothing rendered, nothing written
    assert load_conditions(None, ("new_test",)) == {"new_test": lists["new_test"]}
    with pytest.raises(UserError, match='unknown split "train"'):
        load_conditions(None, ("train",))


def test_kit_conditions_equal_what_write_kit_writes(kit):
    assert P.kit_conditions(SMALL) == {s: json.loads((kit / f"{s}.json").read_text()) for s in L.ALL_SPLITS}
    assert load_kit(kit).splits == P.kit_conditions(SMALL)  # val.json is read and checked with the others
    assert load_conditions(kit, (L.VAL_SPLIT,))[L.VAL_SPLIT] == json.loads((kit / "val.json").read_text())


def test_longer_sequences(tmp_path):
    out = Y.write_kit(tmp_path / "five", scenes=2, max_objects=5, size=(64, 48), workers=1)
    train = json.loads((out / "train.json").read_text())
    assert len(train) == 10 and [len(train[Y.image_name(1, k)]) for k in range(5)] == [1, 2, 3, 4, 5]
    assert len(set(train[Y.image_name(0, 4)])) == 5
