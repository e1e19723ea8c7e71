"""The HTML report: its numbers are report.json's, one grid cell per condition, valid and self-contained HTML,
and (where Chromium is installed) a real browser draws it."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser

import numpy as np
import pytest
from PIL import Image
from report_fixture import fake_conditions, fake_report, solid_images

from iclevr import labels as L
from iclevr.evaluation.annotate import annotate_split, png_bytes
from iclevr.evaluation.html import render_comparison, render_report, write_report

VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}
SVG_EMPTY = {"rect", "path", "line", "circle"}  # written self-closing (<rect .../>) inside inline SVG


class Page(HTMLParser):
    """Collects what the tests check: unbalanced tags, tagged numbers with their text, images, tags used."""

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.stack, self.errors, self.numbers, self.images, self.tags = [], [], [], [], set()
        self._open_numbers = []  # [key, value, text parts, depth]
        self.feed(text)
        self.close()
        if self.stack:
            self.errors.append(f"never closed: {self.stack}")

    def handle_starttag(self, tag, attrs):
        self.tags.add(tag)
        a = dict(attrs)
        if tag == "img":
            self.images.append(a)
        if tag not in VOID:
            self.stack.append(tag)
        if "data-key" in a:
            self._open_numbers.append([a["data-key"], json.loads(a["data-value"]), [], len(self.stack)])

    def handle_startendtag(self, tag, attrs):
        self.tags.add(tag)
        if tag == "img":
            self.images.append(dict(attrs))
        elif tag not in VOID | SVG_EMPTY:
            self.errors.append(f"self-closing <{tag}/>")

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
            return
        if self._open_numbers and self._open_numbers[-1][3] == len(self.stack):
            key, value, parts, _ = self._open_numbers.pop()
            self.numbers.append((key, value, "".join(parts)))
        self.stack.pop()

    def handle_data(self, data):
        for entry in self._open_numbers:
            entry[2].append(data)


def lookup(report: dict, key: str):
    """A report value by its data-key path ("splits/test/runs/0/accuracy")."""
    node = report
    for part in key.split("/"):
        node = node[int(part)] if isinstance(node, list) else node[part]
    return node


def shows(text: str, value) -> bool:
    """Does the page text show `value` (rounded as printed: 0.7361, 0.74, 73.6%, 12, 2/3)?"""
    if value is None:
        return text in ("–", "not requested")
    match = re.fullmatch(r"(-?\d+(?:\.(\d+))?)(%|/\d+| min)?", text.strip())
    if match is None:
        return False
    shown, decimals, unit = float(match[1]), len(match[2] or ""), match[3] or ""
    target = value * 100 if unit == "%" else value / 60 if unit == " min" else value
    return abs(shown - target) <= 0.5 * 10**-decimals + 1e-12


def decode(src: str) -> Image.Image:
    """The PNG inside a data: URI."""
    assert src.startswith("data:image/png;base64,")
    return Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1])))


@pytest.fixture(scope="module")
def sample():
    """A realistic report (test: 32 conditions of 1-3 objects, new_test: 32 of 2-3; three seeds) and its grids."""
    report = fake_report({"test": fake_conditions(32, 1, seed=1), "new_test": fake_conditions(32, 2, seed=2)})
    grids = {s: annotate_split(solid_images(32), r) for s, r in report["splits"].items()}
    page = render_report(report, images={s: g.png() for s, g in grids.items()}, title="iclevr eval: tiny-run")
    return report, grids, page


def test_every_number_on_the_page_is_the_reports(sample):
    report, _, page = sample
    parsed = Page(page)
    assert parsed.errors == []
    keys = {key for key, _, _ in parsed.numbers}
    for key, value, text in parsed.numbers:
        assert lookup(report, key) == value, key
        assert shows(text, value), (key, value, text)
    for split, r in report["splits"].items():  # everything the brief asks for is there
        want = {f"splits/{split}/{k}" for k in ("mean", "std", "hits", "total", "objects")}
        want |= {f"splits/{split}/runs/{i}/accuracy" for i in range(len(r["runs"]))}
        want |= {f"splits/{split}/per_class_recall/{name}" for name in L.LABELS}
        want |= {f"splits/{split}/wrong_predictions/{k}" for k in ("total", "binding", "colour", "shape", "other")}
        want |= {f"splits/{split}/binding/{k}" for k in ("images", "images_total", "full_swaps", "share_of_wrong")}
        want |= {f"splits/{split}/most_missed/{i}/missed" for i in range(len(r["most_missed"]))}
        want |= {f"splits/{split}/runs/0/per_condition/{i}" for i in range(len(r["conditions"]))}
        assert want <= keys, sorted(want - keys)[:5]
        assert r["most_missed"] and r["wrong_predictions"]["total"] > 0  # the sample exercises every table
    assert "evaluator/heldout/test-like" in keys and "model/step" in keys


def test_one_grid_per_split_with_one_cell_per_condition(sample):
    report, grids, page = sample
    parsed = Page(page)
    assert len(parsed.images) == len(report["splits"])
    for img, (split, grid) in zip(parsed.images, grids.items()):
        assert split in img["alt"]
        assert decode(img["src"]).size == grid.image.size
        assert base64.b64decode(img["src"].split(",", 1)[1]) == grid.png()
        n = len(report["splits"][split]["conditions"])
        assert len(grid.cells) == n and (grid.rows, grid.columns) == (-(-n // 8), 8)


def test_self_contained_and_escaped(sample):
    report, _, page = sample
    parsed = Page(page)
    assert "http://" not in page and "https://" not in page
    assert not parsed.tags & {"script", "link", "iframe", "object", "embed", "base"}
    assert "@import" not in page and "url(" not in page
    assert all(img["src"].startswith("data:image/png;base64,") for img in parsed.images)
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; more" in page  # the settings' text, escaped
    assert report["evaluator"]["sha256"] in page and "class_embedding" in page and "dpmpp-sde" in page


def test_a_report_of_existing_images_and_bad_arguments():
    report = fake_report({"test": fake_conditions(5, 1, seed=4)}, seeds=(0,))
    report.update(checkpoint=None, images="my_pngs", model=None, sampler=None)
    report["splits"]["test"]["runs"][0]["seed"] = "images"
    page = render_report(report, images={}, title="scored images")
    assert Page(page).errors == [] and "scored existing images from" in page and "no annotated grid" in page
    with pytest.raises(ValueError, match="new_test"):
        render_report(report, images={"new_test": png_bytes(Image.new("RGB", (4, 4)))})
    with pytest.raises(ValueError, match="not PNG"):
        render_report(report, images={"test": b"GIF89a"})


def test_write_report_writes_the_rendered_page(tmp_path, sample):
    report, grids, page = sample
    path = write_report(
        tmp_path / "eval" / "report.html",
        report,
        images={s: g.png() for s, g in grids.items()},
        title="iclevr eval: tiny-run",
    )
    assert path.read_text() == page
    assert [p.name for p in path.parent.iterdir()] == ["report.html"]


def comparison_report():
    """A report shaped like compare-schedules' report.json: val chooses (linear), test/new_test are reported."""
    rows = []
    for name, base in (("linear", 0.61), ("cosine", 0.68), ("sigmoid", 0.65)):
        splits = {
            s: {"values": [base + d, base + 2 * d], "mean": base + 1.5 * d, "std": d / 2}
            for s, d in (("test", 0.01), ("new_test", 0.02))
        }
        splits = {"val": {"values": [0.9 - base], "mean": 0.9 - base, "std": 0.0}, **splits}
        rows.append({"name": name, "splits": splits, "final_loss": 0.031, "train_wall_s": 600.0, "runs": []})
    return {"runs": rows, "best": "linear", "settings": {"seeds": [0], "epochs": 3}}


def test_comparison_sets_schedules_side_by_side():
    report = comparison_report()
    rows = report["runs"]
    grid = png_bytes(Image.fromarray(solid_images(1, 32)[0]))
    page = render_comparison(
        report, grids={r["name"]: grid for r in rows}, figures={"noise schedules": grid, "accuracy by schedule": grid}
    )
    parsed = Page(page)
    assert parsed.errors == [] and "https://" not in page and "http://" not in page
    assert len(parsed.images) == 2 + len(rows)
    for key, value, text in parsed.numbers:
        assert lookup(report, key) == value and shows(text, value), (key, text)
    keys = {k for k, _, _ in parsed.numbers}
    assert {f"runs/{i}/splits/{s}/mean" for i in range(3) for s in ("val", "test", "new_test")} <= keys
    cards = re.findall(r'id="schedule-(\w+)".*?(?=<section|$)', page, flags=re.S)
    assert cards == ["linear", "cosine", "sigmoid"]
    assert page.count('class="best"') == 1  # on val only, although cosine leads test and new_test
    linear = page[page.index('id="schedule-linear"') : page.index('id="schedule-cosine"')]
    assert 'class="best"' in linear and linear.index("splits/val/mean") < linear.index("splits/test/mean")
    with pytest.raises(ValueError, match="karras"):
        render_comparison(report, grids={"karras": grid}, figures={})


def find_chromium() -> str | None:
    """The Chromium (or Chrome) executable on PATH, if any."""
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.mark.slow
@pytest.mark.skipif(
    find_chromium() is None,
    reason="Chromium is not installed (Debian: apt-get install "
    "chromium); the page's structure is still checked by the tests above",
)
def test_a_real_browser_draws_the_page(tmp_path, sample):
    report, grids, _ = sample
    page = write_report(tmp_path / "report.html", report, images={s: g.png() for s, g in grids.items()})
    shot = tmp_path / "shot.png"
    cmd = [
        find_chromium(),
        "--headless",
        "--disable-gpu",
        "--no-sandbox",
        "--hide-scrollbars",
        "--disable-dev-shm-usage",
        f"--user-data-dir={tmp_path / 'profile'}",
        f"--screenshot={shot}",
        "--window-size=1200,2000",
        page.resolve().as_uri(),
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert shot.is_file(), result.stderr[-2000:]
    image = Image.open(shot).convert("RGB")
    pixels = np.asarray(image).astype(int)  # (2000, 1200, 3)
    assert pixels.shape == (2000, 1200, 3)
    assert pixels.std() > 20 and len(image.getcolors(1 << 24)) > 100  # not blank
    first = solid_images(1)[0, 0, 0]  # the colour of every split's image 0, found nowhere else on the page
    assert (np.abs(pixels - first).sum(axis=2) <= 3).sum() > 64 * 64  # the embedded grids were decoded and drawn
