"""Mutation check: plant each of a fixed list of realistic bugs in a temporary copy of the package, run the tests
that claim to guard that code, and report the bugs no test caught (survivors).

    python benchmarks/mutation_check.py                  # every mutation, writes benchmarks/results/mutation_check.json
    python benchmarks/mutation_check.py --only lr-linear  # some of them (names below), result printed only

Each mutation is one exact text replacement (the script stops if its text is no longer found once: the list
then needs updating with the code). The copy runs the named tests with `nice -n 15`, one thread, without slow
tests, each run in a process forked after torch and diffusers are imported (so a run costs its tests only);
first without any mutation (all must pass, else the check means nothing), then once per mutation: a
mutation is killed when a test fails. Target: no survivor.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "mutation_check.json"

S = "tests/test_sampling.py::"
METRIC = ["tests/test_metric.py"]
GUIDANCE = [
    S + "test_batched_guidance_equals_two_separate_passes",
    S + "test_guidance_one_is_the_conditional_prediction_alone",
    S + "test_guidance_zero_is_the_unconditional_prediction_alone",
    S + "test_one_forward_pass_of_2b_per_step",
]
SAMPLING = [
    S + "test_same_seed_gives_identical_pixels_and_other_seed_differs",
    S + "test_clip_x0_bounds_the_raw_predicted_x0_at_every_step",
    S + "test_image_does_not_depend_on_batch_size",
]
SCHEDULES = ["tests/test_schedules.py"]
LR = [
    "tests/test_train.py::test_lr_at_warmup_cosine_and_constant",
    "tests/test_train.py::test_time_budget_lr_through_the_loop_follows_elapsed_time",
]
EMA = ["tests/test_ema.py"]
STATE = [
    "tests/test_state.py",
    "tests/test_train.py::test_damaged_newest_state_falls_back",
    "tests/test_faults.py::test_a_non_finite_snapshot_keeps_the_last_good_state",
]
RESUME = ["tests/test_train.py::test_resume_is_bit_identical"]
LABELS = ["tests/test_labels.py"]

# (name, file, text, replacement, tests): one realistic bug each
MUTATIONS = [
    (
        "metric-ties-to-higher-index",
        "iclevr/evaluation/metric.py",
        "order = torch.sort(scores, dim=1, descending=True, stable=True).indices",
        "order = scores.size(1) - 1 - torch.sort(scores.flip(1), dim=1, descending=True, stable=True).indices",
        METRIC,
    ),
    (
        "metric-top-k-plus-one",
        "iclevr/evaluation/metric.py",
        "order[i, :k].tolist()",
        "order[i, :k + 1].tolist()",
        METRIC,
    ),
    ("metric-every-prediction-a-hit", "iclevr/evaluation/metric.py", "int(y[i, c] > 0.5)", "int(y[i, c] >= 0)", METRIC),
    (
        "guidance-formula-from-cond",
        "iclevr/sampling.py",
        "return eps_u + scale * (eps_c - eps_u)",
        "return eps_c + scale * (eps_c - eps_u)",
        GUIDANCE,
    ),
    (
        "guidance-halves-swapped",
        "iclevr/sampling.py",
        "eps_c, eps_u = out.chunk(2)",
        "eps_u, eps_c = out.chunk(2)",
        GUIDANCE,
    ),
    (
        "guidance-0-uses-the-condition",
        "iclevr/sampling.py",
        "return model(x_t, t.expand(B), torch.zeros_like(y), **extra).float()",
        "return model(x_t, t.expand(B), y, **extra).float()",
        GUIDANCE,
    ),
    ("guidance-1-runs-both-halves", "iclevr/sampling.py", "if scale == 1.0:", "if scale == 1.5:", GUIDANCE),
    ("schedule-sigmoid-range", "iclevr/schedules.py", "torch.linspace(-6, 6, T", "torch.linspace(-3, 3, T", SCHEDULES),
    (
        "schedule-cosine-reversed",
        "iclevr/schedules.py",
        "(1 - torch.cos(math.pi * t / (T - 1))) / 2",
        "(1 + torch.cos(math.pi * t / (T - 1))) / 2",
        SCHEDULES,
    ),
    ("schedule-squaredcos-offset", "iclevr/schedules.py", "(t + 0.008) / 1.008", "(t + 0.08) / 1.08", SCHEDULES),
    (
        "schedule-scaled-linear-not-squared",
        "iclevr/schedules.py",
        "torch.linspace(BETA_START**0.5, BETA_END**0.5, T, dtype=torch.float64) ** 2",
        "torch.linspace(BETA_START, BETA_END, T, dtype=torch.float64)",
        SCHEDULES,
    ),
    (
        "lr-cosine-to-linear",
        "iclevr/training/lr.py",
        "decay = 0.5 * (1.0 + math.cos(math.pi * p))",
        "decay = 1.0 - p",
        LR,
    ),
    (
        "lr-cosine-to-smoothstep",
        "iclevr/training/lr.py",
        "decay = 0.5 * (1.0 + math.cos(math.pi * p))",
        "decay = 1.0 - p * p * (3 - 2 * p)",
        LR,
    ),
    (
        "lr-warmup-off-by-one",
        "iclevr/training/lr.py",
        "min(1.0, (step + 1) / warmup_steps)",
        "min(1.0, step / warmup_steps)",
        LR,
    ),
    ("ema-no-warmup", "iclevr/ema.py", "min(self.decay, (1 + step) / (10 + step))", "self.decay", EMA),
    (
        "ema-lerp-weight-swapped",
        "iclevr/ema.py",
        "torch._foreach_lerp_(shadow, params, 1.0 - d)",
        "torch._foreach_lerp_(shadow, params, d)",
        EMA,
    ),
    (
        "sampling-one-generator-for-all",
        "iclevr/sampling.py",
        'gens = [torch.Generator("cpu").manual_seed(s) for s in seeds]',
        'gens = [torch.Generator("cpu").manual_seed(seeds[0]) for s in seeds]',
        SAMPLING,
    ),
    (
        "sampling-no-x0-clipping",
        "iclevr/sampling.py",
        "        if clip:\n            eps = clip_output",
        "        if False:\n            eps = clip_output",
        SAMPLING,
    ),
    (
        "state-rotation-keeps-oldest",
        "iclevr/training/state.py",
        "for old in list_states(folder)[:-keep]:",
        "for old in list_states(folder)[keep:]:",
        STATE,
    ),
    (
        "state-loads-oldest-first",
        "iclevr/training/state.py",
        "for path in reversed(states):",
        "for path in states:",
        STATE,
    ),
    (
        "resume-optimizer-not-restored",
        "iclevr/training/loop.py",
        '    optimizer.load_state_dict(state["optimizer"])\n',
        "",
        RESUME,
    ),
    (
        "resume-ema-not-restored",
        "iclevr/training/loop.py",
        '        ema.load_state_dict(found[0]["ema"])\n',
        "",
        RESUME,
    ),
    (
        "state-wall-time-not-saved",
        "iclevr/training/run_folder.py",
        '        "wall_s": wall_s,\n',
        '        "wall_s": 0.0,\n',
        ["tests/test_train.py::test_time_budget_resume_continues_the_same_lr_path"],
    ),
    (
        "state-nan-weights-saved",
        "iclevr/training/run_folder.py",
        "    check_finite_weights(run, settings, step, model, ema.model)",
        "    pass",
        STATE,
    ),
    (
        "labels-case-sensitive",
        "iclevr/labels.py",
        'return " ".join(str(name).lower().split())',
        'return " ".join(str(name).split())',
        LABELS,
    ),
    (
        "labels-duplicates-allowed",
        "iclevr/labels.py",
        "        if i in indices:\n            raise",
        "        if False:\n            raise",
        LABELS,
    ),
    ("labels-decode-threshold", "iclevr/labels.py", "if float(v) > 0.5]", "if float(v) >= 0]", LABELS),
]


def make_copy(dest: Path) -> Path:
    """A copy of the package, its tests and pyproject.toml under `dest` (the large assets linked, not copied)."""
    ignore = shutil.ignore_patterns("__pycache__", "assets")
    shutil.copytree(ROOT / "iclevr", dest / "iclevr", ignore=ignore)
    (dest / "iclevr" / "assets").symlink_to(ROOT / "iclevr" / "assets")
    shutil.copytree(ROOT / "tests", dest / "tests", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", dest / "pyproject.toml")
    return dest


def preload() -> None:
    """Import the heavy libraries once in this process (never iclevr): every test run forks from here."""
    os.environ["OMP_NUM_THREADS"] = "1"
    import diffusers  # noqa: F401
    import pytest  # noqa: F401
    import safetensors.torch  # noqa: F401
    import torch
    import typer.testing  # noqa: F401

    torch.set_num_threads(1)


def run_tests(copy: Path, tests: list[str], timeout: int) -> tuple[bool, str]:
    """(passed, pytest's last line) of `tests` in the copy: a forked child imports the copy's package."""
    log = copy / "pytest.log"
    pid = os.fork()
    if pid == 0:  # the child: the copy's iclevr, pytest's output into the log
        code = 3
        try:
            os.chdir(copy)
            sys.path.insert(0, str(copy))
            fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            import pytest

            code = pytest.main(["-x", "-q", "-m", "not slow", "-p", "no:cacheprovider", *tests])
            import iclevr

            if not Path(iclevr.__file__).is_relative_to(copy):  # the copy was not the package tested
                code = 4
        finally:
            os._exit(int(code))
    began = time.monotonic()
    while (done := os.waitpid(pid, os.WNOHANG))[0] == 0:
        if time.monotonic() - began > timeout:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            return False, f"timed out after {timeout} s"
        time.sleep(0.2)
    lines = [line for line in log.read_text().splitlines() if line.strip()]
    return os.waitstatus_to_exitcode(done[1]) == 0, lines[-1] if lines else ""


def _write(record: dict, complete: bool) -> None:
    """Write the result file (relative paths only); `complete` False while mutations are still to run."""
    record["complete"] = complete
    record["survivors"] = [m["name"] for m in record["mutations"] if not m["killed"]]
    OUT.write_text(json.dumps(record, indent=1) + "\n")


def check(names: list[str] | None, timeout: int, save: bool = False) -> dict:
    """Run the baseline and the chosen mutations; returns the result record (relative paths only)."""
    chosen = [m for m in MUTATIONS if names is None or m[0] in names]
    if names and len(chosen) != len(set(names)):
        raise SystemExit(f"unknown mutation in {names}; known: {', '.join(m[0] for m in MUTATIONS)}")
    with tempfile.TemporaryDirectory(prefix="iclevr-mutation-") as tmp:
        copy = make_copy(Path(tmp))
        tests = sorted({t for m in chosen for t in m[4]})
        began = time.perf_counter()
        ok, line = run_tests(copy, tests, timeout * 3)
        record = {
            "command": "python benchmarks/mutation_check.py",
            "baseline": {
                "tests": tests,
                "passed": ok,
                "summary": line,
                "seconds": round(time.perf_counter() - began, 1),
            },
            "mutations": [],
        }
        print(f"baseline: {'passed' if ok else 'FAILED'} ({line})", flush=True)
        if not ok:
            return record
        for name, rel, text, replacement, mtests in chosen:
            path = copy / rel
            original = path.read_text()
            if original.count(text) != 1:
                raise SystemExit(f"{name}: its text is found {original.count(text)} times in {rel}; update it")
            path.write_text(original.replace(text, replacement))
            began = time.perf_counter()
            passed, line = run_tests(copy, mtests, timeout)
            path.write_text(original)
            row = {
                "name": name,
                "file": rel,
                "tests": mtests,
                "killed": not passed,
                "summary": line,
                "seconds": round(time.perf_counter() - began, 1),
            }
            record["mutations"].append(row)
            if save:
                _write(record, complete=False)
            print(f"{'killed  ' if row['killed'] else 'SURVIVED'} {name} ({line})", flush=True)
    record["survivors"] = [m["name"] for m in record["mutations"] if not m["killed"]]
    return record


def main() -> None:
    """Parse the arguments, run the check, print the survivors and write the result file."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="comma-separated mutation names (default: all; then the result is saved)")
    parser.add_argument("--timeout", type=int, default=600, help="seconds per mutation's test run")
    args = parser.parse_args()
    names = args.only.split(",") if args.only else None
    os.nice(15)  # a shared machine: the tests run at the lowest priority but one
    preload()
    record = check(names, args.timeout, save=names is None)
    record["command"] = "python benchmarks/mutation_check.py" + (f" --only {args.only}" if names else "")
    survivors = record.get("survivors")
    print(f"{len(record['mutations'])} mutations, survivors: {survivors if survivors else 'none'}")
    if names is None and record["baseline"]["passed"]:
        _write(record, complete=True)
        print(f"wrote {OUT.relative_to(ROOT)}")
    if not record["baseline"]["passed"] or survivors:
        sys.exit(1)


if __name__ == "__main__":
    main()
