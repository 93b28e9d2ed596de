"""One self-contained HTML file per run, per compare and per regression run (docs/reports.md).

Everything is inline: CSS, a few lines of JavaScript (table sorting), SVG figures and base64 JPEG thumbnails, so
the file opens offline and requests nothing. Sections, in order: verdict (targets, the accuracy rule used and
why), accuracy (12 stats with 95 % intervals, per-class AP, PR curves, AP by size), speed (latency histogram,
FPS of each kind, FPS vs batch, CoV, validity), candidate vs reference (the images whose detections changed
most, both sets of boxes drawn; per-output errors; FP16 range findings and the block list), history (AP and FPS
over past runs with the baseline and its band).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from common.engine_cache import atomic_write_bytes
from common.evaluate.metrics import STAT_LABELS, STAT_NAMES
from common.metric_table import metric
from common.report import svg
from common.report.svg import esc

if TYPE_CHECKING:
    from common.data.coco import DatasetRequest

AP_STATS = tuple(n for n in STAT_NAMES if n.startswith("AP"))  # the per-category table's columns

MAX_IMAGES = 6  # changed images drawn per comparison
# drawn images in one page at most (a regression run compares many cases): at 300 detections per image one drawn
# image is ~0.14 MB of the file (its JPEG and the boxes' SVG), so the page stays far below its 10 MB
PAGE_IMAGES = 36
THUMB_SIDE = 480  # longest side of a drawn image, pixels

_CSS = """body{font:14px/1.4 system-ui,sans-serif;margin:0 auto;max-width:1100px;padding:0 16px;color:#222}
h1{font-size:22px}h2{border-bottom:2px solid #ddd;padding-bottom:4px;margin-top:28px}h3{font-size:15px}
.pass{color:#17803d}.fail{color:#c62828}.warn{color:#b26a00}.badge{font-weight:bold;font-size:18px}
table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ddd;padding:3px 8px;text-align:right}
th{background:#f4f4f4;cursor:pointer}td:first-child,th:first-child{text-align:left}
.fig{margin:6px;background:#fff}.t{font-size:13px;font-weight:bold}.a{font-size:11px}.bl{font-size:10px}
figure.det{display:inline-block;margin:6px;vertical-align:top}figcaption{font-size:12px;max-width:480px}
.notes li{margin:2px 0}pre{background:#f6f6f6;padding:8px;overflow:auto}"""

_JS = """document.querySelectorAll('table.sortable th').forEach(function(th,i){th.addEventListener('click',function(){
var t=th.closest('table'),b=t.tBodies[0],r=Array.from(b.rows),asc=th.dataset.asc!=='1';th.dataset.asc=asc?'1':'0';
r.sort(function(x,y){var a=x.cells[i].dataset.v||x.cells[i].textContent,c=y.cells[i].dataset.v||y.cells[i].textContent;
var p=parseFloat(a),q=parseFloat(c);var d=(isNaN(p)||isNaN(q))?a.localeCompare(c):p-q;return asc?d:-d;});
r.forEach(function(x){b.appendChild(x);});});});"""


def _page(title: str, sections: list[tuple[str, str, str]]) -> str:
    body = "".join(
        f'<section id="{sid}"><h2>{esc(head)}</h2>{content}</section>' for sid, head, content in sections if content
    )
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>'
        f'<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; img-src data:; '
        f'style-src \'unsafe-inline\'; script-src \'unsafe-inline\'">'
        f'<style>{_CSS}</style></head><body><h1>{esc(title)}</h1>{body}<script>{_JS}</script></body></html>'
    )


def _table(head: list[str], rows: list[list], sortable: bool = False, cls: str = "") -> str:
    def cell(v):
        if isinstance(v, tuple):  # (shown text, sort value)
            return f'<td data-v="{esc(v[1])}">{esc(v[0])}</td>'
        return f"<td>{esc(v)}</td>"

    return (
        f'<table class="{"sortable " if sortable else ""}{cls}"><thead><tr>'
        + "".join(f"<th>{esc(h)}</th>" for h in head)
        + "</tr></thead><tbody>"
        + "".join("<tr>" + "".join(cell(v) for v in r) + "</tr>" for r in rows)
        + "</tbody></table>"
    )


def _pct(v) -> str:
    return "-" if v is None else f"{v * 100:.2f}"


def _status(s: str) -> str:
    cls = {"pass": "pass", "fail": "fail", "error": "fail"}.get(s, "warn")
    return f'<span class="badge {cls}">{esc(str(s).upper())}</span>'


# ------------------------------------------------------------------ sections from records


def verdict_section(record: dict, extra_notes=()) -> str:
    rows = [
        [c["metric"], c["bound"], f"{c['limit']:.4g}", "-" if c["value"] is None else f"{c['value']:.4g}", c["status"]]
        for c in record.get("checks", [])
    ]
    notes = list(record.get("reasons", [])) + list(extra_notes)
    return (
        f"<p>{_status(record.get('verdict', 'unchecked'))} {esc(record['model'])}/{esc(record['variant'])} "
        f"on {esc(record['backend'])} {esc(record['device'])}, {esc(record['precision'])}, batch "
        f"{record['batch_size']} ({esc(record['kind'])})</p>"
        + (
            _table(["target", "bound", "limit", "value", "status"], rows)
            if rows
            else "<p>No target of the spec applies to this run (verdict unchecked).</p>"
        )
        + ("<ul class=notes>" + "".join(f"<li>{esc(n)}</li>" for n in notes) + "</ul>" if notes else "")
    )


def accuracy_section(record: dict) -> str:
    """The accuracy section of a record: the 12 stats with their intervals, AP per category, PR curves and AP by
    object size; "" when the record has no metrics."""
    m, ci = record.get("metrics") or {}, (record.get("metrics_ci") or {}).get("stats") or {}
    if not m:
        return ""
    d = record.get("dataset") or {}
    out = [
        f"<p>{d.get('num_images')} images of {esc(Path(str(d.get('annotation', ''))).name)}, categories "
        f"{esc(d.get('categories'))}.</p>"
    ]
    how = record.get("metrics_ci")
    rows: list[list] = [
        [label, _pct(m.get(name)), "-" if name not in ci else f"[{_pct(ci[name][0])}, {_pct(ci[name][1])}]"]
        for name, label in zip(STAT_NAMES, STAT_LABELS)
    ]
    out.append(_table(["stat (x100)", "value", "95 % interval"], rows))
    if how:
        out.append(
            f"<p>Intervals: {esc(how['method'])}, {how['resamples']} resamples of the {how['images']} "
            f"images (seed {how['seed']}).</p>"
        )
    detail = record.get("accuracy_detail")
    if detail:
        pcs = detail["per_class"]
        rows = [
            [(c["name"], c["name"]), (c["gt"], c["gt"])]
            + [(_pct(c[k]), -1 if c[k] is None else c[k]) for k in AP_STATS]
            for c in pcs
        ]
        out.append("<h3>AP per category (click a column to sort)</h3>")
        out.append(_table(["category", "ground truth", *(metric(k).label for k in AP_STATS)], rows, True, "perclass"))
        pr = detail["pr"]
        out.append(
            svg.lines(
                "Precision / recall (mean over categories)",
                [(f"IoU {k}", pr[k]["recall"], pr[k]["precision"]) for k in sorted(pr)],
                "recall",
                "precision",
                y_range=(0, 1),
            )
        )
    sizes = [("small", "APs"), ("medium", "APm"), ("large", "APl")]
    out.append(
        svg.bars(
            "AP by object size",
            [s for s, _ in sizes],
            [m.get(k) for _, k in sizes],
            "AP",
            [ci.get(k) for _, k in sizes],
            "{:.2f}",
        )
    )
    return "".join(out)


def speed_section(perf_records: list[dict]) -> str:
    """The speed section of performance records: FPS of each kind and latency percentiles per run, validity
    warnings, latency histograms and FPS vs batch size; "" without records."""
    if not perf_records:
        return ""
    out = []
    rows = []
    for r in perf_records:
        t, mtr = r.get("timing") or {}, r.get("metrics") or {}
        rows.append(
            [
                f"{r['precision']} bs{r['batch_size']}",
                f"{mtr.get('fps', t.get('fps', 0)):.1f}",
                "-" if mtr.get("fps_compute") is None else f"{mtr['fps_compute']:.1f}",
                "-" if mtr.get("fps_e2e") is None else f"{mtr['fps_e2e']:.1f}",
                f"{t.get('p50_ms', 0):.3f}",
                f"{t.get('p90_ms', 0):.3f}",
                f"{t.get('p99_ms', 0):.3f}",
                f"{t.get('cov', 0) * 100:.1f} %",
                t.get("iterations", ""),
            ]
        )
    out.append(
        _table(
            [
                "run",
                "FPS (harness)",
                "FPS (compute only)",
                "FPS (end-to-end)",
                "p50 ms",
                "p90 ms",
                "p99 ms",
                "CoV",
                "iterations",
            ],
            rows,
        )
    )
    out.append(
        "<p>Harness FPS: images per second of the timed inference calls as the harness makes them; "
        "compute only: the engine alone (what published figures are); end-to-end: read, preprocess, "
        "infer and decode per image.</p>"
    )
    warnings = []
    import dataclasses

    from common.harness.timing import TimingStats, validity_reasons

    stat_fields = [f.name for f in dataclasses.fields(TimingStats)]
    for r in perf_records:
        t, settings = r.get("timing") or {}, r.get("timing_settings") or {}
        if t.get("noisy"):
            warnings.append(
                f"{r['precision']} bs{r['batch_size']}: CoV {t['cov'] * 100:.1f} % is above 10 %: too noisy to trust"
            )
        if settings and all(k in t for k in stat_fields):  # a partial timing (an older record) has no verdict
            stats = TimingStats(**{k: t[k] for k in stat_fields})
            warnings += [
                f"{r['precision']} bs{r['batch_size']}: {w}"
                for w in validity_reasons(stats, settings.get("min_iters", 0), settings.get("min_duration_s", 0.0))
            ]
    if warnings:
        out.append('<ul class="notes warn">' + "".join(f"<li>{esc(w)}</li>" for w in warnings) + "</ul>")
    for r in perf_records:
        t = r.get("timing") or {}
        h = t.get("histogram")
        if h:
            out.append(
                svg.histogram(
                    f"Latency, {r['precision']} batch {r['batch_size']}",
                    h["edges_ms"],
                    h["counts"],
                    "ms per inference call",
                    [
                        (f"p50 {t['p50_ms']:.2f}", t["p50_ms"]),
                        (f"p90 {t['p90_ms']:.2f}", t["p90_ms"]),
                        (f"p99 {t['p99_ms']:.2f}", t["p99_ms"]),
                    ],
                )
            )
    by_prec: dict = {}
    for r in perf_records:
        by_prec.setdefault(r["precision"], []).append((r["batch_size"], (r.get("metrics") or {}).get("fps")))
    if any(len(v) > 1 for v in by_prec.values()):
        out.append(
            svg.lines(
                "FPS vs batch size",
                [(p.upper(), [b for b, _ in sorted(v)], [f for _, f in sorted(v)]) for p, v in sorted(by_prec.items())],
                "batch size",
                "FPS",
            )
        )
    return "".join(out)


# ------------------------------------------------------------------ candidate vs reference


def _thumb(path: Path) -> tuple[bytes, int, int, float] | None:
    import cv2

    img = cv2.imread(str(path))
    if img is None:
        return None
    h, w = img.shape[:2]
    scale = min(1.0, THUMB_SIDE / max(h, w))
    small = cv2.resize(img, (int(round(w * scale)), int(round(h * scale))), interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(".jpg", small, [cv2.IMWRITE_JPEG_QUALITY, 80])
    return (buf.tobytes(), w, h, scale) if ok else None


def _per_image(rows: np.ndarray) -> dict:
    """{image_id: [n, 6] (x1, y1, x2, y2, score, category)} of detections rows (image_id, x, y, w, h, score,
    category), in each image's file order."""
    rows = np.asarray(rows, np.float64).reshape(-1, 7)
    order = np.argsort(rows[:, 0], kind="stable")
    rows = rows[order]
    xyxy = np.concatenate([rows[:, 1:3], rows[:, 1:3] + rows[:, 3:5], rows[:, 5:7]], axis=1)
    ids, starts = np.unique(rows[:, 0].astype(np.int64), return_index=True)
    return {int(i): part for i, part in zip(ids, np.split(xyxy, starts[1:]))}


def change_score(ref: list, cand: list, threshold: float) -> float:
    """How much one image's detections changed: unmatched detections at or above the score threshold in either
    direction count 1, matched ones (1 - IoU) + |score difference| (common/compare/comparator.match_detections)."""
    from common.compare.comparator import match_detections

    def arr(d):
        a = np.array(d, np.float64).reshape(-1, 6)
        return a[:, :4], a[:, 4], a[:, 5].astype(np.int64)

    total = 0.0
    for a, b in ((ref, cand), (cand, ref)):
        for m in match_detections(arr(a), arr(b), threshold):
            total += 1.0 if m is None else (1 - m[0]) + m[1]
    return total / 2


@dataclass
class Changed:
    """The images whose detections changed most between two runs of the same images."""

    ranked: list[tuple[float, int]]  # (change, image id), most changed first, change > 0
    boxes: dict  # image id -> (reference [n, 6], candidate [n, 6]) at or above the threshold: x1 y1 x2 y2 score cat
    threshold: float
    labels: tuple[str, str]

    def box_sets(self, image_id: int, names: dict) -> list[tuple[str, str, list]]:
        """[(label, colour, [(x1, y1, x2, y2, score, category name)])] of one image, reference first."""
        return [
            (label, colour, [(x1, y1, x2, y2, s, names.get(int(c), int(c))) for x1, y1, x2, y2, s, c in d])
            for label, colour, d in zip(self.labels, CHANGED_COLOURS, self.boxes[image_id])
        ]


CHANGED_COLOURS = ("#2ca02c", "#d62728")  # reference, candidate


def rank_changed(
    ref_rows: np.ndarray,
    cand_rows: np.ndarray,
    threshold: float = 0.3,
    limit: int = MAX_IMAGES,
    labels=("reference", "candidate"),
) -> Changed:
    """The `limit` images whose detections changed most (change_score). Rows: (image_id, x, y, w, h, score,
    category), as common/evaluate/detections_file.read_rows gives them."""
    ref, cand = _per_image(ref_rows), _per_image(cand_rows)
    empty = np.zeros((0, 6))
    scores = sorted(
        ((change_score(ref.get(i, empty), cand.get(i, empty), threshold), i) for i in set(ref) | set(cand)),
        reverse=True,
    )
    ranked = [(float(sc), int(i)) for sc, i in scores[:limit] if sc > 0]

    def kept(d, i):
        a = d.get(i, empty)
        return a[a[:, 4] >= threshold]

    return Changed(ranked, {i: (kept(ref, i), kept(cand, i)) for _, i in ranked}, threshold, tuple(labels))


def draw_changed(changed: Changed, images_dir, file_names: dict, names: dict, limit: int | None = None) -> str:
    """The ranked images (the first `limit` of them) drawn with both sets of boxes, as inline SVG over a JPEG
    thumbnail."""
    out = []
    for score, image_id in changed.ranked[:limit]:
        thumb = _thumb(Path(images_dir) / file_names.get(image_id, "")) if images_dir else None
        if thumb is None:
            continue
        jpeg, w, h, scale = thumb
        out.append(
            svg.boxes_on_image(
                jpeg,
                w,
                h,
                scale,
                changed.box_sets(image_id, names),
                f"image {image_id} ({file_names.get(image_id)}): change {score:.2f}",
            )
        )
    threshold, labels = changed.threshold, changed.labels
    if not out:
        return f"<p>No image's detections (score &gt;= {threshold}) changed.</p>"
    return (
        f"<p>The {len(out)} images whose detections changed most (score &gt;= {threshold}; unmatched "
        f"boxes count 1, matched ones 1 - IoU + |score difference|): {esc(labels[0])} solid, "
        f"{esc(labels[1])} dashed.</p>" + "".join(out)
    )


def changed_images(
    ref_rows: np.ndarray,
    cand_rows: np.ndarray,
    images_dir,
    file_names: dict,
    names: dict,
    threshold: float = 0.3,
    limit: int = MAX_IMAGES,
    labels=("reference", "candidate"),
) -> str:
    """The `limit` images whose detections changed most, drawn with both sets (score >= threshold)."""
    return draw_changed(rank_changed(ref_rows, cand_rows, threshold, limit, labels), images_dir, file_names, names)


def output_stats_table(outputs: dict) -> str:
    rows = []
    for name, s in outputs.items():
        if "cosine" in s:
            rows.append(
                [
                    name,
                    f"{s['cosine']:.6f}",
                    f"{s['max_abs_err']:.4g}",
                    f"{s['norm_err']:.4f}",
                    f"{s['mean_abs_err']:.4g}",
                    f"{s['max_rel_err']:.4g}",
                    f"{s['mean_rel_err']:.4g}",
                    f"{s['nan']}/{s['inf']}",
                ]
            )
        else:
            rows.append(
                [name]
                + [s.get("error") or (f"{s.get('differing', 0):.2%} differ" if "differing" in s else "-")]
                + [""] * 6
            )
    return _table(
        ["output", "cosine", "max |err|", "share of range", "mean |err|", "max rel err", "mean rel err", "NaN/Inf"],
        rows,
    )


def fp16_section(report: dict) -> str:
    rng = report.get("fp16_range")
    out = []
    if rng:
        out.append(
            f"<p>FP16 range check: {_status(rng.get('verdict', '?'))} "
            f"({rng.get('float16_tensors', '?')} float16 tensors on {rng.get('images', '?')} images)</p>"
        )
        f = rng.get("findings") or []
        if f:
            out.append(
                _table(
                    ["tensor", "kind", "detail"],
                    [
                        [
                            x.get("tensor", x.get("name", "?")),
                            x.get("kind", "?"),
                            "; ".join(f"{k} {v}" for k, v in x.items() if k not in ("tensor", "name", "kind")),
                        ]
                        for x in f[:50]
                    ],
                )
            )
        out += [f"<p class=fail>{esc(r)}</p>" for r in rng.get("reasons", [])]
    fix = report.get("fix")
    if fix:
        out.append(
            f"<h3>Suggested block list ({len(fix['block_nodes'])} nodes kept in FP32; compared again: "
            f"{esc(fix['verdict'])})</h3><pre>{esc(fix['spec_snippet'])}</pre>"
        )
    return "".join(out)


# ------------------------------------------------------------------ pages


def _annotations(record: dict) -> dict | None:
    try:
        return json.loads(Path(record["dataset"]["annotation"]).read_text())
    except (OSError, KeyError, ValueError, TypeError):
        return None


def _names_files(ann: dict | None) -> tuple[dict, dict]:
    if not ann:
        return {}, {}
    return (
        {c["id"]: c.get("name", c["id"]) for c in ann.get("categories", [])},
        {im["id"]: im["file_name"] for im in ann.get("images", [])},
    )


def run_page(record: dict, perf_records: Sequence[dict] = ()) -> str:
    """One accuracy and / or performance run."""
    acc = record if record["kind"] == "accuracy" else None
    perf = [r for r in [record, *perf_records] if r["kind"] == "performance"]
    title = f"{record['model']}/{record['variant']} {record['backend']} {record['precision']} bs{record['batch_size']}"
    return _page(
        f"Run report: {title}",
        [
            ("verdict", "Verdict", verdict_section(record)),
            ("accuracy", "Accuracy", accuracy_section(acc) if acc else ""),
            ("speed", "Speed", speed_section(perf)),
        ],
    )


def compare_page(report: dict, changed_html: str = "") -> str:
    """scripts/compare.py's report: candidate vs the FP32 reference on the compared images."""
    d = report.get("detections") or {}
    c = report.get("candidate") or {}
    lines = [
        f"<p>{_status(report['verdict'])} {esc(c.get('backend'))} {esc(c.get('device'))} "
        f"{esc(c.get('precision'))} vs the FP32 reference on {len(report['images'])} images.</p>"
    ]
    if "ap_diff" in d:
        iv = d.get("ap_diff_interval")
        lines.append(
            f"<p>AP on the compared images {d['ap_candidate']:.4f} vs {d['ap_reference']:.4f} "
            f"(tolerance |diff| &lt;= {report['tolerance']['max_ap_diff']}); "
            + (
                f"95 % paired bootstrap interval of the difference [{iv[0]:+.4f}, {iv[1]:+.4f}]: the "
                "verdict counts the difference only when the interval excludes 0.</p>"
                if iv
                else "no paired interval: the fixed tolerance was used.</p>"
            )
        )
    lines += [f"<p class=fail>{esc(r)}</p>" for r in report.get("reasons", [])]
    det = (
        _table(
            ["reference detections", "matched", "mean IoU", "mean |score diff|"],
            [
                [
                    d.get("reference_detections"),
                    f"{d.get('matched', 0):.1%}",
                    f"{d.get('mean_iou', 0):.4f}",
                    f"{d.get('mean_score_diff', 0):.4f}",
                ]
            ],
        )
        if "matched" in d
        else ""
    )
    return _page(
        f"Compare report: {report['model']}/{report['variant']} {c.get('precision')}",
        [
            ("verdict", "Verdict", "".join(lines)),
            (
                "comparison",
                "Candidate vs reference",
                det
                + "<h3>Per-output error statistics</h3>"
                + output_stats_table(report.get("outputs") or {})
                + "<h3>Changed images</h3>"
                + changed_html,
            ),
            ("fp16", "FP16 range check and block list", fp16_section(report)),
        ],
    )


def compare_html(report: dict, dataset: DatasetRequest, default_annotation: str) -> str:
    """compare_page with the changed images drawn from the dataset the comparison read (`dataset`; its annotation
    file, else `default_annotation`: the variant's)."""
    from common.data.coco import read_annotations

    changed = ""
    try:
        images_dir, ann_file = dataset.resolve(default_annotation)
        names, files = _names_files(read_annotations(ann_file))
    except Exception as exc:  # noqa: BLE001 - the report says why it has no images rather than failing the run
        changed = f"<p>No images drawn: {esc(exc)}</p>"
    else:

        def dets(key):
            return np.array(
                [
                    [p["image_id"], x1, y1, x2 - x1, y2 - y1, s, c]
                    for p in (report.get("detections") or {}).get("per_image", [])
                    for x1, y1, x2, y2, s, c in p[key]
                ],
                np.float64,
            ).reshape(-1, 7)

        changed = changed_images(
            dets("reference"),
            dets("candidate"),
            images_dir,
            files,
            names,
            report["tolerance"]["score_threshold"],
            labels=("FP32 reference", str(report["candidate"]["precision"]).upper()),
        )
    return compare_page(report, changed)


def write_html(path, text: str) -> Path:
    """Write a report atomically; returns its path."""
    path = Path(path)
    atomic_write_bytes(path, text.encode("utf-8"))
    return path
