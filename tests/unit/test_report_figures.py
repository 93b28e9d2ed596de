"""What the regression report draws, on generated runs: the history figure (AP and FPS over past runs with the
baseline and its tolerance band) and the images whose detections changed most against the baseline's kept
detections. Each test plants the fault its check exists for: a figure without its band or baseline, a report
that draws no baseline comparison."""
from __future__ import annotations

import dataclasses
import json
import re
import xml.etree.ElementTree as ET

import numpy as np

from common.ci.html_report import _history_figures, regress_page
from common.ci.verdicts import judge, update_baselines
from common.record.history import append_run, read_history
from helpers import full_record
from report_helpers import RULES, accuracy_record, case, outcome, write_detections
from synthetic_detections import synthetic_annotations, synthetic_detections

SVG = "{http://www.w3.org/2000/svg}"


# --- history ------------------------------------------------------------------------------------------------------

def _history(tmp_path, c: dict, metric: str, values: list[float]) -> list[dict]:
    """A history file of len(values) past runs of one case, as the report appends them; its rows read back."""
    path = tmp_path / "history.jsonl"
    for n, value in enumerate(values):
        if c["kind"] == "accuracy":
            record = full_record("accuracy", metrics={"AP": value, "AP50": min(1.0, value + 0.2)})
        else:
            record = full_record("performance")
            record["metrics"]["fps"] = value
        v = {"id": c["id"], "case": c, "status": "pass", "values": {}, "notes": [], "gaps": []}
        assert append_run(path, f"run-{n}", [v], {c["id"]: [record]}) == 1
    rows = read_history(path)
    assert [r["run_id"] for r in rows] == [f"run-{n}" for n in range(len(values))]
    return rows


def _figure(svg_text: str) -> dict:
    """The drawn parts of one history figure: run points (cx, cy), the band's y extent, the baseline's y."""
    root = ET.fromstring(svg_text)
    band = [p for p in root.iter(f"{SVG}polygon")]
    ys = [float(xy.split(",")[1]) for p in band for xy in p.get("points").split()]
    dashed = [ln for ln in root.iter(f"{SVG}line") if ln.get("stroke-dasharray")]
    labels = [t.text for t in root.iter(f"{SVG}text")]
    return {"points": [(float(c.get("cx")), float(c.get("cy"))) for c in root.iter(f"{SVG}circle")],
            "band": (min(ys), max(ys)) if ys else None,
            "baseline": [float(ln.get("y1")) for ln in dashed], "labels": labels}


def _inside(fig: dict) -> list[bool]:
    top, bottom = fig["band"]
    return [top - 0.05 <= cy <= bottom + 0.05 for _, cy in fig["points"]]


def test_history_figure_draws_every_run_with_the_baseline_and_its_band(tmp_path):
    # AP: a fixed tolerance of 1 point around a 50.0 baseline; runs inside and outside it
    acc = case()
    ap = [0.500, 0.504, 0.497, 0.512, 0.485, 0.501]
    rows = _history(tmp_path / "a", acc, "AP", ap)
    v = {"id": acc["id"], "case": acc, "values": {"baseline_AP": 0.500, "tolerance_points": 1.0}}
    fig = _figure(_history_figures(rows, [v]))
    assert len(fig["points"]) == len(ap) and sorted(fig["points"]) == fig["points"]  # one per run, in order
    assert _inside(fig) == [abs(a - 0.5) * 100 <= 1.0 for a in ap] == [True, True, True, False, False, True]
    (base_y,) = fig["baseline"]
    assert abs(base_y - fig["points"][0][1]) < 0.15 and "baseline" in fig["labels"]  # run 0 is on the baseline
    # higher AP is drawn higher (smaller y)
    order = np.argsort(ap)
    assert [fig["points"][i][1] for i in order] == sorted((p[1] for p in fig["points"]), reverse=True)

    # the paired interval of the difference replaces the fixed band where the verdict was paired: [-0.6, +0.2]
    v["values"].update(baseline_AP_diff_lo=-0.006, baseline_AP_diff_hi=0.002)
    fig = _figure(_history_figures(rows, [v]))
    assert _inside(fig) == [-0.6 <= (a - 0.5) * 100 <= 0.2 for a in ap] == [True, False, True, False, False, True]

    # FPS: a 5 % band around 100 FPS
    perf = case(kind="performance")
    fps = [100.0, 103.0, 96.0, 91.0, 108.0]
    rows = _history(tmp_path / "p", perf, "fps", fps)
    v = {"id": perf["id"], "case": perf, "values": {"baseline_fps": 100.0, "band": 0.05}}
    fig = _figure(_history_figures(rows, [v]))
    assert len(fig["points"]) == len(fps)
    assert _inside(fig) == [abs(f / 100 - 1) <= 0.05 for f in fps] == [True, True, True, False, False]
    assert abs(fig["baseline"][0] - fig["points"][0][1]) < 0.15

    # without a baseline there is nothing to draw a band around: the runs alone
    v["values"] = {}
    fig = _figure(_history_figures(rows, [v]))
    assert len(fig["points"]) == len(fps) and fig["band"] is None and fig["baseline"] == []


# --- changed images against the baseline ------------------------------------------------------------------------

def _image_set(tmp_path, n: int = 60):
    """A generated set with its images on disk (gray with the objects drawn, so a thumbnail is a real JPEG)."""
    import cv2
    ann = synthetic_annotations(n, categories=(1, 2, 3), seed=11, max_objects=6)
    images = tmp_path / "images"
    images.mkdir()
    for im in ann["images"]:
        img = np.full((im["height"], im["width"], 3), 128, np.uint8)
        for a in ann["annotations"]:
            if a["image_id"] == im["id"]:
                x, y, w, h = (int(t) for t in a["bbox"])
                cv2.rectangle(img, (x, y), (x + w, y + h), (40 * a["category_id"], 200, 90), -1)
        cv2.imwrite(str(images / im["file_name"]), img)
    ann_file = tmp_path / "ann.json"
    ann_file.write_text(json.dumps(ann))
    return ann, ann_file, images


def test_regression_report_draws_the_images_that_changed_against_the_baseline(tmp_path):
    ann, ann_file, images = _image_set(tmp_path)
    before = synthetic_detections(ann, seed=12)
    bdir, c = tmp_path / "baselines", case()
    # the baseline run, stored by baseline-update with its detections (gzipped beside the baseline file)
    o = outcome(c, accuracy_record(ann, ann_file, images, before), write_detections(tmp_path / "b.json", before))
    (v,) = judge([o], RULES, bdir)
    update_baselines([v], bdir, outcomes={v["id"]: o}, echo=lambda *a: None)
    assert list(bdir.rglob("*.json.gz"))
    # this run: the confident boxes of three images moved by half their width, every other detection unchanged
    planted = [im["id"] for im in ann["images"]][5:8]
    after = before.copy()
    moved = np.isin(after[:, 0], planted) & (after[:, 5] >= 0.3)
    assert moved.sum() >= 3
    after[moved, 1] += after[moved, 3] * 0.5
    o = outcome(c, accuracy_record(ann, ann_file, images, after), write_detections(tmp_path / "a.json", after))
    (v,) = judge([o], RULES, bdir)
    assert v["values"]["accuracy_rule"] == "paired bootstrap interval" and v["baseline_detections"].endswith(".gz")
    page = regress_page("r", [v], [o])
    assert f"{c['id']} vs its baseline" in page
    drawn = sorted(int(m) for m in re.findall(r"image (\d+) \(", page))
    assert drawn == sorted(planted)                                       # exactly the changed ones
    assert page.count('class="photo"') == len(planted) and "baseline (" in page   # both sets' legends
    # a run with many comparisons draws fewer of each: the page's budget of drawn images
    from common.ci.html_report import comparisons
    from common.report.html import PAGE_IMAGES
    (c,) = comparisons([v], [o])
    many = [dataclasses.replace(c, case_id=f"case{k}") for k in range(PAGE_IMAGES // 2 + 1)]
    page = regress_page("r", [v], [o], compared=many)
    assert page.count('class="photo"') == len(many) and "the 1 most changed images of each" in page


# --- the Markdown summary's figures -----------------------------------------------------------------------------

def test_markdown_summary_links_small_figures_written_next_to_it(tmp_path):
    import cv2

    from common.ci.html_report import comparisons
    from common.ci.md_figures import MD_IMAGES, markdown_figures
    from common.harness.timing import summarize

    ann, ann_file, images = _image_set(tmp_path)
    fp32 = synthetic_detections(ann, seed=12)
    confident = [im["id"] for im in ann["images"] if ((fp32[:, 0] == im["id"]) & (fp32[:, 5] >= 0.3)).sum() >= 2]
    planted = confident[3:7]
    fp16 = fp32.copy()  # every score moved a little (FP16 kernels), the boxes of four images by a lot
    fp16[:, 5] = np.clip(fp16[:, 5] * (1 + 2e-3 * np.random.default_rng(1).standard_normal(len(fp16))), 0, 1)
    moved = np.isin(fp16[:, 0], planted) & (fp16[:, 5] >= 0.3)
    fp16[moved, 2] += fp16[moved, 4] * 0.6
    perf = full_record("performance")
    stats = summarize(np.random.default_rng(0).gamma(9.0, 1.0, 400) * 1e-3, 1)
    perf["timing"].update(p50_ms=stats.p50_ms, p90_ms=stats.p90_ms, p99_ms=stats.p99_ms, histogram=stats.histogram)
    outcomes = [outcome(case("fp32"), accuracy_record(ann, ann_file, images, fp32),
                        write_detections(tmp_path / "32.json", fp32)),
                outcome(case("fp16"), accuracy_record(ann, ann_file, images, fp16, "fp16"),
                        write_detections(tmp_path / "16.json", fp16)),
                outcome(case(kind="performance"), perf)]
    verdicts = judge(outcomes, RULES, tmp_path / "baselines")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    compared = comparisons(verdicts, outcomes)
    md = markdown_figures(verdicts, outcomes, compared, run_dir)
    links = re.findall(r"!\[([^\]]*)\]\(([^)]+)\)", md)
    assert [alt for alt, _ in links] == ["precision / recall and AP by size"] * 2 + ["latency histogram",
                                                                                   "changed images"]
    for _, target in links:  # relative to summary.md's folder, small, and a real image
        assert not target.startswith(("/", "http")) and (run_dir / target).is_file(), target
        data = (run_dir / target).read_bytes()
        assert len(data) < 100_000 and cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR) is not None
    strip = cv2.imread(str(run_dir / links[-1][1]))
    assert strip.shape[0] <= 240 and strip.shape[1] > 2 * 120          # three images side by side, small
    # the strip's images are the planted ones, most changed first, named in its caption
    named = [int(i) for i in re.findall(r"image (\d+) \(change", md)]
    (c,) = compared
    assert len(c.changed.ranked) == 6 and {i for _, i in c.changed.ranked[:4]} == set(planted)   # all changed a bit
    assert named == [i for _, i in c.changed.ranked[:MD_IMAGES]] and set(named) <= set(planted)
    assert "fp16/bs1/accuracy vs gen/v/onnxruntime/fp32/bs1/accuracy" in md
    # the lowest-AP categories as a table, lowest first
    per = sorted((c for c in outcomes[0]["records"][0]["accuracy_detail"]["per_class"]), key=lambda c: c["AP"])
    table = md.split("Lowest AP of 3 categories")[1]
    assert table.index(f"| {per[0]['name']} |") < table.index(f"| {per[1]['name']} |")
