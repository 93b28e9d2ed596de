"""Figures as inline SVG text (no plotting library, nothing fetched when the page opens): line charts, bars, a
histogram and an image with two sets of boxes drawn over it."""

from __future__ import annotations

import base64
import html
from collections.abc import Callable

COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2")
W, H, PAD = 520, 300, 48
Scale = Callable[[float], float]  # data value -> pixel coordinate


def esc(text) -> str:
    """`text` as a string safe inside SVG / HTML text and attribute values: labels come from records and specs."""
    return html.escape(str(text), quote=True)


def _scale(lo: float, hi: float, a: float, b: float) -> Scale:
    span = (hi - lo) or 1.0
    return lambda v: a + (v - lo) / span * (b - a)


def _frame(
    title: str, xlabel: str, ylabel: str, x0, x1, y0, y1, xfmt="{:g}", yfmt="{:g}"
) -> tuple[list[str], Scale, Scale]:
    sx, sy = _scale(x0, x1, PAD, W - 12), _scale(y0, y1, H - PAD, 24)
    out = [
        f'<svg class="fig" xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" '
        f'role="img" aria-label="{esc(title)}">',
        f'<text x="{W / 2}" y="15" text-anchor="middle" class="t">{esc(title)}</text>',
        f'<rect x="{PAD}" y="24" width="{W - 12 - PAD}" height="{H - PAD - 24}" fill="none" stroke="#999"/>',
    ]
    for i in range(5):
        xv, yv = x0 + (x1 - x0) * i / 4, y0 + (y1 - y0) * i / 4
        out.append(
            f'<text x="{sx(xv):.1f}" y="{H - PAD + 14}" text-anchor="middle" class="a">{esc(xfmt.format(xv))}</text>'
        )
        out.append(
            f'<text x="{PAD - 4}" y="{sy(yv) + 4:.1f}" text-anchor="end" class="a">{esc(yfmt.format(yv))}</text>'
        )
        out.append(f'<line x1="{PAD}" x2="{W - 12}" y1="{sy(yv):.1f}" y2="{sy(yv):.1f}" stroke="#eee"/>')
    out.append(f'<text x="{W / 2}" y="{H - 10}" text-anchor="middle" class="a">{esc(xlabel)}</text>')
    out.append(
        f'<text x="12" y="{H / 2}" text-anchor="middle" class="a" transform="rotate(-90 12 {H / 2})">'
        f'{esc(ylabel)}</text>'
    )
    return out, sx, sy


def lines(
    title: str,
    series: list[tuple[str, list, list]],
    xlabel: str,
    ylabel: str,
    band=None,
    hlines=(),
    y_range=None,
    xfmt="{:g}",
    yfmt="{:g}",
) -> str:
    """Line chart: series [(label, xs, ys)]; band (xs, lo, hi) shaded; hlines [(label, y)] dashed."""
    xs = [x for _, sx_, _ in series for x in sx_] or [0, 1]
    ys = [y for _, _, s in series for y in s if y is not None] + [y for _, y in hlines]
    if band:
        ys += list(band[1]) + list(band[2])
    y0, y1 = y_range or (min(ys, default=0), max(ys, default=1))
    if y1 <= y0:
        y0, y1 = y0 - 0.5, y1 + 0.5
    out, sx, sy = _frame(
        title, xlabel, ylabel, min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1, y0, y1, xfmt, yfmt
    )
    if band:
        bx, lo, hi = band
        pts = [(sx(x), sy(v)) for x, v in zip(bx, hi)] + [(sx(x), sy(v)) for x, v in reversed(list(zip(bx, lo)))]
        out.append(
            '<polygon fill="#2ca02c" fill-opacity="0.15" stroke="none" points="'
            + " ".join(f"{x:.1f},{y:.1f}" for x, y in pts)
            + '"/>'
        )
    for label, y in hlines:
        out.append(
            f'<line x1="{PAD}" x2="{W - 12}" y1="{sy(y):.1f}" y2="{sy(y):.1f}" stroke="#555" '
            f'stroke-dasharray="5 4"/><text x="{W - 14}" y="{sy(y) - 4:.1f}" text-anchor="end" class="a">'
            f'{esc(label)}</text>'
        )
    for i, (label, sxs, sys_) in enumerate(series):
        c = COLOURS[i % len(COLOURS)]
        line = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in zip(sxs, sys_) if y is not None)
        out.append(f'<polyline fill="none" stroke="{c}" stroke-width="2" points="{line}"/>')
        if len(sxs) <= 30:
            out += [
                f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="3" fill="{c}"/>'
                for x, y in zip(sxs, sys_)
                if y is not None
            ]
        out.append(f'<text x="{PAD + 8}" y="{40 + 14 * i}" class="a" fill="{c}">{esc(label)}</text>')
    out.append("</svg>")
    return "".join(out)


def bars(title: str, labels: list[str], values: list, ylabel: str, errors=None, yfmt="{:g}") -> str:
    """Bar chart with optional [lo, hi] error bars per bar."""
    vals = [v if v is not None else 0.0 for v in values]
    top = max(vals + [hi for e in (errors or []) if e for hi in e[1:]] + [1e-9])
    out, sx, sy = _frame(title, "", ylabel, 0, max(1, len(vals)), 0, top * 1.1, "", yfmt)
    bw = (W - 12 - PAD) / max(1, len(vals)) * 0.6
    for i, (lab, v) in enumerate(zip(labels, vals)):
        x = sx(i + 0.5)
        out.append(
            f'<rect x="{x - bw / 2:.1f}" y="{sy(v):.1f}" width="{bw:.1f}" height="{sy(0) - sy(v):.1f}" '
            f'fill="{COLOURS[0]}"><title>{esc(lab)}: {esc(yfmt.format(v))}</title></rect>'
        )
        out.append(f'<text x="{x:.1f}" y="{H - PAD + 14}" text-anchor="middle" class="a">{esc(lab)}</text>')
        if errors and errors[i]:
            lo, hi = errors[i]
            out.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{sy(lo):.1f}" y2="{sy(hi):.1f}" stroke="#000"/>')
    out.append("</svg>")
    return "".join(out)


def histogram(title: str, edges: list, counts: list, xlabel: str, marks=()) -> str:
    """Histogram from bin edges and counts, with vertical marks [(label, x)] (percentiles)."""
    out, sx, sy = _frame(title, xlabel, "count", edges[0], edges[-1], 0, max(counts + [1]) * 1.1, "{:.3g}", "{:.0f}")
    for lo, hi, c in zip(edges[:-1], edges[1:], counts):
        out.append(
            f'<rect x="{sx(lo):.1f}" y="{sy(c):.1f}" width="{max(sx(hi) - sx(lo) - 1, 1):.1f}" '
            f'height="{sy(0) - sy(c):.1f}" fill="{COLOURS[0]}"/>'
        )
    for i, (label, x) in enumerate(marks):
        xx = sx(min(max(x, edges[0]), edges[-1]))
        out.append(
            f'<line x1="{xx:.1f}" x2="{xx:.1f}" y1="24" y2="{H - PAD}" stroke="{COLOURS[1 + i]}" '
            f'stroke-dasharray="4 3"/><text x="{xx + 3:.1f}" y="{36 + 12 * i}" class="a" '
            f'fill="{COLOURS[1 + i]}">{esc(label)}</text>'
        )
    out.append("</svg>")
    return "".join(out)


def boxes_on_image(
    jpeg: bytes, width: int, height: int, scale: float, sets: list[tuple[str, str, list]], caption: str
) -> str:
    """An image (JPEG bytes, already scaled by `scale` from width x height) with box sets [(name, colour,
    [(x1, y1, x2, y2, score, label)])] in original pixels; a figure with a legend."""
    w, h = int(round(width * scale)), int(round(height * scale))
    data = base64.b64encode(jpeg).decode()
    out = [
        f'<figure class="det"><svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" '
        f'viewBox="0 0 {w} {h}"><image class="photo" width="{w}" height="{h}" '
        f'href="data:image/jpeg;base64,{data}"/>'
    ]
    for name, colour, dets in sets:
        dash = ' stroke-dasharray="5 3"' if name != sets[0][0] else ""
        for x1, y1, x2, y2, score, label in dets:
            out.append(
                f'<rect x="{x1 * scale:.1f}" y="{y1 * scale:.1f}" width="{(x2 - x1) * scale:.1f}" '
                f'height="{(y2 - y1) * scale:.1f}" fill="none" stroke="{colour}" stroke-width="2"{dash}>'
                f'<title>{esc(name)}: {esc(label)} {score:.2f}</title></rect>'
            )
            out.append(
                f'<text x="{x1 * scale + 2:.1f}" y="{max(y1 * scale - 2, 9):.1f}" class="bl" '
                f'fill="{colour}">{esc(label)} {score:.2f}</text>'
            )
    legend = " ".join(f'<span style="color:{c}">&#9632; {esc(n)} ({len(d)})</span>' for n, c, d in sets)
    out.append(f"</svg><figcaption>{esc(caption)}<br>{legend}</figcaption></figure>")
    return "".join(out)
