"""The course data layout (SPEC §3): reading, validating, preprocessing and caching.

<data-dir>/train.json      {"CLEVR_train_001032_0.png": ["gray cube"], ...}
<data-dir>/objects.json    {"gray cube": 0, ...}   (must equal the built-in order)
<data-dir>/test.json       [["gray cube"], ["red sphere", "cyan cube"], ...]   (32 conditions)
<data-dir>/new_test.json   32 conditions
<data-dir>/iclevr/*.png    the training images (RGB or RGBA, any size)

Preprocessing equals the reference: PIL bilinear Resize((R, R)) (the 4:3 frame is squashed), ToTensor,
Normalize(0.5, 0.5) -> pixels in [-1, 1]. The decoded training set is cached as uint8 (N, 3, R, R).
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from pydantic import TypeAdapter, ValidationError

from iclevr import labels as L
from iclevr.errors import UserError

CACHE_VERSION = 1
SPLITS = ("test", "new_test")
_TRAIN_SCHEMA = TypeAdapter(dict[str, list[str]])
_SPLIT_SCHEMA = TypeAdapter(list[list[str]])


@dataclass
class CourseKit:
    """A validated course data folder: file names, label names and the split conditions."""

    data_dir: Path
    images_dir: Path
    train: dict[str, list[str]]
    splits: dict[str, list[list[str]]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def evaluator_path(self) -> Path | None:
        """The course evaluator checkpoint.pth in the data folder, if there is one."""
        p = self.data_dir / "checkpoint.pth"
        return p if p.is_file() else None


def read_json(path: Path, what: str) -> Any:
    """Read a JSON file with a clear one-line error when it is missing or malformed."""
    if not path.is_file():
        raise UserError(f"{what} not found: {path}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise UserError(f"{path} is not valid JSON: {e.msg} at line {e.lineno}, column {e.colno}") from None
    except (UnicodeDecodeError, OSError) as e:
        raise UserError(f"cannot read {path}: {e}") from None


def _validated(adapter: TypeAdapter, value: Any, path: Path, shape: str) -> Any:
    try:
        return adapter.validate_python(value, strict=True)
    except ValidationError as e:
        first = e.errors()[0]
        loc = "/".join(str(p) for p in first["loc"])
        raise UserError(f"{path} must be {shape}; at {loc or 'top level'}: {first['msg']}") from None


def _check_condition(cond: list[str], where: str) -> list[str]:
    try:
        return [L.LABELS[i] for i in L.parse_names(cond)]
    except UserError as e:
        raise UserError(f"{where}: {e}") from None


def safe_image_name(name: str, where: str) -> str:
    """Refuse image names that could escape the images folder ('../x.png', '/etc/x', 'a/b.png')."""
    p = PurePosixPath(name)
    if not name or p.is_absolute() or ".." in p.parts or "\\" in name or len(p.parts) != 1:
        raise UserError(f'{where}: image name "{name}" is not a plain file name; refusing to read outside '
                        "the images folder")
    return name


def load_split(data_dir: Path, split: str) -> list[list[str]]:
    """Read and validate test.json / new_test.json (a list of label lists)."""
    path = Path(data_dir) / f"{split}.json"
    raw = _validated(_SPLIT_SCHEMA, read_json(path, f"{split}.json"), path, "a list of lists of label names")
    return [_check_condition(c, f"{path.name} condition {i}") for i, c in enumerate(raw)]


def load_kit(data_dir: Path, images_dir: Path | None = None, splits: bool = True) -> CourseKit:
    """Read and validate a course data folder (JSON files and labels; images are checked separately)."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise UserError(f"data folder not found: {data_dir} (point --data-dir at the course kit, or leave it "
                        "out to use the embedded rendered kit)")
    objects_path = data_dir / "objects.json"
    if objects_path.exists():
        L.check_objects_mapping(read_json(objects_path, "objects.json"))
    train_path = data_dir / "train.json"
    raw = _validated(_TRAIN_SCHEMA, read_json(train_path, "train.json"), train_path,
                     "an object mapping image file name -> list of label names")
    if not raw:
        raise UserError(f"{train_path} lists no images")
    train = {safe_image_name(n, "train.json"): _check_condition(c, f"train.json entry {n}")
             for n, c in raw.items()}
    kit = CourseKit(data_dir=data_dir, images_dir=Path(images_dir) if images_dir else data_dir / "iclevr",
                    train=train)
    if splits:
        kit.splits = {s: load_split(data_dir, s) for s in SPLITS}
    if not kit.images_dir.is_dir():
        raise UserError(f"images folder not found: {kit.images_dir} (use --images-dir if it lives elsewhere)")
    return kit


def load_image(path: Path, resolution: int):
    """Decode one PNG like the reference: RGB, bilinear Resize((R, R)); returns uint8 (3, R, R)."""
    import numpy as np
    import torch
    from PIL import Image

    with Image.open(path) as img:
        img = img.convert("RGB").resize((resolution, resolution), Image.BILINEAR)
        arr = np.asarray(img, dtype=np.uint8)  # (R, R, 3)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()  # (3, R, R)


def to_model_range(images_u8):
    """uint8 (B, 3, H, W) -> float32 in [-1, 1] (ToTensor + Normalize(0.5, 0.5))."""
    return images_u8.float().div(127.5).sub(1.0)


def to_uint8(x):
    """Model-range float (B, 3, H, W) in [-1, 1] -> uint8."""
    return ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(dtype=__import__("torch").uint8)


def check_images(kit: CourseKit, verify: bool = True) -> tuple[list[str], list[str]]:
    """Return (missing, corrupt) image names of train.json; `verify` fully decodes each file."""
    from PIL import Image

    def probe(name: str) -> str | None:
        path = kit.images_dir / name
        if not path.is_file():
            return "missing"
        try:
            with Image.open(path) as img:
                img.load() if verify else img.verify()
        except Exception:  # noqa: BLE001 - any decoder failure means corrupt
            return "corrupt"
        return None

    names = list(kit.train)
    with ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 2) * 2)) as pool:
        status = list(pool.map(probe, names))
    missing = [n for n, s in zip(names, status) if s == "missing"]
    corrupt = [n for n, s in zip(names, status) if s == "corrupt"]
    return missing, corrupt


def _raise_image_problems(kit: CourseKit, missing: list[str], corrupt: list[str]) -> None:
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
    if corrupt:
        parts.append(f"{len(corrupt)} corrupt (e.g. {', '.join(corrupt[:3])})")
    if parts:
        raise UserError(f"images in {kit.images_dir} named by train.json: {'; '.join(parts)}; "
                        "run `iclevr data check` for details")


def cache_key(kit: CourseKit, resolution: int) -> str:
    """Hash of the file list, each file's size and mtime, and the resolution (stale caches never served)."""
    h = hashlib.sha256(f"v{CACHE_VERSION}|{resolution}|{kit.images_dir.resolve()}".encode())
    for name in sorted(kit.train):
        try:
            st = (kit.images_dir / name).stat()
            h.update(f"{name}|{st.st_size}|{st.st_mtime_ns}|{','.join(kit.train[name])}\n".encode())
        except OSError:
            h.update(f"{name}|missing\n".encode())
    return h.hexdigest()[:16]


def cache_dir_for(kit: CourseKit) -> Path:
    """Cache folder: <data-dir>/.iclevr-cache if writable, else ~/.cache/iclevr/data-cache."""
    local = kit.data_dir / ".iclevr-cache"
    try:
        local.mkdir(exist_ok=True)
        if os.access(local, os.W_OK):
            return local
    except OSError:
        pass
    fallback = Path(os.environ.get("ICLEVR_HOME", Path.home() / ".cache" / "iclevr")) / "data-cache"
    fallback.mkdir(parents=True, exist_ok=True)
    return fallback


def load_train_tensors(kit: CourseKit, resolution: int, cache: bool = True, progress=None):
    """The whole training set as (uint8 (N, 3, R, R), float multi-hot (N, 24)), cached on disk."""
    import torch
    from safetensors.torch import load_file, save_file

    from iclevr.fileio import atomic_path

    path = cache_dir_for(kit) / f"train-{resolution}px-{cache_key(kit, resolution)}.safetensors"
    if cache and path.is_file():
        try:
            t = load_file(str(path))
            return t["images"], t["labels"]
        except Exception:  # noqa: BLE001 - a damaged cache is rebuilt, never trusted
            path.unlink(missing_ok=True)
    missing, corrupt = check_images(kit, verify=False)
    _raise_image_problems(kit, missing, corrupt)
    names = list(kit.train)

    def decode(name: str):
        try:
            return load_image(kit.images_dir / name, resolution)
        except Exception:  # noqa: BLE001
            return None

    with ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 2) * 2)) as pool:
        images = []
        for i, img in enumerate(pool.map(decode, names)):
            if img is None:
                _raise_image_problems(kit, [], [names[i]])
            images.append(img)
            if progress is not None:
                progress(i + 1, len(names))
    images_u8 = torch.stack(images)  # (N, 3, R, R)
    labels = L.encode_many([kit.train[n] for n in names])  # (N, 24)
    if cache:
        with atomic_path(path) as tmp:
            save_file({"images": images_u8, "labels": labels}, str(tmp))
    return images_u8, labels


def summarise(kit: CourseKit) -> dict:
    """Counts for `data check`: images, objects-per-image histogram, per-class counts, split sizes."""
    from collections import Counter

    per_image = Counter(len(v) for v in kit.train.values())
    per_class = Counter(name for v in kit.train.values() for name in v)
    return {
        "images": len(kit.train),
        "objects_per_image": dict(sorted(per_image.items())),
        "per_class": {name: per_class.get(name, 0) for name in L.LABELS},
        "splits": {s: {"conditions": len(c), "objects": sum(len(x) for x in c)} for s, c in kit.splits.items()},
        "extra_pngs": _count_extra_pngs(kit),
    }


def _count_extra_pngs(kit: CourseKit) -> int:
    try:
        on_disk = {p.name for p in kit.images_dir.glob("*.png")}
    except OSError:
        return 0
    return len(on_disk - set(kit.train))


def resolve_data_dir(data_dir: Path | None, console=None) -> Path:
    """The user's data folder, or the embedded rendered kit (rendered on first use) when none is given."""
    if data_dir is not None:
        return Path(data_dir)
    from iclevr.data.synth import ensure_default_kit

    return ensure_default_kit(console=console)
