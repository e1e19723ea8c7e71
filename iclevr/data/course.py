"""The course data layout (docs/course-kit.md): reading, validating, preprocessing and caching a kit.

<data-dir>/train.json      {"CLEVR_train_001032_0.png": ["gray cube"], ...}
<data-dir>/objects.json    {"gray cube": 0, ...}   (must equal the built-in order)
<data-dir>/test.json       [["gray cube"], ["red sphere", "cyan cube"], ...]   (32 conditions)
<data-dir>/new_test.json   32 conditions
<data-dir>/val.json        optional: the list to tune on; when absent it is derived from test and new_test
<data-dir>/iclevr/*.png    the training images (RGB or RGBA, any size)

Preprocessing equals the reference: PIL bilinear Resize((R, R)) (the 4:3 frame is squashed), ToTensor,
Normalize(0.5, 0.5) -> pixels in [-1, 1]. The decoded training set is cached as uint8 (N, 3, R, R).
This room only reads: which folder to read, and rendering the embedded kit, is data/kits.py's job.
"""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from pydantic import TypeAdapter, ValidationError

from iclevr import labels as L
from iclevr.errors import UserError
from iclevr.fileio import read_json
from iclevr.labels import ALL_SPLITS, SPLITS, VAL_SPLIT

CACHE_VERSION = 1
_TRAIN_SCHEMA = TypeAdapter(dict[str, list[str]])
_SPLIT_SCHEMA = TypeAdapter(list[list[str]])


@dataclass
class CourseKit:
    """A validated course data folder: file names, label names and the split conditions."""

    data_dir: Path
    images_dir: Path
    train: dict[str, list[str]]
    splits: dict[str, list[list[str]]] = field(default_factory=dict)


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
        raise UserError(
            f'{where}: image name "{name}" is not a plain file name; refusing to read outside the images folder'
        )
    return name


def load_split(data_dir: Path, split: str) -> list[list[str]]:
    """Read and validate test.json / new_test.json (a list of label lists)."""
    path = Path(data_dir) / f"{split}.json"
    raw = _validated(_SPLIT_SCHEMA, read_json(path, f"{split}.json"), path, "a list of lists of label names")
    if not raw:  # nothing to draw or score (the course's lists hold 32 conditions each)
        raise UserError(f'{path} lists no conditions; it needs at least one, e.g. [["red sphere"]]')
    return [_check_condition(c, f"{path.name} condition {i}") for i, c in enumerate(raw)]


def load_val(data_dir: Path, reported: dict[str, list[list[str]]]) -> list[list[str]]:
    """val.json, refused if it shares a condition (as a set) with test/new_test; derived from them when absent."""
    if not (Path(data_dir) / "val.json").is_file():
        from iclevr.data.plan import val_conditions

        return val_conditions([c for s in SPLITS for c in reported[s]])
    val = load_split(data_dir, VAL_SPLIT)
    seen = {frozenset(c): s for s in SPLITS for c in reported[s]}
    for i, c in enumerate(val):
        if frozenset(c) in seen:
            raise UserError(
                f"{Path(data_dir) / 'val.json'} condition {i} {c} is also in {seen[frozenset(c)]}.json: "
                "val must share no condition with the reported lists (delete val.json to use a "
                "derived one that does not)"
            )
    return val


def derived_val_note(data_dir: Path | None) -> str | None:
    """The console line saying a kit's val list was derived (it has no val.json), else None."""
    if data_dir is None or (Path(data_dir) / "val.json").is_file():
        return None  # the embedded kit's val is its val.json, computed from its plan
    from iclevr.data.plan import VAL_SIZE

    return (
        f"val: {data_dir} has no val.json; scoring the derived list ({VAL_SIZE} conditions of 1-3 objects, "
        "fixed seed, none equal to a test or new_test condition; docs/course-kit.md)"
    )


def load_kit(data_dir: Path, images_dir: Path | None = None, splits: bool = True) -> CourseKit:
    """Read and validate a course data folder (JSON files and labels; images are checked separately)."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise UserError(
            f"data folder not found: {data_dir} (point --data-dir at the course kit, or leave it "
            "out to use the embedded rendered kit)"
        )
    objects_path = data_dir / "objects.json"
    if objects_path.exists():
        L.check_objects_mapping(read_json(objects_path, "objects.json"))
    train_path = data_dir / "train.json"
    raw = _validated(
        _TRAIN_SCHEMA,
        read_json(train_path, "train.json"),
        train_path,
        "an object mapping image file name -> list of label names",
    )
    if not raw:
        raise UserError(f"{train_path} lists no images")
    train = {safe_image_name(n, "train.json"): _check_condition(c, f"train.json entry {n}") for n, c in raw.items()}
    kit = CourseKit(data_dir=data_dir, images_dir=Path(images_dir) if images_dir else data_dir / "iclevr", train=train)
    if splits:
        kit.splits = {s: load_split(data_dir, s) for s in SPLITS}
        if (data_dir / "val.json").is_file():  # checked here too, so `data check` catches a bad one
            kit.splits[VAL_SPLIT] = load_val(data_dir, kit.splits)
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
        raise UserError(
            f"images in {kit.images_dir} named by train.json: {'; '.join(parts)}; run `iclevr data check` for details"
        )


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
    from iclevr.paths import iclevr_home

    fallback = iclevr_home() / "data-cache"
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


def load_conditions(data_dir: Path | None, splits=SPLITS) -> dict[str, list[list[str]]]:
    """The condition lists of a kit: <split>.json of `data_dir` validated (objects.json checked when present;
    val derived when it has no val.json), or for None the embedded default kit's lists, computed from its
    label plan without rendering anything."""
    unknown = [s for s in splits if s not in ALL_SPLITS]
    if unknown:
        raise UserError(f'unknown split "{unknown[0]}"; valid: {", ".join(ALL_SPLITS)}')
    if data_dir is None:
        from iclevr.data import plan

        lists = plan.kit_conditions(plan.DEFAULT_KIT)
        return {s: lists[s] for s in splits}
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise UserError(
            f"data folder not found: {data_dir} (point --data-dir at the course kit, or leave it "
            "out to use the embedded rendered kit)"
        )
    if (data_dir / "objects.json").is_file():
        L.check_objects_mapping(read_json(data_dir / "objects.json", "objects.json"))
    lists = {s: load_split(data_dir, s) for s in SPLITS if s in splits or VAL_SPLIT in splits}
    if VAL_SPLIT in splits:
        lists[VAL_SPLIT] = load_val(data_dir, lists)
    return {s: lists[s] for s in splits}
