"""Atomic file writes (a temporary file in the same folder, fsync, one rename) and the one translation of
write failures a user can fix (full disk, quota, permissions, read-only file system) into a one-line
WriteError that names the file, what failed and, for a full disk, the size needed and the space free.
"""

from __future__ import annotations

import errno
import os
import re
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

WRITE_FAULTS = {  # errno -> what the user reads; every other failure is a bug or an unusual environment
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EFBIG: "file too large for the file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EROFS: "read-only file system",
}
SPACE_FAULTS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
PROBE_BYTES = 1 << 20
_OS_ERROR = re.compile(r"os error (\d+)")  # how safetensors (Rust) reports the errno in its message


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
def atomic_path(path: Path, size: int | None = None, what: str = "") -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path` in one rename.

    On failure the temporary file is deleted and `path` keeps its old content; a full disk, a quota, a
    permission or a read-only file system becomes one WriteError naming `what` `path` and, for space, `size`
    (the bytes being written, an estimate) against the space free."""
    path, tmp_path = Path(path), None
    if path.is_dir():  # os.replace would fail only after the work, with IsADirectoryError
        from iclevr.errors import UserError

        raise UserError(f"cannot write {what + ' ' if what else ''}{path}: it is a folder, not a file")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp_path = _new_temp(path)
        mode = tmp_path.stat().st_mode & 0o777  # 0666 less the umask
        yield tmp_path
        with open(tmp_path, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp_path, mode)  # writers that recreate the file (safetensors' save_file) make it 0600
        os.replace(tmp_path, path)
    except Exception as e:  # noqa: BLE001 - translated when the file system refused, re-raised otherwise
        code = fault_errno(e)
        if code is None and tmp_path is not None and not isinstance(e, OSError):
            code = _probe(tmp_path, e)
        if code is None:
            raise
        written, (_, free) = _size(tmp_path), free_space(path.parent)
        _remove(tmp_path)  # its blocks come back once the writer closes it (a library may hold it open still)
        free = free + written if free is not None else None  # the space this write had
        raise write_error(path, code, size, what, free=free, written=written) from None
    finally:
        _remove(tmp_path)


def fault_errno(err: BaseException) -> int | None:
    """The errno of a write failure the user can fix (an OSError's, or one named in a library's message)."""
    if isinstance(err, OSError) and err.errno in WRITE_FAULTS:
        return err.errno
    found = _OS_ERROR.search(str(err))
    return int(found.group(1)) if found and int(found.group(1)) in WRITE_FAULTS else None


def _probe(tmp: Path, err: Exception) -> int | None:
    """The file system's own errno after a library failed without one (torch.save on a full disk raises
    RuntimeError "unexpected pos"): append a probe to the temporary file and fsync; None if that succeeds."""
    from iclevr.errors import UserError

    if isinstance(err, UserError):
        return None
    try:
        with open(tmp, "ab") as f:
            f.write(bytes(PROBE_BYTES))
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        return e.errno if e.errno in WRITE_FAULTS else None
    return None


def _size(path: Path | None) -> int:
    try:
        return path.stat().st_size if path is not None else 0
    except OSError:
        return 0


def _remove(path: Path | None) -> None:
    if path is not None:
        try:
            path.unlink(missing_ok=True)
        except OSError:  # a read-only folder: nothing could have been written there either
            pass


def human_bytes(n: float) -> str:
    """1234567 -> '1.2 MB' (decimal units, like df -H)."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def free_space(path: Path) -> tuple[Path, int | None]:
    """(the nearest existing folder of `path`, its free bytes for us or None when unknown)."""
    folder = Path(path)
    while not folder.is_dir() and folder != folder.parent:
        folder = folder.parent
    try:
        return folder, shutil.disk_usage(folder).free
    except OSError:
        return folder, None


def write_error(
    path: Path,
    code: int,
    size: int | None = None,
    what: str = "",
    *,
    free: int | None = None,
    written: int = 0,
    kept: bool = True,
):
    """The one-line WriteError for a refused write of `path` (errno `code`): for a full disk the space needed
    (`size`, the bytes being written, else more than the `written` ones) and free (`free`, else measured)."""
    from iclevr.errors import WriteError

    path = Path(path)
    folder, measured = free_space(path if path.is_dir() else path.parent)
    free = measured if free is None else free
    reason = WRITE_FAULTS.get(code, os.strerror(code))
    if code in SPACE_FAULTS:
        parts = [f"about {human_bytes(size)} needed"] if size else []
        parts += [f"more than {human_bytes(written)} needed"] if written and not size else []
        if code == errno.ENOSPC and free is not None:
            parts.append(f"{human_bytes(free)} free in {folder}")
        reason += f" ({', '.join(parts)})" if parts else ""
    elif code in (errno.EACCES, errno.EPERM):
        reason += f" in {folder}"
    elif code == errno.EROFS:
        reason = f"{folder} is on a read-only file system"
    kept = f"; the previous {path.name} is kept" if kept and path.is_file() else ""
    return WriteError(f"cannot write {what + ' ' if what else ''}{path}: {reason}{kept}")


@contextmanager
def writing(path: Path, what: str = "") -> Iterator[None]:
    """For a library that writes `path` (a file or folder) itself: a refused write in the block becomes one
    WriteError naming it."""
    from iclevr.errors import UserError

    try:
        yield
    except Exception as e:  # noqa: BLE001 - translated when the file system refused, re-raised otherwise
        if isinstance(e, UserError) or (code := fault_errno(e)) is None:
            raise
        raise write_error(Path(path), code, what=what, kept=False) from None


def explain_os_error(err: BaseException) -> str | None:
    """One line for an OSError of a write the user can fix that reached a command untranslated, else None."""
    code = fault_errno(err)
    if code is None:
        return None
    name = getattr(err, "filename", None)
    if name is None:
        return f"a write failed: {WRITE_FAULTS[code]}"
    return str(write_error(Path(name), code)).replace("cannot write ", "", 1)


def nbytes(obj) -> int:
    """The bytes of the tensors, arrays and byte strings in a nested dict/list/tuple: a file's size estimate."""
    if isinstance(obj, dict):
        return sum(nbytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(nbytes(v) for v in obj)
    if isinstance(obj, (bytes, bytearray, str)):
        return len(obj)
    n = getattr(obj, "nbytes", None)
    return n if isinstance(n, int) else 0


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
    with atomic_path(path, size=len(data)) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: Path, text: str) -> None:
    """Write text to `path` atomically."""
    atomic_write_bytes(path, text.encode())


def append_text(path: Path, text: str) -> None:
    """Append `text` to `path` (a log line); a full disk or a permission is one WriteError naming the file
    (a line cut short by a full disk is what readers of such logs already skip)."""
    try:
        with open(path, "a") as f:
            f.write(text)
    except OSError as e:
        if (code := fault_errno(e)) is None:
            raise
        raise write_error(path, code, len(text.encode())) from None


def check_writable(folder: Path) -> Path:
    """Create `folder` if needed and make sure we can write into it; a clear UserError otherwise."""
    from iclevr.errors import UserError

    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise UserError(f"cannot write to output folder {folder}: it is a file, not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".iclevr-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise UserError(f"cannot write to output folder {folder}: {e.strerror or e}") from None
    return folder


def check_output_file(path: Path, example: str, option: str = "--out") -> Path:
    """Before any work: `path` must name a file (not an existing folder) in a folder we can write."""
    from iclevr.errors import UserError

    path = Path(path)
    if path.is_dir():
        raise UserError(f"{option} {path} is a folder; name the file to write, e.g. {option} {path / example}")
    check_writable(path.parent)
    return path


def read_json(path: Path, what: str):
    """Read a JSON file with a clear one-line UserError when it is missing, unreadable or malformed."""
    import json

    from iclevr.errors import UserError

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} not found: {path}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise UserError(f"{path} is not valid JSON: {e.msg} at line {e.lineno}, column {e.colno}") from None
    except (UnicodeDecodeError, OSError) as e:
        raise UserError(f"cannot read {path}: {e}") from None


def write_json(path: Path, data) -> None:
    """Write `data` as indented JSON (with a final newline) to `path` atomically."""
    import json

    atomic_write_text(Path(path), json.dumps(data, indent=2) + "\n")


# an absolute path inside a string: "/" + at least two names, at the start or after a space, quote, "=" or ":"
_ABSOLUTE = re.compile(r"""(?:^|(?<=[\s"'=(:,\[]))/(?!/)[\w.@+-]+/[^\s"'()\],]*""")
PACKAGE_DIR = Path(__file__).resolve().parent  # iclevr/: its files are named iclevr/... on every machine


def portable_path(path: str | Path, base: Path) -> str:
    """`path` as a result file holds it: a file of the package as `iclevr/...`, anything else relative to `base`
    (the folder the result is written in, or the repository) -- never the absolute path of this machine."""
    path = Path(os.path.abspath(path))
    for root in (PACKAGE_DIR, Path(os.path.abspath(PACKAGE_DIR))):
        if path.is_relative_to(root):
            return (Path("iclevr") / path.relative_to(root)).as_posix()
    return Path(os.path.relpath(path, os.path.abspath(base))).as_posix()


def portable(data, base: Path):
    """A copy of JSON-like `data` in which every absolute path (a whole string or one inside a command line or
    message) is written by `portable_path` relative to `base`."""
    if isinstance(data, dict):
        return {k: portable(v, base) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [portable(v, base) for v in data]
    if isinstance(data, Path):
        data = str(data)
    if isinstance(data, str) and "/" in data:
        return _ABSOLUTE.sub(lambda m: portable_path(m.group(), base), data)
    return data


def write_result_json(path: Path, data, base: Path | None = None) -> None:
    """Write a result (report.json, summary.json, a benchmark's file) with `write_json`, its absolute paths made
    relative to `base` (default: the folder it is written in) by `portable`."""
    path = Path(path)
    write_json(path, portable(data, base if base is not None else path.parent))


def read_jsonl(path: Path) -> list[dict]:
    """The rows of a JSON-lines file (one object per line; [] if missing). A torn last line (a write cut short
    by a kill or power loss) is dropped; a damaged line before it is a UserError naming it."""
    import json

    from iclevr.errors import UserError

    path = Path(path)
    if not path.is_file():
        return []
    lines = [
        (n, line)
        for n, line in enumerate(path.read_text(encoding="utf-8", errors="replace").split("\n"), 1)
        if line.strip()
    ]
    rows = []
    for k, (n, line) in enumerate(lines):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            row = None
        if isinstance(row, dict):
            rows.append(row)
        elif k < len(lines) - 1:
            raise UserError(f"{path} line {n} is not a JSON object (the file is damaged); remove that line")
    return rows


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file (identifies the exact weights, evaluator or autoencoder a result came from)."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
