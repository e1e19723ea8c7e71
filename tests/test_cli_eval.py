"""`iclevr eval` end to end with stand-in evaluators whose answers are known (so the hits it reports are
predicted exactly), `--images` mode, failing fast, and `iclevr evaluator train|export`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from evaluator_standin import colour_reader, colour_reader_topk, expected_hits, fixed_ranking, fixed_topk, paint
from typer.testing import CliRunner

from iclevr.cli.app import app

runner = CliRunner()


def _ok(result):
    assert result.exit_code == 0, result.output
    return result.output


def _painted(folder: Path, conditions: list[list[str]]) -> list[list[str]]:
    """Write folder/0.png.. painted in a reference colour each; returns what the colour reader will answer.

    Even images take their condition's first colour (at least one hit), odd ones the next colour word
    (a hit only when the condition happens to name it)."""
    from iclevr import labels as L

    folder.mkdir(parents=True, exist_ok=True)
    predicted = []
    for i, condition in enumerate(conditions):
        colour = condition[0].split()[0]
        if i % 2:
            colour = L.COLOURS[(L.COLOURS.index(colour) + 1) % len(L.COLOURS)]
        paint(colour).save(folder / f"{i}.png")
        predicted.append(colour_reader_topk(colour, len(condition)))
    return predicted


def _assert_scored(split: dict, conditions: list[list[str]], predicted: list[list[str]]) -> None:
    """The report's split equals what an evaluator answering `predicted` must give, run by run."""
    hits = expected_hits(conditions, predicted)
    objects = sum(len(c) for c in conditions)
    assert 0 < sum(hits) < objects  # neither all nor nothing: the numbers below can tell right from wrong
    assert split["conditions"] == conditions and split["objects"] == objects
    for run in split["runs"]:
        assert run["predicted"] == predicted and run["per_condition"] == hits
        assert (run["hits"], run["total"]) == (sum(hits), objects)
        assert run["accuracy"] == pytest.approx(sum(hits) / objects)
    assert split["mean"] == pytest.approx(sum(hits) / objects) and split["std"] == 0.0


def test_eval_scores_sampled_images_with_a_known_evaluator(tiny_run, course_kit, tmp_path):
    """A stand-in that ranks fixed classes first, whatever the image: the hits follow from the conditions."""
    from iclevr.evaluation.evaluator import load_file, save_own

    tests = json.loads((course_kit / "test.json").read_text())
    new_tests = json.loads((course_kit / "new_test.json").read_text())
    order = list(dict.fromkeys(c[0] for c in tests[:6]))  # the first objects of the first test conditions
    course = fixed_ranking(tmp_path / "fixed.pth", order)
    own = save_own(load_file(course).net, tmp_path / "fixed.safetensors", {"heldout": {}})  # our format too
    out = tmp_path / "eval"
    text = _ok(
        runner.invoke(
            app,
            [
                "eval",
                "--data-dir",
                str(course_kit),
                "--evaluator",
                str(own),
                "--seeds",
                "0,1",
                "--steps",
                "2",
                "--out",
                str(out),
                "--device",
                "cpu",
            ],
        )
    )
    for split in ("test", "new_test"):
        names = sorted(p.name for p in (out / "images" / split).iterdir())
        assert names == sorted(f"{i}.png" for i in range(32))
        assert (out / f"{split}_grid.png").is_file()
    from PIL import Image

    with Image.open(out / "images" / "test" / "0.png") as img:
        assert img.size == (64, 64)  # the 16x16 model's output is upsampled to the course size
    with Image.open(out / "test_grid.png") as img:
        assert img.size == (8 * 66 + 2, 4 * 66 + 2)  # make_grid: 8 per row, 4 rows, padding 2
    report = json.loads((out / "report.json").read_text())
    for split, conditions in (("test", tests), ("new_test", new_tests)):
        r = report["splits"][split]
        assert [run["seed"] for run in r["runs"]] == [0, 1]
        _assert_scored(r, conditions, [fixed_topk(order, c) for c in conditions])
        assert (r["hits"], r["total"]) == (2 * r["runs"][0]["hits"], 2 * r["objects"])
        assert f"{r['mean']:.4f} ± {r['std']:.4f}" in text and f"{r['hits']} / {r['total']}" in text
    assert report["evaluator"]["kind"] == "own" and report["checkpoint"].endswith("ema.safetensors")
    assert report["sampler"]["sampler"] == "ddim" and report["sampler"]["steps"] == 2
    assert (out / report["data_dir"]).resolve() == course_kit.resolve()  # relative to the report's folder
    assert "/" + str(tmp_path).strip("/") not in (out / "report.json").read_text()  # no absolute path
    assert "most often missed" in text and "binding" in text
    _assert_report_page(out, report)


def _assert_report_page(out: Path, report: dict) -> None:
    """report.html shows report.json's numbers, one annotated grid per split whose green marks are the hits."""
    from PIL import Image
    from test_html import Page, decode, lookup

    from iclevr.evaluation.annotate import FOUND, annotate_split
    from iclevr.images import to_uint8

    page = Page((out / "report.html").read_text())
    assert page.errors == [] and len(page.images) == len(report["splits"])
    assert page.numbers and all(lookup(report, key) == value for key, value, _ in page.numbers)
    for img, (split, r) in zip(page.images, report["splits"].items()):
        seed = r["runs"][0]["seed"]
        title = f"{split}, " + ("images" if seed == "images" else f"sampling seed {seed}")
        grid = annotate_split(to_uint8(torch.zeros(len(r["conditions"]), 3, 64, 64)), r, title=title)  # marks' places
        with Image.open(out / f"{split}_annotated.png") as png:
            png = png.convert("RGB")
            assert decode(img["src"]).size == png.size == grid.image.size
            drawn = [png.getpixel(((m.box[0] + m.box[2]) // 2, (m.box[1] + m.box[3]) // 2)) for m in grid.marks]
        found = [
            sum(c == FOUND for c, m in zip(drawn, grid.marks) if m.image == i and m.kind != "wrong")
            for i in range(len(r["conditions"]))
        ]
        assert found == r["runs"][0]["per_condition"]  # the green squares in the written PNG are the hits


def test_eval_images_mode_with_course_checkpoint_in_data_dir(tiny_run, course_kit, tmp_path):
    """The colour reader, found as <data-dir>/checkpoint.pth, judges painted images as predicted."""
    colour_reader(course_kit / "checkpoint.pth")
    conditions = json.loads((course_kit / "test.json").read_text())
    predicted = _painted(tmp_path / "flat", conditions)
    out = tmp_path / "ev-out"
    text = _ok(
        runner.invoke(
            app,
            [
                "eval",
                "--images",
                str(tmp_path / "flat"),
                "--split",
                "test",
                "--data-dir",
                str(course_kit),
                "--out",
                str(out),
            ],
        )
    )
    report = json.loads((out / "report.json").read_text())
    assert list(report["splits"]) == ["test"] and report["evaluator"]["kind"] == "course"
    assert (out / report["evaluator"]["path"]).resolve() == (course_kit / "checkpoint.pth").resolve()
    assert report["checkpoint"] is None
    assert [run["seed"] for run in report["splits"]["test"]["runs"]] == ["images"]
    _assert_scored(report["splits"]["test"], conditions, predicted)
    assert (out / "test_grid.png").is_file() and not (out / "images").exists()
    _assert_report_page(out, report)
    split = report["splits"]["test"]
    assert f"{split['hits']} / {split['total']}" in text
    (tmp_path / "flat" / "31.png").unlink()
    result = runner.invoke(
        app, ["eval", "--images", str(tmp_path / "flat"), "--split", "test", "--data-dir", str(course_kit)]
    )
    assert result.exit_code == 2 and "31.png" in result.output


def test_eval_images_mode_needs_no_training_images(tmp_path):
    """No --data-dir: the embedded kit's condition lists are used, and nothing is rendered for them."""
    from iclevr.data.course import load_conditions
    from iclevr.paths import iclevr_home

    conditions = load_conditions(None, ("new_test",))["new_test"]
    predicted = _painted(tmp_path / "imgs" / "new_test", conditions)
    evaluator = colour_reader(tmp_path / "reader.pth")
    out = tmp_path / "out"
    _ok(
        runner.invoke(
            app,
            [
                "eval",
                "--images",
                str(tmp_path / "imgs"),
                "--split",
                "new_test",
                "--evaluator",
                str(evaluator),
                "--out",
                str(out),
            ],
        )
    )
    report = json.loads((out / "report.json").read_text())
    _assert_scored(report["splits"]["new_test"], conditions, predicted)
    assert report["data_dir"] is None and (out / report["evaluator"]["path"]).resolve() == evaluator.resolve()
    assert not list(iclevr_home().rglob("*.png"))  # no kit rendered, no training image read


def test_eval_fails_fast_without_a_trained_model(tmp_path):
    """A fresh machine: the missing model is reported before any kit is rendered or evaluator trained."""
    import time

    from iclevr.evaluation.evaluator import own_default_path
    from iclevr.paths import iclevr_home

    began = time.perf_counter()
    result = runner.invoke(app, ["eval", "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and "no trained model found" in result.output, result.output
    assert time.perf_counter() - began < 30  # the embedded kit alone took minutes to render
    assert not (iclevr_home() / "kits").exists() and not own_default_path().exists()
    result = runner.invoke(
        app, ["eval", "--images", str(tmp_path), "--split", "test", "--evaluator", str(tmp_path / "missing.pth")]
    )
    assert result.exit_code == 2 and "0.png" in result.output  # the image folder is checked first
    _painted(tmp_path / "flat", [["red cube"]] * 32)
    result = runner.invoke(
        app,
        ["eval", "--images", str(tmp_path / "flat"), "--split", "test", "--evaluator", str(tmp_path / "missing.pth")],
    )
    assert result.exit_code == 2 and "evaluator file not found" in result.output, result.output


@pytest.mark.slow
def test_eval_default_out_and_first_use_own_evaluator(tiny_run, course_kit, tmp_path):
    config = tmp_path / "eval.toml"
    config.write_text("[own_evaluator]\npool = 16\nmax_steps = 1\nheldout = 4\nbatch_size = 8\nworkers = 1\n")
    text = _ok(
        runner.invoke(
            app,
            [
                "eval",
                "--data-dir",
                str(course_kit),
                "--split",
                "new_test",
                "--seeds",
                "3",
                "--steps",
                "1",
                "--config",
                str(config),
            ],
        )
    )
    assert "training the project's own evaluator" in text
    from iclevr.evaluation.evaluator import own_default_path

    assert own_default_path().is_file()
    report = json.loads((tiny_run / "eval" / "report.json").read_text())  # default: <run folder>/eval
    assert list(report["splits"]) == ["new_test"] and report["splits"]["new_test"]["runs"][0]["seed"] == 3
    assert len(list((tiny_run / "eval" / "images" / "new_test").glob("*.png"))) == 32
    # --images on the per-split folder just written scores the same split without sampling
    text = _ok(
        runner.invoke(
            app,
            [
                "eval",
                "--images",
                str(tiny_run / "eval" / "images"),
                "--split",
                "new_test",
                "--data-dir",
                str(course_kit),
                "--out",
                str(tmp_path / "again"),
            ],
        )
    )
    assert "training the project's own evaluator" not in text  # cached
    assert (tmp_path / "again" / "report.json").is_file()


def test_malicious_evaluator_is_refused_and_never_runs(course_kit, tmp_path):
    class Evil:
        def __reduce__(self):
            return (open, (str(tmp_path / "pwned.txt"), "w"))

    torch.save({"model": Evil()}, tmp_path / "checkpoint.pth")
    result = runner.invoke(
        app,
        ["evaluator", "export", "--evaluator", str(tmp_path / "checkpoint.pth"), "--out", str(tmp_path / "copy.pth")],
    )
    assert result.exit_code == 2 and "refused" in result.output
    assert not (tmp_path / "pwned.txt").exists() and not (tmp_path / "copy.pth").exists()
    shutil.copy(tmp_path / "checkpoint.pth", course_kit / "checkpoint.pth")
    _painted(tmp_path / "flat", json.loads((course_kit / "test.json").read_text()))  # images that would score
    result = runner.invoke(
        app, ["eval", "--images", str(tmp_path / "flat"), "--split", "test", "--data-dir", str(course_kit)]
    )
    assert result.exit_code == 2 and "refused" in result.output and not (tmp_path / "pwned.txt").exists()


@pytest.mark.slow
def test_evaluator_train_and_export(tmp_path):
    out = tmp_path / "own.safetensors"
    text = _ok(
        runner.invoke(
            app,
            [
                "evaluator",
                "train",
                "--pool",
                "16",
                "--steps",
                "1",
                "--heldout",
                "4",
                "--out",
                str(out),
                "--config",
                str(_write(tmp_path / "c.json", {"batch_size": 8, "workers": 1})),
            ],
        )
    )
    assert out.is_file() and "held-out" in text and "1-3 objects, 64x48 -> 64x64" in text
    text = _ok(
        runner.invoke(app, ["evaluator", "export", "--evaluator", str(out), "--out", str(tmp_path / "checkpoint.pth")])
    )
    raw = torch.load(tmp_path / "checkpoint.pth", weights_only=True)
    assert list(raw) == ["model"] and raw["model"]["fc.0.weight"].shape == (24, 512)
    result = runner.invoke(app, ["evaluator", "export", "--out", str(tmp_path / "x.pth")])
    assert result.exit_code == 2 and "iclevr evaluator train" in result.output  # no cached evaluator yet


def _write(path: Path, data: dict) -> Path:
    path.write_text(json.dumps(data))
    return path
