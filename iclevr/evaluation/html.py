"""Self-contained HTML pages of `iclevr eval` and `iclevr compare-schedules`: one file, opens from disk.

Everything lives in the page: PNGs as data: URIs, inline CSS, charts as inline SVG or CSS bars, no
scripts and no fonts or other resources from the network. Every number taken from the report carries
`data-key` (its path in the report, parts joined by "/") and `data-value` (the exact JSON value), so a
test can check the page against report.json number by number. All text is escaped.
"""

from __future__ import annotations

import base64
import json
from html import escape
from pathlib import Path

from iclevr import labels as L

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;color:#1f2328;
 margin:0;background:#f6f7f9;line-height:1.45}
main{max-width:1180px;margin:0 auto;padding:24px}
h1{font-size:1.6em;margin:0 0 4px}h2{margin:0 0 12px;font-size:1.3em}h3{margin:16px 0 8px;font-size:1.05em}
section{background:#fff;border:1px solid #d8dee4;border-radius:8px;padding:16px 20px;margin:16px 0}
.muted{color:#656d76}.small{font-size:.85em}
code,pre{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,"Liberation Mono",monospace;
 font-size:.85em}code{word-break:break-all}
.cards{display:flex;gap:12px;flex-wrap:wrap;margin-top:12px}
.card{background:#fff;border:1px solid #d8dee4;border-radius:8px;padding:10px 16px;min-width:200px}
.big{font-size:1.7em;font-weight:600}
table{border-collapse:collapse;margin:4px 0 8px}th,td{padding:3px 10px;border-bottom:1px solid #eaeef2;
 text-align:left;vertical-align:top}td.r,th.r{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
tr.total td{font-weight:600;border-top:2px solid #d0d7de}
img{max-width:100%;height:auto;display:block}figure{margin:8px 0}figcaption{font-size:.85em;color:#656d76}
.cols{display:flex;gap:28px;flex-wrap:wrap}.cols>div{flex:1 1 420px}.cols.three>div{flex-basis:300px}
.stack{display:flex;height:18px;border-radius:4px;overflow:hidden;background:#eaeef2;margin:6px 0}
.key{display:inline-block;width:10px;height:10px;border-radius:2px;margin-right:6px}
.binding{background:#9333ea}.colour{background:#2563eb}.shape{background:#0d9488}.other{background:#9ca3af}
details pre{background:#f6f8fa;padding:10px;overflow:auto;font-size:.8em}
.side{display:grid;grid-template-columns:repeat(auto-fit,minmax(320px,1fr));gap:16px}
.figs figure{margin:8px 0 20px}
.side section{margin:0}.best{background:#dcfce7;border-radius:4px;padding:0 4px;font-size:.8em}
"""

BAR_COLOURS = {
    "gray": "#9ca3af",
    "red": "#dc2626",
    "blue": "#2563eb",
    "green": "#16a34a",
    "brown": "#92400e",
    "purple": "#9333ea",
    "cyan": "#06b6d4",
    "yellow": "#eab308",
}
WRONG_KINDS = (
    ("binding", "binding: a requested colour on another requested object's shape"),
    ("colour", "right colour, shape not requested"),
    ("shape", "right shape, colour not requested"),
    ("other", "neither colour nor shape requested"),
)


def _e(value) -> str:
    """Escape any value for HTML text or a quoted attribute."""
    return escape(str(value), quote=True)


def _num(key: str, value, text: str | None = None, tag: str = "span", cls: str = "", attrs: str = "") -> str:
    """A number from the report, tagged with its report path and exact value for tests."""
    shown = text if text is not None else ("–" if value is None else f"{value:.4f}")
    attrs += f' class="{cls}"' if cls else ""
    return f'<{tag}{attrs} data-key="{_e(key)}" data-value="{_e(json.dumps(value))}">{_e(shown)}</{tag}>'


def _count(key: str, value: int, tag: str = "span", cls: str = "") -> str:
    """A whole number from the report (hits, totals, counts), tagged like `_num`."""
    return _num(key, value, str(value), tag=tag, cls=cls)


def _img(png: bytes, alt: str) -> str:
    """An <img> holding the PNG itself as a data: URI."""
    if not isinstance(png, (bytes, bytearray)) or not bytes(png).startswith(b"\x89PNG\r\n\x1a\n"):
        raise ValueError(f"image for {alt!r} is not PNG bytes")
    return f'<img src="data:image/png;base64,{base64.b64encode(bytes(png)).decode()}" alt="{_e(alt)}">'


def _page(title: str, body: str) -> str:
    """The whole document around `body`."""
    return (
        f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f'<meta name="viewport" content="width=device-width, initial-scale=1">\n<title>{_e(title)}</title>\n'
        f"<style>{CSS}</style>\n</head>\n<body>\n<main>\n{body}\n</main>\n</body>\n</html>\n"
    )


def _kv_table(rows: dict, key: str) -> str:
    """A two-column table of a dict (nested values shown as JSON)."""
    if not rows:
        return '<p class="muted">none</p>'
    out = []
    for k, v in rows.items():
        shown = json.dumps(v) if isinstance(v, (dict, list)) else ("–" if v is None else v)
        cell = (
            _num(f"{key}/{k}", v, str(shown), tag="td")
            if isinstance(v, (int, float)) and not isinstance(v, bool)
            else f"<td>{_e(shown)}</td>"
        )
        out.append(f"<tr><th>{_e(k)}</th>{cell}</tr>")
    return f"<table>{''.join(out)}</table>"


def _details_json(summary: str, value) -> str:
    """A collapsed <details> block holding `value` as indented JSON."""
    return (
        f"<details><summary>{_e(summary)}</summary><pre>{_e(json.dumps(value, indent=2, sort_keys=True))}"
        "</pre></details>"
    )


# ---- the report of `iclevr eval` -------------------------------------------------------------------


def _accuracy_table(split: str, r: dict) -> str:
    """Accuracy per sampling seed, then mean ± std."""
    key = f"splits/{split}"
    rows = [
        f"<tr><td>{_e(run['seed'])}</td>{_num(f'{key}/runs/{i}/accuracy', run['accuracy'], tag='td', cls='r')}"
        f'<td class="r">{_num(f"{key}/runs/{i}/hits", run["hits"], str(run["hits"]))} / '
        f"{_num(f'{key}/runs/{i}/total', run['total'], str(run['total']))}</td></tr>"
        for i, run in enumerate(r["runs"])
    ]
    total = (
        f'<tr class="total"><td>mean ± std</td><td class="r">{_num(f"{key}/mean", r["mean"])} ± '
        f'{_num(f"{key}/std", r["std"])}</td><td class="r">{_num(f"{key}/hits", r["hits"], str(r["hits"]))}'
        f" / {_num(f'{key}/total', r['total'], str(r['total']))}</td></tr>"
    )
    return (
        '<table><tr><th>sampling seed</th><th class="r">accuracy</th><th class="r">hits / objects</th></tr>'
        + "".join(rows)
        + total
        + "</table>"
    )


def _recall_chart(split: str, recall: dict) -> str:
    """Per-class recall as an inline SVG bar chart, one bar per class in the class's own colour."""
    row, left, width = 17, 112, 240
    parts = []
    for i, label in enumerate(L.LABELS):
        y = 4 + i * row + (i // len(L.COLOURS)) * 8  # a small gap between the shape groups
        value = recall.get(label)
        colour = BAR_COLOURS.get(label.split()[0], "#6b7280")
        parts.append(
            f'<text x="{left - 6}" y="{y + 12}" text-anchor="end">{_e(label)}</text>'
            f'<rect x="{left}" y="{y + 2}" width="{width}" height="{row - 5}" fill="#eaeef2"/>'
        )
        if value is not None:
            parts.append(
                f'<rect x="{left}" y="{y + 2}" width="{width * value:.1f}" height="{row - 5}" '
                f'fill="{colour}"><title>{_e(label)}: {value:.2f}</title></rect>'
            )
        text = "not requested" if value is None else f"{value:.2f}"
        parts.append(
            _num(
                f"splits/{split}/per_class_recall/{label}",
                value,
                text,
                tag="text",
                attrs=f' x="{left + width + 6}" y="{y + 12}"',
            )
        )
    height = 4 + len(L.LABELS) * row + 2 * 8 + 4
    return (
        f'<svg role="img" aria-label="per-class recall" width="{left + width + 100}" height="{height}" '
        f'viewBox="0 0 {left + width + 100} {height}" font-size="12" fill="#1f2328">{"".join(parts)}</svg>'
    )


def _wrong_breakdown(split: str, r: dict) -> str:
    """The kinds of wrong predictions as a stacked bar and a table, then the binding facts."""
    w, b, key = r["wrong_predictions"], r["binding"], f"splits/{split}"
    total = w["total"]
    bar = "".join(
        f'<div class="{k}" style="width:{100 * w[k] / total:.2f}%" title="{_e(k)}"></div>'
        for k, _ in WRONG_KINDS
        if total and w[k]
    )
    rows = "".join(
        f'<tr><td><span class="key {k}"></span>{_e(text)}</td>'
        + _count(f"{key}/wrong_predictions/{k}", w[k], tag="td", cls="r")
        + "</tr>"
        for k, text in WRONG_KINDS
    )
    share = _num(f"{key}/binding/share_of_wrong", b["share_of_wrong"], f"{b['share_of_wrong']:.1%}")
    images = _count(f"{key}/binding/images", b["images"])
    images_total = _count(f"{key}/binding/images_total", b["images_total"])
    swaps = _count(f"{key}/binding/full_swaps", b["full_swaps"])
    return (
        f"<p>wrong predictions (pooled over the sampling seeds): "
        f"{_count(f'{key}/wrong_predictions/total', total)}</p>"
        f'<div class="stack">{bar}</div><table>{rows}</table>'
        f"<p>images with a binding error (all seeds): {images} of {images_total}; binding share of wrong "
        f"predictions: "
        f"{share}; full colour/shape swaps (two requested objects with colours exchanged): {swaps}</p>"
    )


def _most_missed(split: str, missed: list[dict]) -> str:
    """The objects most often missed (missed / requested, pooled over the sampling seeds)."""
    if not missed:
        return '<p class="muted">no requested object was missed</p>'
    key = f"splits/{split}/most_missed"
    rows = "".join(
        f'<tr><td>{_e(m["label"])}</td><td class="r">'
        f"{_num(f'{key}/{i}/missed', m['missed'], str(m['missed']))} / "
        f"{_num(f'{key}/{i}/requested', m['requested'], str(m['requested']))}</td></tr>"
        for i, m in enumerate(missed)
    )
    return f'<table><tr><th>object</th><th class="r">missed / requested (all seeds)</th></tr>{rows}</table>'


def _per_condition(split: str, r: dict) -> str:
    """A collapsed table: each condition, its hits and the judge's top-k for the first sampling seed."""
    run = r["runs"][0]
    rows = "".join(
        f'<tr><td class="r">{i}</td><td>{_e(", ".join(c))}</td><td class="r">'
        f"{_num(f'splits/{split}/runs/0/per_condition/{i}', h, f'{h}/{len(c)}')}</td>"
        f"<td>{_e(', '.join(p))}</td></tr>"
        for i, (c, h, p) in enumerate(zip(r["conditions"], run.get("per_condition", []), run.get("predicted", [])))
    )
    return (
        f'<details><summary>per condition (seed {_e(run["seed"])})</summary><table><tr><th class="r">#</th>'
        f'<th>requested</th><th class="r">hits</th><th>evaluator\'s top-k</th></tr>{rows}</table></details>'
    )


def _split_section(split: str, r: dict, grid: bytes | None) -> str:
    """Everything about one split."""
    seed = r["runs"][0]["seed"] if r["runs"] else "?"
    figure = (
        f"<figure>{_img(grid, f'{split}: annotated grid')}<figcaption>sampling seed {_e(seed)}: each image "
        "with its requested objects, green = found by the evaluator, red = missed, amber = predicted but "
        "not requested</figcaption></figure>"
        if grid
        else '<p class="muted">no annotated grid</p>'
    )
    objects = _count(f"splits/{split}/objects", r["objects"])
    recall = '<h3>per-class recall <span class="muted small">found / requested, all seeds</span></h3>' + _recall_chart(
        split, r["per_class_recall"]
    )
    return (
        f'<section id="split-{_e(split)}"><h2>{_e(split)} <span class="muted small">'
        f"{len(r['conditions'])} conditions, {objects} objects</span></h2>{_accuracy_table(split, r)}"
        f"{_fidelity_table(split, r.get('fidelity'))}{figure}"
        f'<div class="cols"><div>{recall}</div><div><h3>wrong predictions</h3>{_wrong_breakdown(split, r)}'
        f"<h3>most often missed</h3>{_most_missed(split, r['most_missed'])}</div></div>"
        f"{_per_condition(split, r)}</section>"
    )


def _fidelity_table(split: str, f: dict | None) -> str:
    """KID x 10^3 and FD of the generated images beside the real-vs-real floor, and what "real" is."""
    if not f:
        return ""
    key = f"splits/{split}/fidelity"
    rows = []
    for name, label in (("generated", "generated vs real"), ("floor", "real vs real (floor)")):
        m, k = f[name], f"{key}/{name}"
        kid = _num(f"{k}/kid", m["kid"], f"{1e3 * m['kid']:.1f}")
        std = _num(f"{k}/kid_std", m["kid_std"], f"{1e3 * m['kid_std']:.1f}")
        fd = _num(f"{k}/fd", m["fd"], f"{m['fd']:.2f}", tag="td", cls="r")
        rows.append(
            f'<tr><td>{label}</td><td class="r">{kid} ± {std}</td>{fd}'
            f'<td class="r">{m["n_generated"]} vs {m["n_reference"]}</td></tr>'
        )
    return (
        '<h3>fidelity <span class="muted small">lower is closer to real; '
        f"{_e(f['reference'])}; features: {_e(f['features'])}</span></h3><table><tr><th></th>"
        '<th class="r">KID ×10³ (± std over subsets)</th><th class="r">FD</th><th class="r">images</th></tr>'
        + "".join(rows)
        + "</table>"
    )


def _setup_section(report: dict) -> str:
    """The model, sampler, evaluator and settings behind the numbers."""
    ev = report.get("evaluator") or {}
    held = ev.get("heldout") or {}
    source = (
        f"<p>checkpoint: <code>{_e(report['checkpoint'])}</code></p>"
        if report.get("checkpoint")
        else f"<p>scored existing images from <code>{_e(report.get('images'))}</code></p>"
    )
    held_text = ", ".join(f"{_e(k)} {_num(f'evaluator/heldout/{k}', v)}" for k, v in held.items())
    evaluator = (
        f"<p>{_e(ev.get('kind', '?'))} <code>{_e(ev.get('path') or '')}</code></p>"
        f"<p>sha256: <code>{_e(ev.get('sha256') or 'unknown')}</code></p>"
        + (f"<p>held-out accuracy: {held_text}</p>" if held else "")
    )
    data = f"<p>data: <code>{_e(report['data_dir'])}</code></p>" if report.get("data_dir") else ""
    return (
        f'<section id="setup"><h2>setup</h2>{source}{data}<div class="cols three">'
        f"<div><h3>model</h3>{_kv_table(report.get('model') or {}, 'model')}</div>"
        f"<div><h3>sampler</h3>{_kv_table(report.get('sampler') or {}, 'sampler')}</div>"
        f"<div><h3>evaluator</h3>{evaluator}</div></div>"
        f"{_details_json('all settings (JSON)', report.get('settings') or {})}</section>"
    )


def _summary_line(report: dict) -> str:
    """'preset tiny · step 1200 · sampler dpmpp-sde, 20 steps' (or the scored image folder)."""
    model, sampler = report.get("model") or {}, report.get("sampler") or {}
    parts = [f"{k} {v}" for k, v in model.items() if v is not None]
    if sampler.get("sampler"):
        steps = f", {sampler['steps']} steps" if sampler.get("steps") else ""
        parts.append(f"sampler {sampler['sampler']}{steps}")
    return " · ".join(parts) or f"images from {report.get('images')}"


def render_report(report: dict, *, images: dict[str, bytes], title: str = "iclevr evaluation") -> str:
    """The report.json of `iclevr eval` as one self-contained HTML page; `images` maps a split to the PNG
    bytes of its annotated grid."""
    splits = report.get("splits") or {}
    unknown = sorted(set(images) - set(splits))
    if unknown:
        raise ValueError(f"images given for splits the report lacks: {', '.join(unknown)}")
    cards = "".join(
        f'<div class="card"><div class="muted">{_e(s)}</div><div class="big">'
        f'{_num(f"splits/{s}/mean", r["mean"])} <span class="muted small">± '
        f'{_num(f"splits/{s}/std", r["std"])}</span></div><div class="muted small">course metric, '
        f"{len(r['runs'])} sampling seed(s)</div></div>"
        for s, r in splits.items()
    )
    head = (
        f'<header><h1>{_e(title)}</h1><p>{_e(_summary_line(report))}</p><p class="muted small">top-k '
        "accuracy: of the k objects an image should contain, how many are among the evaluator's k most "
        f'confident classes, summed over the split</p><div class="cards">{cards}</div></header>'
    )
    body = head + "".join(_split_section(s, r, images.get(s)) for s, r in splits.items()) + _setup_section(report)
    return _page(title, body)


def write_report(path: Path, report: dict, *, images: dict[str, bytes], title: str = "iclevr evaluation") -> Path:
    """Render the evaluation page and write it to `path` atomically."""
    from iclevr.fileio import atomic_write_text

    atomic_write_text(Path(path), render_report(report, images=images, title=title))
    return Path(path)


# ---- the page of `iclevr compare-schedules` --------------------------------------------------------


def _schedule_card(i: int, row: dict, grid: bytes | None, best: str | None) -> str:
    """One schedule: accuracy per split (val first, labelled with its role), loss, training time and grid."""
    lines = []
    for split in L.ordered_splits(row["splits"]):
        s, key = row["splits"][split], f"runs/{i}/splits/{split}"
        badge = ' <span class="best">best</span>' if split == L.VAL_SPLIT and best == row["name"] else ""
        values = ", ".join(_num(f"{key}/values/{j}", v, f"{v:.3f}") for j, v in enumerate(s.get("values", [])))
        role = f' <span class="small muted">({_e(L.SPLIT_ROLE[split])})</span>' if split in L.SPLIT_ROLE else ""
        lines.append(
            f'<tr><th>{_e(split)}{role}</th><td class="r">{_num(f"{key}/mean", s["mean"])} ± '
            f'{_num(f"{key}/std", s["std"])}{badge}</td><td class="small muted">{values}</td></tr>'
        )
    loss, wall = row.get("final_loss"), row.get("train_wall_s")
    facts = (
        f'<p class="small">final loss {_num(f"runs/{i}/final_loss", loss)}; training '
        f"{_num(f'runs/{i}/train_wall_s', wall, '–' if wall is None else f'{wall / 60:.1f} min')}</p>"
    )
    image = _img(grid, f"{row['name']}: grid") if grid else '<p class="muted">no grid</p>'
    return (
        f'<section id="schedule-{_e(row["name"])}"><h2>{_e(row["name"])}</h2><table>{"".join(lines)}</table>'
        f"{facts}{image}</section>"
    )


def render_comparison(
    report: dict, *, grids: dict[str, bytes], figures: dict[str, bytes], title: str = "iclevr: noise schedules compared"
) -> str:
    """compare-schedules' page: figures (caption -> PNG), then per schedule its accuracy (val first, the best
    schedule badged on val only) and grid (schedule name -> PNG)."""
    rows, best = report["runs"], report.get("best")
    unknown = sorted(set(grids) - {r["name"] for r in rows})
    if unknown:
        raise ValueError(f"grids given for schedules the rows lack: {', '.join(unknown)}")
    figs = "".join(
        f"<figure>{_img(png, caption)}<figcaption>{_e(caption)}</figcaption></figure>"
        for caption, png in figures.items()
    )
    figs = f'<section><h2>figures</h2><div class="figs">{figs}</div></section>' if figs else ""
    chosen = f'<p id="best">best on {_e(L.VAL_SPLIT)}: <strong>{_e(best)}</strong></p>' if best else ""
    cards = "".join(_schedule_card(i, r, grids.get(r["name"]), best) for i, r in enumerate(rows))
    body = (
        f'<header><h1>{_e(title)}</h1><p class="muted">course metric per split, mean ± std over training and '
        f"sampling seeds. {_e(L.VAL_SPLIT)} chooses: the best schedule is the one with the highest "
        f"{_e(L.VAL_SPLIT)} mean; {_e(' and '.join(L.SPLITS))} are reported, never tuned on.</p>"
        f'{chosen}</header>{figs}<div class="side">{cards}</div>'
        + (
            f"<section>{_details_json('all settings (JSON)', report['settings'])}</section>"
            if report.get("settings")
            else ""
        )
    )
    return _page(title, body)


def write_comparison(path: Path, report: dict, **kwargs) -> Path:
    """Render the comparison page (arguments as `render_comparison`) and write it to `path` atomically."""
    from iclevr.fileio import atomic_write_text

    atomic_write_text(Path(path), render_comparison(report, **kwargs))
    return Path(path)
