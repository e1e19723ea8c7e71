"""benchmarks/mutation_check.py stays runnable as the code changes: every planted bug's text is found exactly once
in its file, and every test it names exists (a reformat once split a mutation's text over two lines, and the
check then stopped at that mutation)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import benchmark_module

ROOT = Path(__file__).resolve().parents[1]


MUTATIONS = benchmark_module("mutation_check").MUTATIONS


@pytest.mark.parametrize("mutation", MUTATIONS, ids=[m[0] for m in MUTATIONS])
def test_each_mutation_applies_once_and_names_real_tests(mutation):
    name, rel, text, replacement, tests = mutation
    source = (ROOT / rel).read_text()
    assert source.count(text) == 1, f"{name}: its text is found {source.count(text)} times in {rel}"
    assert replacement != text and tests
    for test in tests:
        file, _, func = test.partition("::")
        assert (ROOT / file).is_file(), f"{name}: {file} does not exist"
        if func:
            assert re.search(rf"^def {re.escape(func)}\(", (ROOT / file).read_text(), re.M), f"{name}: no {test}"
