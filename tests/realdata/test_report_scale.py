"""The HTML reports of a full-scale run stay one self-contained file under 10 MB (issue 32): 5000 images (the real
80-class images repeated under new ids by datasets/full_scale.py), 80 classes, 300 detections per image, as RT-DETR
gives them. The run report and the regression report of an FP32 and an FP16 case (FP16 against the FP32 reference and against
a baseline whose detections baseline-update kept), with a history of past runs, and the regression report of nine
such models: what grows with the images (the changed images drawn, the detections behind them) or with the cases
must not grow the file past its limit. Sizes, not times."""
from __future__ import annotations

import dataclasses
import json
import re

import numpy as np
import pytest

import common.ci.verdicts as verdicts_module
from common.ci.html_report import comparisons, regress_page
from common.ci.paired import paired_from_files
from common.ci.verdicts import judge, update_baselines
from common.record.history import append_run, read_history
from common.report.html import MAX_IMAGES, PAGE_IMAGES, run_page, write_html
from full_scale import build_full_scale
from report_helpers import RULES, accuracy_record, case, outcome, write_detections
from synthetic_detections import synthetic_detections

pytestmark = pytest.mark.slow

N_IMAGES, PER_IMAGE = 5000, 300
MAX_BYTES = 10 * 1024 * 1024
ANN = "instances_val2017_subset150.json"
PHOTO = 'class="photo"'


def _changed(rows: np.ndarray, seed: int, share: float) -> np.ndarray:
    """Another engine's detections of the same images: scores perturbed a little everywhere, a share of the boxes
    moved by a few percent (FP16 / a new SDK)."""
    rng = np.random.default_rng(seed)
    out = rows.copy()
    out[:, 5] = np.clip(out[:, 5] * (1 + 1e-3 * rng.standard_normal(len(out))), 0, 1)
    moved = rng.random(len(out)) < share
    out[moved, 1:5] *= rng.normal(1.0, 0.04, (int(moved.sum()), 4))
    out[:, 3:5] = np.maximum(out[:, 3:5], 1.0)
    return out


def _self_contained(text: str) -> None:
    """Nothing the page would fetch: every src / href is a data: URI, no stylesheet or script is linked, and the
    reports' policy forbids any other request."""
    refs = re.findall(r'\b(?:src|href)\s*=\s*"([^"]*)"', text)
    assert all(r.startswith("data:") for r in refs), [r[:60] for r in refs if not r.startswith("data:")]
    assert "<link" not in text and "@import" not in text and "url(" not in text
    assert "default-src 'none'" in text


@pytest.fixture(scope="module")
def full_scale(shared_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("report-scale")
    ann_file = build_full_scale(root / "set", shared_data / "coco", ANN, N_IMAGES)
    ann = json.loads(ann_file.read_text())
    assert len(ann["images"]) == N_IMAGES and len(ann["categories"]) == 80
    return root, ann, ann_file, root / "set" / "images" / "val2017"


def test_full_scale_reports_are_self_contained_and_under_10_mb(full_scale, monkeypatch):
    root, ann, ann_file, images = full_scale
    # the intervals' resamples change their precision, not what the page shows of them: 20 keep the test short
    monkeypatch.setattr(verdicts_module, "paired_from_files",
                        lambda *a, **k: paired_from_files(*a, **{**k, "resamples": 20}))
    fp32_rows = synthetic_detections(ann, seed=1, per_image=PER_IMAGE)
    assert len(fp32_rows) == N_IMAGES * PER_IMAGE
    runs = {"base-fp16": _changed(fp32_rows, 2, 0.3), "fp32": fp32_rows, "fp16": _changed(fp32_rows, 3, 0.2)}
    recs, dets = {}, {}
    for name, rows in runs.items():
        recs[name] = accuracy_record(ann, ann_file, images, rows, "fp16" if name.endswith("fp16") else "fp32")
        dets[name] = write_detections(root / f"{name}.json", rows)
    assert {len(r["accuracy_detail"]["per_class"]) for r in recs.values()} == {80}

    run = write_html(root / "run.html", run_page(recs["fp32"]))
    assert run.stat().st_size < MAX_BYTES
    _self_contained(run.read_text())

    # the FP16 case's baseline: an earlier run stored by baseline-update, detections kept gzipped; past runs
    bdir, history = root / "baselines", root / "history.jsonl"
    base = outcome(case("fp16"), recs["base-fp16"], dets["base-fp16"])
    (bv,) = judge([base], RULES, bdir)
    update_baselines([bv], bdir, outcomes={bv["id"]: base}, echo=lambda *a: None)
    for n in range(20):
        append_run(history, f"past-{n}", [bv], {bv["id"]: base["records"]})
    outcomes = [outcome(case("fp32"), recs["fp32"], dets["fp32"]), outcome(case("fp16"), recs["fp16"], dets["fp16"])]
    vs = judge(outcomes, RULES, bdir)
    assert vs[1]["values"]["accuracy_rule"] == "paired bootstrap interval" and vs[1]["baseline_detections"]
    append_run(history, "now", vs, {x["id"]: x_o["records"] for x, x_o in zip(vs, outcomes)})
    compared = comparisons(vs, outcomes)
    assert [c.against for c in compared] == [vs[0]["id"], "its baseline"]   # FP16 vs FP32, FP16 vs its baseline
    page = write_html(root / "regress.html", regress_page("now", vs, outcomes, read_history(history), 0, compared))
    text = page.read_text()
    print(f"full-scale reports: run {run.stat().st_size / 1e6:.2f} MB, regression {page.stat().st_size / 1e6:.2f} MB "
          f"({len(compared)} comparisons, {text.count(PHOTO)} images drawn)")
    assert page.stat().st_size < MAX_BYTES
    _self_contained(text)
    assert text.count(PHOTO) == len(re.findall(r'href="data:image/jpeg', text)) == 2 * MAX_IMAGES

    # a run of nine such models (18 comparisons): the page's image budget holds it under the limit
    many_vs, many_outcomes, many_compared = [], [], []
    for k in range(9):
        def renamed(c, k=k):
            return {**c, "id": c["id"].replace("gen/", f"gen{k}/", 1), "model": f"gen{k}"}
        many_vs += [{**v, "id": renamed(v["case"])["id"], "case": renamed(v["case"])} for v in vs]
        many_outcomes += [{**o, "case": renamed(o["case"])} for o in outcomes]
        many_compared += [dataclasses.replace(c, case_id=c.case_id.replace("gen/", f"gen{k}/", 1),
                                              against=c.against.replace("gen/", f"gen{k}/", 1)) for c in compared]
    page = write_html(root / "regress-many.html",
                      regress_page("many", many_vs, many_outcomes, read_history(history), 0, many_compared))
    text = page.read_text()
    print(f"nine models: regression {page.stat().st_size / 1e6:.2f} MB ({text.count(PHOTO)} images drawn)")
    assert page.stat().st_size < MAX_BYTES
    _self_contained(text)
    assert text.count(PHOTO) == PAGE_IMAGES and f"the {PAGE_IMAGES // 18} most changed images of each" in text
