"""Resumable training state: the newest K kept, the newest readable one loaded, damaged ones reported."""

from __future__ import annotations

import pytest
import torch

from iclevr.errors import UserError
from iclevr.training.state import list_states, load_latest, save_state


def test_rotation_keeps_the_newest(tmp_path):
    for step in (1, 2, 3, 4):
        save_state(tmp_path, {"step": step, "w": torch.full((2,), float(step))}, keep=2)
    assert [p.name for p in list_states(tmp_path)] == ["step-00000003.pt", "step-00000004.pt"]
    state, path = load_latest(tmp_path)
    assert path.name == "step-00000004.pt" and state["step"] == 4 and state["w"].tolist() == [4.0, 4.0]


def test_all_damaged_states_are_an_error_and_no_state_is_none(tmp_path):
    assert load_latest(tmp_path / "state") is None
    save_state(tmp_path / "state", {"step": 1}, keep=2)
    save_state(tmp_path / "state", {"step": 2}, keep=2)
    for p in list_states(tmp_path / "state"):
        p.write_bytes(b"")
    with (
        pytest.warns(UserWarning, match="trying an older state"),
        pytest.raises(UserError, match=r"none of its 2 training states can be read \(newest step-00000002.pt\)"),
    ):
        load_latest(tmp_path / "state")
