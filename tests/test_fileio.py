"""Atomic writes: one rename, the old file kept and no temporary left on failure, the umask's file mode."""

import os
import stat

import pytest

from iclevr.fileio import atomic_path, atomic_write_text


def test_atomic_write_replaces_the_file_with_the_umask_mode(tmp_path):
    target = tmp_path / "a.json"
    target.write_text("old")
    previous = os.umask(0o027)
    try:
        atomic_write_text(target, "new")
    finally:
        os.umask(previous)
    assert target.read_text() == "new"
    assert stat.S_IMODE(target.stat().st_mode) == 0o640  # 0666 less the umask, not mkstemp's private 0600
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_safetensors_files_get_the_umask_mode_too(tmp_path):
    import torch
    from safetensors.torch import save_file

    from iclevr.fileio import atomic_path

    previous = os.umask(0o022)
    try:
        with atomic_path(tmp_path / "w.safetensors") as tmp:
            save_file({"x": torch.zeros(2)}, str(tmp))  # recreates the file with mode 0600
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "w.safetensors").stat().st_mode) == 0o644


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "a.json"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            assert tmp.parent == tmp_path and tmp.name.startswith(".a.json.") and tmp.name.endswith(".tmp")
            tmp.write_text("half")
            raise RuntimeError("killed mid-write")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]
