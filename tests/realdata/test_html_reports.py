"""The HTML reports in a real browser: headless Chromium (Debian's `chromium`) renders a run, a compare and a
regression report of the shared model; no request may leave the file (the page's requests are read from
Chromium's net log, and host resolution is mapped to nothing), no script error may occur, and the sections and drawn images must be there. Planted: a
page that fetches an image from the network, and one with a script error, are both caught. Screenshots are kept
under results/report-screenshots/ (a CI artifact)."""
from __future__ import annotations

import copy
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from common.ci.html_report import regress_page
from common.ci.verdicts import judge
from common.config.specs import load_model
from common.evaluate.metrics import coco_metrics
from common.harness.compare_command import run_compare
from common.harness.requests import dataset_request
from common.harness.runs import RunConfig, run_performance
from common.report.html import compare_html, run_page, write_html

REPO = Path(__file__).resolve().parents[2]
SHOTS = REPO / "results" / "report-screenshots"
SECTIONS = {"run": ("verdict", "accuracy", "speed"), "compare": ("verdict", "comparison", "fp16"),
            "regress": ("verdict", "accuracy", "comparison")}
MAX_BYTES = 10 * 1024 * 1024


def _chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        pytest.skip("no chromium on PATH: scripts/setup.sh installs Debian's chromium when run as root with apt-get")
    return path


def _page_requests(netlog: Path) -> list[str]:
    """URLs the page itself asked for, from Chromium's net log: requests with an initiator (the page's origin;
    a file:// page is the opaque origin "null"). The browser's own service requests (time, sign-in) carry "not an
    origin" and are not the page's; resolving is mapped to nothing, so none of them leaves the machine either."""
    d = json.loads(netlog.read_text())
    names = {v: k for k, v in d["constants"]["logEventTypes"].items()}
    out = []
    for e in d["events"]:
        p = e.get("params") or {}
        if names.get(e["type"]) == "URL_REQUEST_START_JOB" and "url" in p and p.get("initiator") != "not an origin" \
                and not p["url"].startswith(("file:", "data:")):
            out.append(p["url"])
    return out


def render(page: Path, shot: Path, tmp_path) -> tuple[str, str, list]:
    """(DOM after the scripts ran, the browser's console log, requests the page made) of one page; screenshot."""
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--host-resolver-rules=MAP * ~NOTFOUND", "--enable-logging=stderr", "--v=0", "--window-size=1200,2400"]
    out, requests = [], []
    for n, extra in enumerate(([f"--screenshot={shot}"], ["--dump-dom"])):
        netlog = tmp_path / f"net-{shot.stem}-{n}.json"
        r = subprocess.run([_chromium(), *flags, f"--user-data-dir={tmp_path / f'profile-{shot.stem}-{n}'}",
                            f"--log-net-log={netlog}", *extra, page.as_uri()],
                           capture_output=True, text=True, timeout=180)
        out.append(r)
        requests += _page_requests(netlog)
    return out[1].stdout, out[0].stderr + out[1].stderr, requests


def _errors(console: str) -> list[str]:
    """Script errors and anything the page's Content-Security-Policy blocked (a report that reaches for the
    network: the policy keeps the request from leaving, this makes the test see the attempt)."""
    return [ln for ln in console.splitlines() if "CONSOLE" in ln and
            ("Uncaught" in ln or "Refused" in ln or "Content Security Policy" in ln)]


def _check(kind: str, page: Path, tmp_path, images: int):
    assert page.stat().st_size < MAX_BYTES
    SHOTS.mkdir(parents=True, exist_ok=True)
    shot = SHOTS / f"{kind}.png"
    dom, console, requests = render(page, shot, tmp_path)
    assert requests == [], requests
    assert _errors(console) == [], _errors(console)
    for section in SECTIONS[kind]:
        assert f'<section id="{section}">' in dom, section
    assert dom.count('class="photo"') == images
    assert shot.is_file() and shot.stat().st_size > 10_000
    return dom


def test_planted_network_request_and_script_error_are_caught(tmp_path):
    page = tmp_path / "planted.html"
    page.write_text('<!DOCTYPE html><html><body><img src="http://example.invalid/x.png">'
                    '<script>undefined_function();</script></body></html>')
    _, console, requests = render(page, tmp_path / "planted.png", tmp_path)
    assert any("example.invalid" in r for r in requests), requests
    assert any("undefined_function" in e for e in _errors(console)), console[-2000:]
    # the reports' own policy blocks a fetch before it leaves: the attempt is still caught
    page.write_text(run_page_like_policy('<img src="https://cdn.example.com/x.png">'))
    _, console, requests = render(page, tmp_path / "planted-csp.png", tmp_path)
    assert requests == [] and any("cdn.example.com" in e for e in _errors(console)), console[-2000:]


def run_page_like_policy(body: str) -> str:
    """A page with the reports' Content-Security-Policy (common/report/html.py) around `body`."""
    from common.report.html import _page
    return _page("planted", [("planted", "planted", body)])


@pytest.fixture(scope="module")
def perf_record(rtmdet_fp32_pass, tmp_path_factory):
    cfg = RunConfig(**{**rtmdet_fp32_pass.cfg.__dict__, "record_outputs": None, "detections_out": None,
                       "results_dir": str(tmp_path_factory.mktemp("perf")), "warmup_s": 0.1,
                       "min_duration_s": 0.5, "min_iters": 20})
    return run_performance(cfg)


def test_run_report(rtmdet_fp32_pass, perf_record, tmp_path):
    assert rtmdet_fp32_pass.record["metrics_ci"]["stats"]["AP"][0] < rtmdet_fp32_pass.record["metrics"]["AP"]
    page = write_html(tmp_path / "run.html", run_page(rtmdet_fp32_pass.record, [perf_record]))
    dom = _check("run", page, tmp_path, images=0)
    assert "95 % interval" in dom and "AP per category" in dom and "Latency" in dom


def test_compare_report(rtmdet_fp32_pass, tmp_path):
    cfg = RunConfig(**{**rtmdet_fp32_pass.cfg.__dict__, "precision": "fp16", "record_outputs": None})
    report = run_compare(cfg, 8, fix=False, log=lambda *a: None)
    default_annotation = load_model(cfg.model).variant(cfg.variant).annotation
    page = write_html(tmp_path / "compare.html", compare_html(report, dataset_request(cfg), default_annotation))
    drawn = page.read_text().count('class="photo"')
    assert drawn >= 1                           # FP16 moves some boxes on 8 images
    _check("compare", page, tmp_path, images=drawn)


def test_regression_report(rtmdet_fp32_pass, tmp_path):
    """FP32 against a planted candidate (a fifth of the boxes 8 % wider): the drawn images are the changed ones."""
    import numpy as np
    dets = json.loads(rtmdet_fp32_pass.detections.read_text())
    rng = np.random.default_rng(0)
    for d in dets:
        if rng.random() < 0.2:
            d["bbox"][2] *= 1.08
    planted = tmp_path / "planted.json"
    planted.write_text(json.dumps(dets))
    record = copy.deepcopy(rtmdet_fp32_pass.record)
    record["precision"] = "fp16"
    ann = json.loads(open(record["dataset"]["annotation"]).read())
    rows = np.array([[d["image_id"], *d["bbox"], d["score"], d["category_id"]] for d in dets])
    record["metrics"] = coco_metrics(ann, rows, sorted(im["id"] for im in ann["images"]), [1], "faster-coco-eval")
    record.pop("metrics_ci")            # the planted run's own intervals are not what this report is about

    def case(p):
        return {"id": f"rtmdet/nano-person/onnxruntime/{p}/bs1/accuracy", "kind": "accuracy", "precision": p,
                "model": "rtmdet", "variant": "nano-person", "backend": "onnxruntime", "batch_size": 1,
                "spec": "rtmdet"}
    outcomes = [{"case": case("fp32"), "status": "ok", "records": [rtmdet_fp32_pass.record], "duration_s": 1,
                 "detections_path": str(rtmdet_fp32_pass.detections)},
                {"case": case("fp16"), "status": "ok", "records": [record], "duration_s": 1,
                 "detections_path": str(planted)}]
    rules = {("rtmdet", "nano-person"): {"relative": {"AP": 0.2}, "accuracy_noise": 2.5, "reference": {},
                                         "reference_fraction": 0.99, "evaluation_annotation": None}}
    verdicts = judge(outcomes, rules, tmp_path / "none")
    page = write_html(tmp_path / "regress.html", regress_page("test", verdicts, outcomes))
    dom = _check("regress", page, tmp_path, images=6)
    assert "paired bootstrap interval" in dom
