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


# --- write failures the user can fix: one WriteError naming the file, the old file kept, no temporary left ---


def _half_then_fail(exc):
    """A writer that puts half of its bytes into the file, then fails like a full disk would."""

    def write(tmp):
        tmp.write_bytes(b"x" * 500)
        raise exc

    return write


def test_full_disk_mid_write_names_the_file_sizes_and_keeps_the_old_file(tmp_path):
    import errno

    from iclevr.errors import WriteError

    target = tmp_path / "w.safetensors"
    target.write_text("old")
    with pytest.raises(WriteError) as err:
        with atomic_path(target, size=3_000_000, what="weights") as tmp:
            _half_then_fail(OSError(errno.ENOSPC, "No space left on device"))(tmp)
    text = str(err.value)
    assert text.startswith(f"cannot write weights {target}: no space left on device (about 3.0 MB needed, ")
    assert f"free in {tmp_path})" in text and text.endswith("the previous w.safetensors is kept")
    assert "\n" not in text and err.value.exit_code == 2
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["w.safetensors"]


def test_library_errors_without_errno_are_probed(tmp_path, monkeypatch):
    """torch.save on a full disk raises RuntimeError('... unexpected pos ...'): the probe finds ENOSPC;
    safetensors names the errno in its message; an unrelated failure stays what it was."""
    import errno

    import iclevr.fileio as F
    from iclevr.errors import WriteError

    target = tmp_path / "step-00000006.pt"
    monkeypatch.setattr(F, "_probe", lambda tmp, err: errno.ENOSPC)
    with pytest.raises(WriteError, match=r"no space left on device \(more than 500 B needed, "):
        with atomic_path(target) as tmp:  # no size given: what reached the disk before the failure
            _half_then_fail(RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534"))(tmp)
    monkeypatch.undo()
    with pytest.raises(WriteError, match="disk quota exceeded"):
        with atomic_path(target):
            raise RuntimeError("Error while serializing: I/O error: Disk quota exceeded (os error 122)")
    with pytest.raises(RuntimeError, match="a real bug"):  # the probe writes fine here: not a disk problem
        with atomic_path(target):
            raise RuntimeError("a real bug")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(
    not (os.path.exists("/dev/full") and stat.S_ISCHR(os.stat("/dev/full").st_mode)),
    reason="needs the /dev/full device (every write fails with ENOSPC)",
)
def test_probe_reports_the_file_systems_errno():
    import errno
    from pathlib import Path

    from iclevr.fileio import _probe

    assert _probe(Path("/dev/full"), RuntimeError("unexpected pos")) == errno.ENOSPC
    assert _probe(Path("/dev/null"), RuntimeError("unexpected pos")) is None


def test_permission_and_read_only_are_one_line(tmp_path, monkeypatch):
    import errno

    import iclevr.fileio as F
    from iclevr.errors import WriteError

    for code, words in (
        (errno.EACCES, f"permission denied in {tmp_path}"),
        (errno.EROFS, f"{tmp_path} is on a read-only file system"),
    ):

        def refuse(path, code=code):
            raise OSError(code, os.strerror(code), str(path))

        monkeypatch.setattr(F, "_new_temp", refuse)
        with pytest.raises(WriteError) as err:
            atomic_write_text(tmp_path / "report.json", "{}")
        assert str(err.value) == f"cannot write {tmp_path / 'report.json'}: {words}"
    assert list(tmp_path.iterdir()) == []


def test_append_and_untranslated_os_errors(tmp_path, monkeypatch):
    import builtins
    import errno

    from iclevr.errors import WriteError
    from iclevr.fileio import append_text, explain_os_error, nbytes

    log = tmp_path / "metrics.jsonl"
    append_text(log, "a\n")
    real_open = builtins.open

    def full_open(path, mode="r", *args, **kwargs):
        if "a" in mode:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_open(path, mode, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", full_open)
    with pytest.raises(WriteError, match=r"cannot write .*metrics.jsonl: no space left on device \(about 2 B"):
        append_text(log, "b\n")
    monkeypatch.undo()
    assert log.read_text() == "a\n"
    line = explain_os_error(OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "x.png")))
    assert line.startswith(f"{tmp_path / 'x.png'}: no space left on device (") and "free in" in line
    assert explain_os_error(OSError(errno.EIO, "I/O error")) is None  # a real fault stays a bug report
    assert explain_os_error(ValueError("no")) is None

    import torch

    assert nbytes({"a": torch.zeros(10), "b": [torch.zeros(2, dtype=torch.int64), b"xyz"], "n": 3}) == 40 + 16 + 3
