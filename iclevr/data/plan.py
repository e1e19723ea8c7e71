"""What a rendered kit holds before any pixel is drawn: each scene's labels and its condition lists.

The labels of a kit are a pure function of (scenes, max_objects, seed), so the condition lists of the
embedded kits can be produced without rendering them (`iclevr eval` scores against them on a machine that
has never rendered a training image). data/synth.py writes these plans to disk; data/course.py reads them
back or, for the embedded default kit, asks this module. Layout: docs/course-kit.md.

The val list is where design choices are tuned, so the reported test and new_test lists never are: 64
conditions drawn from a fixed seed, none equal (as a set of objects) to a test or new_test condition. It is
a function of those two lists alone, so the same rule gives any kit a val list, including the course's own
kit, which ships none.
"""

from __future__ import annotations

from itertools import combinations

import numpy as np

from iclevr import labels as L
from iclevr.errors import UserError

DEFAULT_SCENES = 6003  # the course's training set size: 6,003 scenes of 1 to 3 objects = 18,009 images
DEFAULT_KIT = {"scenes": DEFAULT_SCENES, "max_objects": 3, "size": (128, 96), "seed": 0}
MINI_KIT = {"scenes": 200, "max_objects": 3, "size": (64, 48), "seed": 0}  # 600 images, for tests and demos
DEFAULT_KIT_NAME = "default-v1"  # folder under $ICLEVR_HOME/kits; a new name whenever its content changes
MINI_KIT_NAME = "mini-v1"
TEST_SIZES = {1: 6, 2: 12, 3: 14}  # test.json: conditions per object count (32 conditions, 72 objects)
NEW_TEST_SIZES = {2: 12, 3: 20}  # new_test.json (32 conditions, 84 objects)
VAL_SIZES = {1: 6, 2: 24, 3: 34}  # val.json: the object counts of test and new_test together (64 conditions)
VAL_SIZE = sum(VAL_SIZES.values())  # 64
VAL_SEED = 0  # one fixed seed for every kit: val depends on the kit only through the lists it must avoid
_TEST_SALT, _NEW_TEST_SALT, _PLAN_SALT, _VAL_SALT = 0x7E57, 0x4E57, 0x1AB, 0x7A1  # each list's own stream


def label_plan(scenes: int, max_objects: int, seed: int) -> list[list[str]]:
    """Labels of every scene in placement order: each position is class-balanced, no repeats in a scene."""
    if max_objects > L.NUM_CLASSES:
        raise UserError(f"--max-objects {max_objects} is more than the {L.NUM_CLASSES} distinct classes")
    rng = np.random.default_rng([seed, _PLAN_SALT])
    plan = np.stack(
        [rng.permutation(np.resize(rng.permutation(L.NUM_CLASSES), scenes)) for _ in range(max_objects)], axis=1
    )  # (S, K)
    for k in range(1, max_objects):
        for i in range(scenes):
            while plan[i, k] in plan[i, :k]:  # swap with another scene's k-th label; keeps the column balanced
                j = int(rng.integers(scenes))
                if plan[j, k] not in plan[i, :k] and plan[i, k] not in plan[j, :k]:
                    plan[i, k], plan[j, k] = plan[j, k], plan[i, k]
    return [[L.LABELS[c] for c in row] for row in plan]


def split_conditions(
    plan: list[list[str]], sizes: dict[int, int], seed: int, salt: int, from_train: bool
) -> list[list[str]]:
    """Conditions for test.json / new_test.json: training prefixes (`from_train`) or fresh combinations."""
    rng = np.random.default_rng([seed, salt])
    out: list[list[str]] = []
    for k, count in sizes.items():
        for _ in range(count):
            if from_train and k <= len(plan[0]):
                out.append(list(plan[int(rng.integers(len(plan)))][:k]))
            else:
                out.append([L.LABELS[c] for c in rng.choice(L.NUM_CLASSES, size=k, replace=False)])
    return out


def val_conditions(avoid: list[list[str]]) -> list[list[str]]:
    """The val list: VAL_SIZES conditions from VAL_SEED, distinct as sets and none equal to one in `avoid`."""
    rng = np.random.default_rng([VAL_SEED, _VAL_SALT])
    taken = {frozenset(c) for c in avoid}
    out: list[list[str]] = []
    short = 0  # conditions a size could not supply (every one avoided) are drawn from the next size up
    for k, count in sorted(VAL_SIZES.items()):
        combos = list(combinations(L.LABELS, k))  # vocabulary order; at most 2,024 of them
        # one fixed order per size, walked past the avoided ones: a change in `avoid` moves few picks
        free = [list(combos[i]) for i in rng.permutation(len(combos)) if frozenset(combos[i]) not in taken]
        out += free[: count + short]
        short = max(0, count + short - len(free))
    if short:
        raise UserError(
            f"cannot draw {VAL_SIZE} val conditions of 1-3 objects that avoid the "
            f"{len(taken)} test and new_test conditions"
        )
    return out


def plan_conditions(plan: list[list[str]], seed: int) -> dict[str, list[list[str]]]:
    """The lists of a kit with this label plan: test seen in training, new_test fresh, val avoiding both."""
    lists = {
        "test": split_conditions(plan, TEST_SIZES, seed, _TEST_SALT, True),
        "new_test": split_conditions(plan, NEW_TEST_SIZES, seed, _NEW_TEST_SALT, False),
    }
    return {**lists, L.VAL_SPLIT: val_conditions(lists["test"] + lists["new_test"])}


def kit_conditions(spec: dict) -> dict[str, list[list[str]]]:
    """The condition lists a kit rendered from `spec` (scenes, max_objects, seed, ...) holds, without rendering it."""
    return plan_conditions(label_plan(spec["scenes"], spec["max_objects"], spec["seed"]), spec["seed"])
