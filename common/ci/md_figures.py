"""The HTML report's figures for the Markdown summary (CI job pages): small image files written next to
summary.md (under plots/) and referenced by relative links, plus the lowest-AP categories as a table.

Per accuracy case: precision / recall at IoU 0.5 and 0.75 with AP by object size and its intervals (PNG); per
comparison (FP16 / INT8 vs the FP32 reference, a run vs its baseline): the images whose detections changed most,
both sets of boxes drawn side by side (JPEG: they are photographs); per performance case: the latency histogram
with p50 / p90 / p99 (PNG). Each file is a few tens of kB.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from common.ci.baselines import slug
from common.ci.html_report import Comparison
from common.ci.reports import _md_escape, _pyplot
from common.report.html import AP_STATS, _annotations, _names_files

MD_IMAGES = 3  # changed images in one comparison's strip
MD_SIDE = 240  # longest side of one of them, pixels
DPI = 72
WORST = 5  # categories in the lowest-AP table


def _accuracy_png(record: dict, path: Path) -> bool:
    m, ci = record.get("metrics") or {}, (record.get("metrics_ci") or {}).get("stats") or {}
    pr = (record.get("accuracy_detail") or {}).get("pr") or {}
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(7, 2.6))
    for key in sorted(pr):
        left.plot(pr[key]["recall"], pr[key]["precision"], label=f"IoU {key}")
    left.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1), title="precision / recall")
    if pr:
        left.legend(fontsize=7)
    sizes = [("small", "APs"), ("medium", "APm"), ("large", "APl")]
    vals = [(m.get(k) or 0.0) * 100 for _, k in sizes]
    err = np.array(
        [
            [v - ci[k][0] * 100, ci[k][1] * 100 - v] if k in ci and None not in ci[k] else [0.0, 0.0]
            for v, (_, k) in zip(vals, sizes)
        ]
    ).T.clip(0)
    right.bar([s for s, _ in sizes], vals, yerr=err, capsize=3)
    right.set(ylabel="AP x100", title="AP by object size (95 % interval)")
    for ax in (left, right):
        ax.tick_params(labelsize=7)
        ax.title.set_size(9)
        ax.xaxis.label.set_size(8)
        ax.yaxis.label.set_size(8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return True


def _latency_png(record: dict, path: Path) -> bool:
    t = record.get("timing") or {}
    h = t.get("histogram")
    if not h:
        return False
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 2.4))
    edges = np.asarray(h["edges_ms"], np.float64)
    ax.bar(edges[:-1], h["counts"], width=np.diff(edges), align="edge")
    for name, colour in (("p50", "#2ca02c"), ("p90", "#ff7f0e"), ("p99", "#d62728")):
        if t.get(f"{name}_ms") is not None:
            ax.axvline(t[f"{name}_ms"], color=colour, linestyle="--", label=f"{name} {t[f'{name}_ms']:.2f} ms")
    ax.set(
        xlabel="ms per inference call", ylabel="count", title=f"latency, {record['precision']} bs{record['batch_size']}"
    )
    ax.legend(fontsize=7)
    ax.tick_params(labelsize=7)
    ax.title.set_size(9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return True


def _bgr(colour: str) -> tuple[int, int, int]:
    r, g, b = (int(colour[i : i + 2], 16) for i in (1, 3, 5))
    return b, g, r


def _changed_jpeg(c: Comparison, path: Path) -> list[tuple[float, int]]:
    """The strip of the comparison's most changed images with both sets of boxes; the images drawn."""
    import cv2

    assert c.changed is not None
    names, files = _names_files(_annotations(c.record))
    images_dir = c.record["dataset"].get("images_dir")
    tiles: list[np.ndarray] = []
    drawn: list[tuple[float, int]] = []
    for score, image_id in c.changed.ranked:
        if len(tiles) == MD_IMAGES:
            break
        img = cv2.imread(str(Path(images_dir or "") / files.get(image_id, ""))) if images_dir else None
        if img is None:
            continue
        scale = min(1.0, MD_SIDE / max(img.shape[:2]))
        img = cv2.resize(img, (round(img.shape[1] * scale), round(img.shape[0] * scale)), interpolation=cv2.INTER_AREA)
        for (_, colour, boxes), width in zip(c.changed.box_sets(image_id, names), (2, 1)):
            for x1, y1, x2, y2, _, _ in boxes:
                p1, p2 = (round(x1 * scale), round(y1 * scale)), (round(x2 * scale), round(y2 * scale))
                cv2.rectangle(img, p1, p2, _bgr(colour), width)
        tiles.append(img)
        drawn.append((score, image_id))
    if not tiles:
        return []
    height = max(t.shape[0] for t in tiles)
    gap = np.full((height, 4, 3), 255, np.uint8)
    row = []
    for t in tiles:
        pad = np.full((height - t.shape[0], t.shape[1], 3), 255, np.uint8)
        row += [np.vstack([t, pad]), gap]
    ok, buf = cv2.imencode(".jpg", np.hstack(row[:-1]), [cv2.IMWRITE_JPEG_QUALITY, 80])
    if not ok:
        return []
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buf.tobytes())
    return drawn


def _worst_categories(record: dict) -> str:
    per = [c for c in (record.get("accuracy_detail") or {}).get("per_class", []) if c.get("AP") is not None]
    if len(per) < 2:
        return ""
    per.sort(key=lambda c: c["AP"])
    rows = [
        f"| {_md_escape(str(c['name']))} | {c['gt']} | "
        + " | ".join("-" if c.get(k) is None else f"{c[k] * 100:.2f}" for k in AP_STATS)
        + " |"
        for c in per[:WORST]
    ]
    head = "| category | ground truth | " + " | ".join(AP_STATS) + " |\n|" + " --- |" * (2 + len(AP_STATS))
    return f"\nLowest AP of {len(per)} categories (x100):\n\n{head}\n" + "\n".join(rows) + "\n"


def markdown_figures(verdicts: list[dict], outcomes: list[dict], compared: list[Comparison], run_dir: Path) -> str:
    """The figures section of summary.md: image files written under run_dir/plots/, linked relatively."""
    run_dir = Path(run_dir)
    by_id = {o["case"]["id"]: o for o in outcomes}
    out = []

    def link(path: Path, alt: str) -> str:
        return f"![{_md_escape(alt)}]({path.relative_to(run_dir).as_posix()})"

    for v in verdicts:
        recs = (by_id.get(v["id"]) or {}).get("records") or []
        if not recs:
            continue
        path = run_dir / "plots" / f"{v['case']['kind']}_{slug(v['id'])}.png"
        if v["case"]["kind"] == "accuracy" and recs[0].get("metrics") and _accuracy_png(recs[0], path):
            out.append(f"\n**`{v['id']}`**\n\n{link(path, 'precision / recall and AP by size')}\n")
            out.append(_worst_categories(recs[0]))
        elif v["case"]["kind"] == "performance" and _latency_png(recs[0], path):
            out.append(f"\n**`{v['id']}`**\n\n{link(path, 'latency histogram')}\n")
    for c in compared:
        if c.changed is None:
            out.append(f"\n**`{c.title}`**: no images drawn ({_md_escape(str(c.error))})\n")
            continue
        path = run_dir / "plots" / f"changed_{slug(c.title)}.jpg"
        drawn = _changed_jpeg(c, path) if c.changed.ranked else []
        if not drawn:
            out.append(f"\n**`{c.title}`**: no image's detections (score >= {c.changed.threshold}) changed\n")
            continue
        which = ", ".join(f"image {i} (change {s:.2f})" for s, i in drawn)
        out.append(
            f"\n**`{c.title}`**: the {len(drawn)} images whose detections changed most, "
            f"{c.changed.labels[0]} thick, {c.changed.labels[1]} thin: {which}\n\n{link(path, 'changed images')}\n"
        )
    return "\n### Figures\n" + "".join(out) if out else ""
