"""Atomic file writes: write to a temporary file in the same folder, fsync, then rename."""

from __future__ import annotations

import os
import secrets
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


def _new_temp(path: Path) -> Path:
    """Create an empty hidden `.<name>.<random>.tmp` beside `path`, mode 0666 less the umask (mkstemp's 0600
    would make every file we write private to its owner)."""
    for _ in range(100):
        tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name beside {path}")


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path` in one rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = _new_temp(path)
    mode = tmp_path.stat().st_mode & 0o777  # 0666 less the umask
    try:
        yield tmp_path
        with open(tmp_path, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp_path, mode)  # writers that recreate the file (safetensors' save_file) make it 0600
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def remove_stale_temps(path: Path) -> int:
    """Delete the `.<name>.*.tmp` files a killed writer of `path` left (`name` may be a glob pattern such as
    `step-*.pt`); call only as the sole writer of those files."""
    path = Path(path)
    stale = list(path.parent.glob(f".{path.name}.*.tmp")) if path.parent.is_dir() else []
    for tmp in stale:
        tmp.unlink(missing_ok=True)
    return len(stale)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write bytes to `path` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: Path, text: str) -> None:
    """Write text to `path` atomically."""
    atomic_write_bytes(path, text.encode())


def check_writable(folder: Path) -> Path:
    """Create `folder` if needed and make sure we can write into it; a clear UserError otherwise."""
    from iclevr.errors import UserError

    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".iclevr-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise UserError(f"cannot write to output folder {folder}: {e.strerror or e}") from None
    return folder
