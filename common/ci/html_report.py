"""The regression run's HTML report (common/report/html.py builds the sections): every case's verdict with the
accuracy rule it was judged by, accuracy and speed detail, the changed images against the FP32 reference and
against the baseline's kept detections, history with the baseline and its band."""

from __future__ import annotations

from dataclasses import dataclass

from common.ci.reports import _value_text, counts
from common.evaluate.detections_file import read_rows
from common.report import svg
from common.report.html import (
    MAX_IMAGES,
    PAGE_IMAGES,
    Changed,
    _annotations,
    _names_files,
    _page,
    _status,
    _table,
    accuracy_section,
    draw_changed,
    rank_changed,
    speed_section,
)
from common.report.svg import esc


def _history_figures(rows: list[dict], verdicts: list[dict]) -> str:
    from common.record.history import metric_series

    out = []
    for v in verdicts:
        metric = "AP" if v["case"]["kind"] == "accuracy" else "fps"
        series = metric_series(rows, v["id"], metric)
        if len(series) < 1:
            continue
        xs, ys = list(range(1, len(series) + 1)), [s[2] * (100 if metric == "AP" else 1) for s in series]
        vals = v.get("values") or {}
        base = vals.get("baseline_AP" if metric == "AP" else "baseline_fps")
        hl, band = [], None
        if base is not None:
            base = base * (100 if metric == "AP" else 1)
            hl = [("baseline", base)]
            if metric == "AP" and vals.get("baseline_AP_diff_lo") is not None:
                w_lo, w_hi = base + vals["baseline_AP_diff_lo"] * 100, base + vals["baseline_AP_diff_hi"] * 100
            elif metric == "AP":
                tol = vals.get("tolerance_points", 0)
                w_lo, w_hi = base - tol, base + tol
            else:
                w_lo, w_hi = base * (1 - vals.get("band", 0)), base * (1 + vals.get("band", 0))
            band = (xs, [w_lo] * len(xs), [w_hi] * len(xs))
        out.append(
            svg.lines(
                f"{v['id']}: {metric} over runs",
                [(metric, xs, ys)],
                "run (history order)",
                "AP x100" if metric == "AP" else "FPS",
                band=band,
                hlines=hl,
                yfmt="{:.1f}",
            )
        )
    return "".join(out)


@dataclass
class Comparison:
    """One accuracy case against one reference (the FP32 run of the same run, or its baseline's kept detections):
    the images whose detections changed most, or why there are none."""

    case_id: str
    against: str  # what it was compared with, as the report's heading names it
    record: dict  # the case's accuracy record (its images and annotation file)
    changed: Changed | None
    error: str | None = None

    @property
    def title(self) -> str:
        """The comparison's heading: the case and what it was compared with."""
        return f"{self.case_id} vs {self.against}"


def comparisons(verdicts: list[dict], outcomes: list[dict]) -> list[Comparison]:
    """Every accuracy case with its detections against the FP32 reference of the same run and against the
    baseline's kept detections (when its verdict was paired with them), each ranked once (the HTML report and
    the Markdown summary's figures draw the same images)."""
    by_id = {o["case"]["id"]: o for o in outcomes}
    out = []
    for v in verdicts:
        o = by_id.get(v["id"]) or {}
        recs = o.get("records") or []
        if v["case"]["kind"] != "accuracy" or not recs or not recs[0].get("metrics") or not o.get("detections_path"):
            continue
        ref = next(
            (
                x
                for x in outcomes
                if x["case"]["kind"] == "accuracy"
                and x["case"]["precision"] == "fp32"
                and all(x["case"][k] == v["case"][k] for k in ("model", "variant", "backend"))
            ),
            None,
        )
        against = []
        if ref and ref is not o and ref.get("detections_path"):
            against.append((ref["case"]["id"], ref["detections_path"], "FP32 reference"))
        if v.get("baseline_detections"):
            against.append(("its baseline", v["baseline_detections"], "baseline"))
        if not against:
            continue
        try:
            cand = read_rows(o["detections_path"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            out += [Comparison(v["id"], a, recs[0], None, f"{o['detections_path']}: {exc}") for a, _, _ in against]
            continue
        for title, path, label in against:
            try:
                other = read_rows(path)
            except (OSError, ValueError, KeyError, TypeError) as exc:
                out.append(Comparison(v["id"], title, recs[0], None, f"{path}: {exc}"))
                continue
            labels = (label, f"this run ({v['case']['precision'].upper()})")
            out.append(Comparison(v["id"], title, recs[0], rank_changed(other, cand, labels=labels)))
    return out


def _comparison_html(c: Comparison, limit: int) -> str:
    head = f"<h3>{esc(c.title)}</h3>"
    if c.changed is None:
        return head + f"<p>No images drawn: {esc(c.error)}</p>"
    names, files = _names_files(_annotations(c.record))
    return head + draw_changed(c.changed, c.record["dataset"].get("images_dir"), files, names, limit)


def _comparisons_html(compared: list[Comparison]) -> str:
    """Every comparison's drawn images, as many per comparison as the page's budget (PAGE_IMAGES) allows."""
    if not compared:
        return ""
    limit = max(1, min(MAX_IMAGES, PAGE_IMAGES // len(compared)))
    note = (
        f"<p>{len(compared)} comparisons: the {limit} most changed images of each (a page draws at most "
        f"{PAGE_IMAGES}).</p>"
        if limit < MAX_IMAGES
        else ""
    )
    return note + "".join(_comparison_html(c, limit) for c in compared)


def regress_page(
    run_id: str,
    verdicts: list[dict],
    outcomes: list[dict],
    history_rows=(),
    code=None,
    compared: list[Comparison] | None = None,
) -> str:
    """A regression run: every case's verdict, accuracy and speed detail, the changed images of each accuracy case
    against the FP32 reference and against its baseline, history."""
    n = counts(verdicts)
    failing = n["fail"] or n["error"]
    head = (
        f"<p>{_status('fail' if failing else 'pass')} {len(verdicts)} cases: {n['pass']} pass, {n['warn']} "
        f"warn, {n['fail']} fail, {n['error']} error, {n['unsupported']} unsupported"
        + (f" (exit {code})" if code is not None else "")
        + "</p>"
    )
    rows = [
        [v["id"], v["status"], _value_text(v), (v.get("values") or {}).get("accuracy_rule", "-"), "; ".join(v["notes"])]
        for v in verdicts
    ]
    head += _table(["case", "status", "value", "accuracy rule", "detail"], rows)
    head += (
        "<p>Accuracy rule: <b>paired bootstrap interval</b> where both runs' detections exist (a drop fails "
        "when the 95 % interval of the difference lies below 0 and the drop exceeds the rule's margin); "
        "<b>fixed</b> otherwise (the relative drop in points, or the image-count tolerance against a "
        "baseline), as each note says.</p>"
    )
    by_id = {o["case"]["id"]: o for o in outcomes}
    acc, perf = [], []
    comp = _comparisons_html(comparisons(verdicts, outcomes) if compared is None else compared)
    for v in verdicts:
        o = by_id.get(v["id"]) or {}
        recs = o.get("records") or []
        if v["case"]["kind"] == "accuracy" and recs and recs[0].get("metrics"):
            acc.append(f"<h3>{esc(v['id'])}</h3>" + accuracy_section(recs[0]))
        elif v["case"]["kind"] == "performance" and recs:
            perf.append(f"<h3>{esc(v['id'])}</h3>" + speed_section(recs))
    return _page(
        f"Regression run {run_id}",
        [
            ("verdict", "Verdict", head),
            ("accuracy", "Accuracy", "".join(acc)),
            ("speed", "Speed", "".join(perf)),
            ("comparison", "Candidate vs reference", comp),
            ("history", "History", _history_figures(list(history_rows), verdicts) if history_rows else ""),
        ],
    )


def accuracy_markdown(verdicts: list[dict]) -> str:
    """The accuracy cases' intervals for the Markdown summary: each run's 95 % interval and the paired interval
    of its difference to the FP32 reference / the baseline, with the rule that judged it."""

    def iv(vals: dict, lo: str, hi: str, scale: float = 100) -> str:
        return "-" if vals.get(lo) is None else f"[{vals[lo] * scale:+.2f}, {vals[hi] * scale:+.2f}]"

    rows = []
    for v in verdicts:
        vals = v.get("values") or {}
        if v["case"]["kind"] != "accuracy" or "AP" not in vals:
            continue
        own = "-" if vals.get("AP_ci_lo") is None else f"[{vals['AP_ci_lo'] * 100:.2f}, {vals['AP_ci_hi'] * 100:.2f}]"
        rows.append(
            f"| `{v['id']}` | {vals['AP'] * 100:.2f} | {own} | "
            f"{iv(vals, 'ref_AP_diff_lo', 'ref_AP_diff_hi')} | "
            f"{iv(vals, 'baseline_AP_diff_lo', 'baseline_AP_diff_hi')} | {vals.get('accuracy_rule', '-')} |"
        )
    if not rows:
        return ""
    return (
        "\n### Accuracy with 95 % intervals (AP x100)\n\n| case | AP | interval | paired diff vs FP32 | "
        "paired diff vs baseline | rule |\n| --- | --- | --- | --- | --- | --- |\n" + "\n".join(rows) + "\n"
    )
