"""The docs stay true: the package map of docs/development.md names every module, every docs/ path cited exists,
and no result file or page holds an absolute path of the machine that wrote it."""

from __future__ import annotations

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "iclevr"
CITED = re.compile(r"docs/[\w./-]*\w")  # docs/metric.md, docs/demo_trace.png
# sections of a file that is not in the repo
OUTSIDE_CITATION = re.compile(r"§\s*\d|\bspec(ification)? section \d", re.IGNORECASE)


def development_map() -> list[str]:
    """The module paths listed under iclevr/ in docs/development.md's package map, e.g. 'training/loop.py'."""
    block = (ROOT / "docs" / "development.md").read_text().split("```\niclevr/\n", 1)[1].split("```", 1)[0]
    return [line.split()[0] for line in block.splitlines() if line.startswith("  ") and line.split()]


def package_modules() -> list[str]:
    """Every module of the package (package __init__ files excluded), relative to iclevr/."""
    return sorted(str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py") if p.name != "__init__.py")


def cited_files() -> list[Path]:
    """The project's own text that may cite docs/: the package, tests, benchmarks, presets and the README."""
    files = [ROOT / "README.md", *sorted(PACKAGE.rglob("*.toml"))]
    for folder in ("iclevr", "tests", "benchmarks"):
        files += sorted((ROOT / folder).rglob("*.py"))
    return files


def test_the_development_map_parses():
    listed = development_map()
    assert "training/loop.py" in listed and "evaluation/metric.py" in listed
    assert len(listed) == len(set(listed)), "a module is listed twice"


def test_every_module_is_in_the_development_map():
    listed = set(development_map())
    missing = [m for m in package_modules() if m not in listed]
    assert not missing, f"add to the package map of docs/development.md: {', '.join(missing)}"


def test_every_module_in_the_development_map_exists():
    gone = [m for m in development_map() if not (PACKAGE / m).is_file()]
    assert not gone, f"docs/development.md's package map lists modules that do not exist: {', '.join(gone)}"


def test_every_cited_docs_path_exists():
    broken = [
        f"{path.relative_to(ROOT)}: {ref}"
        for path in cited_files()
        for ref in CITED.findall(path.read_text(encoding="utf-8"))
        if not (ROOT / ref).exists()
    ]
    assert not broken, "cited but missing: " + "; ".join(broken)


def test_the_code_cites_docs_not_sections_of_a_file_outside_the_repo():
    stale = [
        str(path.relative_to(ROOT))
        for path in cited_files()
        if OUTSIDE_CITATION.search(path.read_text(encoding="utf-8"))
    ]
    assert not stale, f"cite the docs/ page instead of a section number: {', '.join(stale)}"


def test_docs_link_to_files_that_exist():
    broken = [
        f"{page.name} -> {target}"
        for page in sorted((ROOT / "docs").glob("*.md"))
        for target in re.findall(r"\]\(([^)#]+)\)", page.read_text(encoding="utf-8"))
        if "://" not in target and not (page.parent / target).exists()
    ]
    assert not broken, "broken links in docs/: " + "; ".join(broken)


ABSOLUTE_PATH = re.compile(r"""(?:^|(?<=[\s"'=(:,\[]))/(?!/)(?!path/to/)[\w.@+-]+/[^\s"'()\],]*""")


def test_no_absolute_path_of_a_machine_in_results_or_docs():
    """Result files and docs name files relative to the repository or the run folder, never /home/me/..."""
    files = [
        p
        for folder in ("benchmarks/results", "docs")
        for p in sorted((ROOT / folder).rglob("*"))
        if p.is_file() and p.suffix not in (".png", ".gif", ".jpg")
    ]
    found = [
        f"{p.relative_to(ROOT)}: {m.group()}"
        for p in files
        for m in ABSOLUTE_PATH.finditer(p.read_text(encoding="utf-8"))
    ]
    assert not found, "absolute paths (write them with iclevr.fileio.portable): " + "; ".join(found[:10])


def test_results_are_written_with_relative_paths(tmp_path):
    from iclevr.fileio import PACKAGE_DIR, portable, write_result_json

    data = {
        "out": str(tmp_path / "run" / "eval"),
        "evaluator": {"path": str(PACKAGE_DIR / "assets" / "x.pt")},
        "command": f"iclevr eval --checkpoint {tmp_path / 'run'} --split test",
        "ratio": "test/new_test 0.9/0.8",
        "url": "https://example.org/a/b",
        "rows": [tmp_path / "other" / "w.safetensors"],
    }
    write_result_json(tmp_path / "run" / "report.json", data)
    text = (tmp_path / "run" / "report.json").read_text()
    assert not ABSOLUTE_PATH.search(text), text
    written = json.loads(text)
    assert written["out"] == "eval" and written["evaluator"]["path"] == "iclevr/assets/x.pt"
    assert written["command"] == "iclevr eval --checkpoint . --split test"
    assert written["ratio"] == data["ratio"] and written["url"] == data["url"]
    assert written["rows"] == ["../other/w.safetensors"]
    assert portable({"a": "/x/y"}, tmp_path)["a"].startswith("..")
