"""Contact sheets: a labelled grid of training images of any course-layout folder."""

from __future__ import annotations

import io
from pathlib import Path

from iclevr.errors import UserError
from iclevr.fileio import atomic_write_bytes, check_output_file

SHEET_SIZES = ("64", "full")
CAPTION_LINES = 5  # room for up to five label names under each image
ZOOM_64 = 2  # 64x64 images are shown pixel-exact, magnified by nearest-neighbour


def pick_images(train: dict[str, list[str]], n: int) -> list[str]:
    """n image names spread evenly over the folder, taking 1-, 2-, 3-... object images in turn."""
    buckets: dict[int, list[str]] = {}
    for name in sorted(train):
        buckets.setdefault(len(train[name]), []).append(name)
    groups = [buckets[k] for k in sorted(buckets)]
    quota = [n // len(groups) + (g < n % len(groups)) for g in range(len(groups))]
    picked = {
        g: [names[int((i + g / len(groups)) * len(names) / q)] for i in range(min(q, len(names)))]
        for g, (names, q) in enumerate(zip(groups, quota))
        if q
    }
    out = [picked[g][i] for i in range(max(quota)) for g in picked if i < len(picked[g])]
    return out[:n]


def contact_sheet(data_dir: Path, out: Path, n: int = 24, size: str = "64", columns: int = 6) -> Path:
    """Write a grid of n training images with their labels under each; `size` '64' shows what the model sees
    (the frame squashed to 64x64 like the loader, magnified 2x), 'full' the PNG as stored."""
    from PIL import Image, ImageDraw, ImageFont

    from iclevr.data.course import load_kit

    if size not in SHEET_SIZES:
        raise UserError(f'--size must be "64" or "full", not "{size}"')
    if n < 1:
        raise UserError("--n must be at least 1")
    check_output_file(out, "contact_sheet.png")
    kit = load_kit(data_dir, splits=False)
    chosen = pick_images(kit.train, n)
    tiles = []
    for name in chosen:
        try:
            with Image.open(kit.images_dir / name) as img:
                img = img.convert("RGB")
        except (OSError, ValueError) as e:
            raise UserError(f"cannot read {kit.images_dir / name}: {e}") from None
        if size == "64":
            img = img.resize((64, 64), Image.BILINEAR).resize((64 * ZOOM_64, 64 * ZOOM_64), Image.NEAREST)
        tiles.append((img, kit.train[name]))
    font = ImageFont.load_default()
    line_h = 13
    cell_w = max(max(t[0].width for t in tiles), 132) + 8
    cell_h = max(t[0].height for t in tiles) + 6 + line_h * CAPTION_LINES
    rows = (len(tiles) + columns - 1) // columns
    sheet = Image.new("RGB", (cell_w * min(columns, len(tiles)), cell_h * rows), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for i, (img, names) in enumerate(tiles):
        x, y = (i % columns) * cell_w + 4, (i // columns) * cell_h + 2
        sheet.paste(img, (x + (cell_w - 8 - img.width) // 2, y))
        for j, label in enumerate(names[:CAPTION_LINES]):
            draw.text((x, y + img.height + 3 + j * line_h), label, fill=(20, 20, 20), font=font)
    buf = io.BytesIO()
    sheet.save(buf, format="PNG")
    atomic_write_bytes(Path(out), buf.getvalue())
    return Path(out)
