"""Verdict logic of the regression runner with given figures (no model runs, no timing): accuracy baselines and
their image-count tolerance, FPS confirmation, SDK fallback, invalid timing, strict mode and exit codes, merge
completeness, the history of sharded runs, JUnit properties / skipped / control characters, baseline-update
refusal and provenance, the per-variant model map, the case environment and path resolution. Each test plants
the fault its check exists for and sees the verdict fail."""
from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from common.ci.acc_tolerance import tolerance_points
from common.ci.baselines import Baselines, split_sdk
from common.errors import ConfigError
from common.record.history import append_run, last_good, read_history
from common.ci.matrix import ModelMap
from common.ci.regress import (EXIT_EMPTY, EXIT_INCOMPLETE, EXIT_INFRA, EXIT_OK, EXIT_REGRESSION, CaseOptions, absolute_path,
                            case_command, case_env, completeness, exit_code, load_outcomes)
from common.ci.reports import junit_xml
from common.harness.timing import summarize, validity_reasons
from common.ci.verdicts import (FAILED, PASS, WARN, BaselineRefused, FpsRule, compare_accuracy, compare_fps,
                             confirm_fps, judge, update_baselines)
from helpers import full_record
from regress_helpers import regress

RT = "onnxruntime-1.31.1"


def _case(kind="performance", precision="fp32", bs=1, variant="v"):
    c = {"model": "m", "variant": variant, "backend": "onnxruntime", "precision": precision, "batch_size": bs,
         "kind": kind, "spec": "m.yaml", "annotation": None, "max_images": None, "onnx": None}
    c["id"] = f"m/{variant}/onnxruntime/{precision}/bs{bs}/{kind}"
    return c


def _perf_record(fps, cov=0.01, runtime=RT, iters=100, total=5.0, settings=True):
    r = full_record("performance", engine={"path": "/m.onnx", "cache_hit": False, "runtime": runtime},
                    timing={"cov": cov, "iterations": iters, "total_s": total},
                    environment={"git_commit": "c0ffee", "hostname": "node1"})
    r["metrics"]["fps"] = fps
    if settings:
        r["timing_settings"] = {"warmup_s": 1.0, "min_duration_s": 5.0, "min_iters": 100, "threads": 0}
    return r


def _acc_record(ap, images=100, runtime=RT, ann="/d/annotations/ann.json"):
    return full_record("accuracy", engine={"path": "/m.onnx", "cache_hit": False, "runtime": runtime},
                       metrics={"AP": ap, "AP50": ap + 0.2}, environment={"git_commit": "c0ffee"},
                       dataset={"images_dir": "/d/images", "num_images": images, "annotation": ann})


def _outcome(case, records, status="ok", **extra):
    return {"case": case, "status": status, "records": records, "error": None if status == "ok" else "boom",
            "duration_s": 1.0, **extra}


def _write_baseline(root: Path, entries: dict, runtime=RT, device="cpu"):
    path = root / device / f"{runtime}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"device": device, "sdk": runtime, "entries": entries}))
    return path


RULES = {("m.yaml", "v"): {"relative": {"AP": 0.2}, "accuracy_noise": 2.5, "reference": {},
                           "reference_fraction": 0.99, "evaluation_annotation": None}}


# --- accuracy baselines -------------------------------------------------------------------------------------------

def test_accuracy_tolerance_shrinks_with_the_image_count():
    assert tolerance_points(100) == pytest.approx(0.75)
    assert tolerance_points(50) > 1.0 > tolerance_points(100) > 0.41 > tolerance_points(350)
    assert tolerance_points(5000) < 0.2        # a fixed 0.2 points would be loose on the full set
    assert tolerance_points(10 ** 8) == pytest.approx(0.1)   # the floor
    with pytest.raises(ValueError):
        tolerance_points(0)


@pytest.mark.parametrize("drop_points, images, status", [(2.0, 100, FAILED), (8.0, 100, FAILED),
                                                         (0.25, 100, PASS), (0.35, 50, PASS), (1.0, 5000, FAILED),
                                                         (0.0, 100, PASS), (-2.0, 100, WARN)])
def test_accuracy_against_its_baseline(drop_points, images, status):
    got, text, tol = compare_accuracy(0.534 - drop_points / 100, images, {"metric": "AP", "value": 0.534}, 2.5, 3.0)
    assert got == status, text
    assert (got == FAILED) == text.startswith("accuracy regression")


def test_accuracy_baseline_in_the_verdict_missing_and_incomparable(tmp_path):
    case = _case("accuracy")
    key = "m/v/onnxruntime/fp32/bs1/accuracy"
    # none stored: a warning that strict mode turns into a failure (a gap)
    (v,) = judge([_outcome(case, [_acc_record(0.534)])], RULES, tmp_path)
    assert v["status"] == WARN and v["gaps"] == ["missing accuracy baseline"]
    _write_baseline(tmp_path, {key: {"AP": 0.534, "AP50": 0.734, "images": 100, "annotation": "ann.json"}})
    (v,) = judge([_outcome(case, [_acc_record(0.534)])], RULES, tmp_path)
    assert v["status"] == PASS and not v["gaps"]
    (v,) = judge([_outcome(case, [_acc_record(0.4566)])], RULES, tmp_path)    # the issue's -7.7 points
    assert v["status"] == FAILED and any(n.startswith("accuracy regression: AP 45.66 vs baseline 53.40")
                                         for n in v["notes"])
    # a baseline on other images is no comparison at all
    (v,) = judge([_outcome(case, [_acc_record(0.534, images=50)])], RULES, tmp_path)
    assert v["status"] == WARN and "not comparable" in v["notes"][-1]


def test_published_reference_fraction_only_on_the_full_evaluation_set(tmp_path):
    rules = {("m.yaml", "v"): {**RULES[("m.yaml", "v")], "reference": {"AP": 0.465},
                               "evaluation_annotation": "instances_val2017.json"}}
    case = _case("accuracy")
    full = "/d/annotations/instances_val2017.json"
    (v,) = judge([_outcome(case, [_acc_record(0.455, 5000, ann=full)])], rules, tmp_path)
    assert v["status"] == FAILED and any("99% of the published 46.50" in n for n in v["notes"])
    (v,) = judge([_outcome(case, [_acc_record(0.462, 5000, ann=full)])], rules, tmp_path)
    assert v["status"] == WARN and any("46.20 >= 99% of the published" in n for n in v["notes"])   # WARN: no baseline
    (v,) = judge([_outcome(case, [_acc_record(0.30, 100, ann=full)], command=["--max-images", "100"])], rules,
                 tmp_path)
    assert any(n.startswith("published reference not applied") for n in v["notes"])


# --- FPS: confirmation, SDK fallback, validity --------------------------------------------------------------------

def test_fps_regression_fails_only_when_the_re_measurement_confirms_it():
    rule, base = FpsRule(), {"fps": 100.0, "cov": 0.01}
    first = compare_fps({"fps": 70.0, "cov": 0.01}, base, rule)             # a 30 % slowdown
    assert first[0] == FAILED
    status, text, nums = confirm_fps(first, [_perf_record(69.0)], base, rule)
    assert status == FAILED and text.startswith("FPS regression confirmed: first FPS 70.0") and "69.0" in text
    # a one-off dip (a neighbour job): the re-measurement is inside the band -> warn, both figures stated
    status, text, _ = confirm_fps(first, [_perf_record(99.0)], base, rule)
    assert status == WARN and "unconfirmed FPS drop" in text and "99.0" in text and "70.0" in text
    # no re-measurement possible (report of an old run): still a failure, said so
    assert confirm_fps(first, None, base, rule)[1].endswith("not re-measured (no confirmation run)")
    # A/B/A/B with the baseline's model: judged against that model measured now, so node drift cancels
    status, text, nums = confirm_fps(first, [_perf_record(70.0)], base, rule, [_perf_record(100.0)])
    assert status == FAILED and "A/B interleaved with the baseline's model: 70.0 vs 100.0 FPS" in text
    status, text, _ = confirm_fps(first, [_perf_record(70.0)], base, rule, [_perf_record(72.0)])   # all slower
    assert status == WARN and "unconfirmed FPS drop" in text
    # passes and jumps are not re-measured
    assert confirm_fps(compare_fps({"fps": 99.0, "cov": 0.01}, base, rule), None, base, rule)[0] == PASS


def test_noisy_fail_message_says_why():
    status, text, _ = compare_fps({"fps": 95.0, "cov": 0.2}, {"fps": 100.0, "cov": 0.01}, FpsRule(noisy="fail"))
    assert status == FAILED and text.startswith("noisy measurement") and "--noisy fail" in text
    xml = junit_xml([{"id": "m/v/onnxruntime/fp32/bs1/performance", "case": _case(), "status": FAILED,
                      "values": {}, "notes": ["no absolute target applies", text], "gaps": []}])
    failure = ET.fromstring(xml).find(".//failure")
    assert failure.get("message").startswith("noisy measurement")     # not "no absolute target applies"


def test_new_sdk_version_is_compared_with_the_newest_older_baseline(tmp_path):
    key = "m/v/onnxruntime/fp32/bs1"
    _write_baseline(tmp_path, {key: {"fps": 50.0, "cov": 0.01}}, runtime="onnxruntime-1.9.0")
    _write_baseline(tmp_path, {key: {"fps": 100.0, "cov": 0.01}}, runtime="onnxruntime-1.30.0")
    _write_baseline(tmp_path, {key: {"fps": 10.0, "cov": 0.01}}, runtime="onnxruntime-2.0.0")   # newer: ignored
    _write_baseline(tmp_path, {key: {"fps": 10.0, "cov": 0.01}}, runtime="tvm-0.1")              # other runtime
    _write_baseline(tmp_path, {key: {"fps": 10.0, "cov": 0.01}}, runtime="onnxruntime-1.30.0", device="gpu")
    assert split_sdk("onnxruntime-1.31.1") == ("onnxruntime", (1, 31, 1))
    entry, path, note = Baselines(tmp_path).lookup("cpu", "onnxruntime-1.31.1", key)
    assert entry["fps"] == 100.0 and path.name == "onnxruntime-1.30.0.json" and "runtime changed" in note
    # the renamed-SDK run that is 42 % slower: a regression against the older baseline, and the verdict says so
    (v,) = judge([_outcome(_case(), [_perf_record(58.0), _perf_record(58.0)],
                           confirm_records=[_perf_record(57.0)])], RULES, tmp_path)
    assert v["status"] == FAILED and any("compared with the newest older one (onnxruntime-1.30.0)" in n
                                         for n in v["notes"])
    # another device has no baseline: nothing to compare (a gap), never another device's figures
    (v,) = judge([_outcome(_case(), [_perf_record(58.0)])], RULES, tmp_path, device_name="mr-v100")
    assert v["status"] == WARN and v["gaps"] == ["missing FPS baseline"]


def test_performance_run_short_of_its_minimums_is_invalid():
    stats = summarize([0.001] * 10, 1)
    assert validity_reasons(stats, 100, 5.0) == [
        "invalid performance run: 10 timed iterations < the minimum 100",
        "invalid performance run: 0.010 s timed < the minimum duration 5 s"]
    assert validity_reasons(summarize([0.05] * 100, 1), 100, 5.0) == []
    (v,) = judge([_outcome(_case(), [_perf_record(100.0, iters=10, total=0.5)])], RULES)
    assert v["status"] == "error" and v["notes"][-1].startswith("invalid performance run: 10 timed iterations")


# --- exit codes, merge completeness, history -----------------------------------------------------------------------

def test_exit_codes_are_distinct_and_ordered():
    ok = {"status": PASS, "gaps": []}
    gap = {"status": WARN, "gaps": ["missing FPS baseline"]}
    assert exit_code([ok, gap], [], strict=False) == EXIT_OK
    assert exit_code([ok, gap], [], strict=True) == EXIT_INCOMPLETE
    assert exit_code([ok], ["shard 2/2 was not merged"], strict=False) == EXIT_INCOMPLETE
    assert exit_code([ok, {"status": "unsupported", "gaps": ["unsupported"]}], [], strict=True) == EXIT_INCOMPLETE
    assert exit_code([ok, {"status": "error"}, gap], [], strict=True) == EXIT_INFRA
    assert exit_code([{"status": FAILED}, {"status": "error"}], ["x"], strict=True) == EXIT_REGRESSION
    unsupported = {"status": "unsupported", "gaps": ["unsupported"]}
    assert exit_code([unsupported, unsupported], [], strict=False) == EXIT_EMPTY   # ran nothing: never green
    assert exit_code([unsupported], [], strict=True, allow_empty=True) == EXIT_INCOMPLETE
    assert exit_code([unsupported], [], strict=False, allow_empty=True) == EXIT_OK
    assert len({EXIT_OK, EXIT_REGRESSION, 2, EXIT_INFRA, EXIT_INCOMPLETE, EXIT_EMPTY}) == 6


def _fake_run(d: Path, run_id: str, shard: str | None, planned: list[dict], done: list[dict]):
    """A run directory as run_matrix leaves it, with given figures."""
    (d / "cases").mkdir(parents=True)
    (d / "run.json").write_text(json.dumps({"run_id": run_id, "shard": shard, "cases": [c["id"] for c in planned]}))
    for c in done:
        slug = c["id"].replace("/", "_")
        rec = d / "records" / slug / "r.json"
        rec.parent.mkdir(parents=True)
        rec.write_text(json.dumps(_perf_record(100.0)))
        (d / "cases" / f"{slug}.json").write_text(json.dumps(
            {"case": c, "status": "ok", "records": [str(rec.relative_to(d))], "error": None, "duration_s": 1}))


def test_merge_of_missing_shards_or_unfinished_cases_is_incomplete(tmp_path, monkeypatch):
    import common.ci.regress as rg
    monkeypatch.setattr(rg, "case_rules", lambda spec, variant: RULES[("m.yaml", "v")])
    cases = [_case(bs=b) for b in (1, 2, 4, 8)]
    _fake_run(tmp_path / "s1", "p1", "1/2", cases[0::2], cases[0::2])
    _fake_run(tmp_path / "s2", "p1", "2/2", cases[1::2], cases[1:2])      # stopped by SIGTERM: 1 of 2 done
    base = ["--baselines", tmp_path / "b", "--no-plots"]
    # shard 1 of 2 alone: not a PASSED pipeline
    assert regress("merge", tmp_path / "s1", "--out", tmp_path / "m1", *base) == EXIT_INCOMPLETE
    assert "INCOMPLETE" in (tmp_path / "m1" / "summary.md").read_text()
    assert "shard 2/2 was not merged" in (tmp_path / "m1" / "summary.md").read_text()
    # both shards, one case without an outcome
    assert regress("merge", tmp_path / "s1", tmp_path / "s2", "--out", tmp_path / "m2", *base) == EXIT_INCOMPLETE
    gaps = completeness(tmp_path / "m2", load_outcomes(tmp_path / "m2"))
    assert gaps == ["case m/v/onnxruntime/fp32/bs8/performance was planned but has no outcome"]
    root = ET.parse(tmp_path / "m2" / "junit.xml").getroot()
    assert root.find("testsuite[@name='incomplete']/testcase/error") is not None
    # the complete set merges to a verdict (missing baselines are warnings outside strict mode)
    (tmp_path / "s3").mkdir()
    _fake_run(tmp_path / "s3" / "s2", "p1", "2/2", cases[1::2], cases[1::2])
    assert regress("merge", tmp_path / "s1", tmp_path / "s3" / "s2", "--out", tmp_path / "m3", *base) == EXIT_OK
    assert regress("report", tmp_path / "m3", "--strict", *base) == EXIT_INCOMPLETE
    # shards of different splits are not one pipeline
    _fake_run(tmp_path / "s4", "p1", "2/3", [], [])
    assert regress("merge", tmp_path / "s1", tmp_path / "s4", "--out", tmp_path / "m4", *base) == 2


def test_history_records_every_shard_of_a_run_once(tmp_path):
    hist = tmp_path / "h.jsonl"
    a, b = _case(bs=1), _case(bs=2)
    va = [{"id": a["id"], "status": PASS}]
    vb = [{"id": b["id"], "status": WARN}]
    recs = {a["id"]: [_perf_record(1.0)], b["id"]: [_perf_record(2.0)]}
    assert append_run(hist, "p1", va, recs) == 1          # shard 1 reports
    assert append_run(hist, "p1", vb, recs) == 1          # shard 2, same run id: its case is still recorded
    assert append_run(hist, "p1", va + vb, recs) == 0     # the merge: nothing twice
    rows = read_history(hist)
    assert sorted(r["case_id"] for r in rows) == sorted([a["id"], b["id"]])
    # a warn run is a good run for "last good run" (it passed)
    assert last_good(rows, b["id"])["run_id"] == "p1"


# --- JUnit ----------------------------------------------------------------------------------------------------------

def test_junit_carries_properties_shows_warnings_and_strips_control_characters():
    evil = "/models/\x1b[31mred\x1b[0m.onnx \x00\x07 ok"
    v_warn = {"id": "x", "case": _case(), "status": WARN, "values": {"fps": 123.4, "repeats": 1, "cov": 0.01},
              "notes": [f"no baseline for {evil}"], "gaps": ["missing FPS baseline"], "device": "cpu", "sdk": RT,
              "git_commit": "c0ffee"}
    v_uns = {"id": "y", "case": _case(bs=2), "status": "unsupported", "values": {}, "notes": ["backend 'igie' is "
             "unavailable here"], "gaps": ["unsupported"]}
    v_acc = {"id": "z", "case": _case("accuracy"), "status": PASS, "values": {"AP": 0.5, "AP50": 0.7, "images": 20},
             "notes": ["ok \x1b[0m"], "gaps": []}
    xml = junit_xml([v_warn, v_uns, v_acc], "regress \x1b run", {"device": "cpu", "runtime": RT, "git_commit": "c0"},
                    strict=True)
    root = ET.fromstring(xml)                             # parses: no control character survived
    assert b"\x1b" not in xml and b"\x00" not in xml
    tcs = root.findall(".//testcase")
    props = {p.get("name"): p.get("value") for p in tcs[0].find("properties")}
    assert props["fps"] == "123.4" and props["device"] == "cpu" and props["runtime"] == RT
    assert props["git_commit"] == "c0ffee"
    assert tcs[0].find("skipped").get("message").startswith("strict: fails the run (missing FPS baseline)")
    assert "unavailable" in tcs[1].find("skipped").get("message")
    acc_props = {p.get("name"): p.get("value") for p in tcs[2].find("properties")}
    assert acc_props["AP"] == "0.5" and acc_props["images"] == "20" and acc_props["git_commit"] == "c0"
    assert root.find("testsuite").get("skipped") == "2"


# --- baseline-update ------------------------------------------------------------------------------------------------

def test_baseline_update_refuses_failing_cases_and_records_provenance(tmp_path, capsys):
    key = "m/v/onnxruntime/fp32/bs1"
    _write_baseline(tmp_path, {key: {"fps": 100.0, "cov": 0.01}})
    slow = _outcome(_case(), [_perf_record(42.0)], confirm_records=[_perf_record(41.0)], threads=4)
    (v,) = judge([slow], RULES, tmp_path)
    assert v["status"] == FAILED
    with pytest.raises(BaselineRefused, match="refusing to store 1 failing case"):
        update_baselines([v], tmp_path, outcomes={v["id"]: slow})
    assert json.loads((tmp_path / "cpu" / f"{RT}.json").read_text())["entries"][key]["fps"] == 100.0   # untouched
    update_baselines([v], tmp_path, outcomes={v["id"]: slow}, force=True)
    assert f"{key}: 100.0 FPS (CoV 1.0%) -> 42.0 FPS" in capsys.readouterr().out
    entry = json.loads((tmp_path / "cpu" / f"{RT}.json").read_text())["entries"][key]
    assert entry["forced"] is True and entry["onnx_sha256"] == "abc" and entry["threads"] == 4
    assert entry["timing_settings"]["min_duration_s"] == 5.0 and entry["host"] == "node1"
    assert entry["runtime"] == RT and entry["git_commit"] == "c0ffee"
    # accuracy cases are stored too, keyed apart from FPS, with the image set they hold for
    acc = _outcome(_case("accuracy"), [_acc_record(0.534)])
    (va,) = judge([acc], RULES, tmp_path)
    update_baselines([va], tmp_path, outcomes={va["id"]: acc})
    entry = json.loads((tmp_path / "cpu" / f"{RT}.json").read_text())["entries"][key + "/accuracy"]
    assert entry["AP"] == 0.534 and entry["images"] == 100 and entry["annotation"] == "ann.json"


# --- model map, case environment, paths -------------------------------------------------------------------------------

def test_model_map_is_per_variant_and_resolves_relative_paths(tmp_path):
    from common.config.specs import load_model
    (tmp_path / "sub").mkdir()
    manifest = tmp_path / "sub" / "models.yaml"
    manifest.write_text("rtdetr/r18: r18.onnx\nrtdetr/v2-s: {checkpoint: ckpt/v2s.pth}\n")
    m = ModelMap.parse(["rtmdet=m.onnx", "rtdetr/r50=/abs/r50.onnx"], str(manifest), cwd=tmp_path)
    rtdetr, rtmdet = load_model("rtdetr"), load_model("rtmdet")
    assert m.get(rtmdet, "nano-person") == {"onnx": str(tmp_path / "m.onnx")}       # the default variant only
    assert m.get(rtmdet, "nano-person-raw") == {}
    assert m.get(rtdetr, "r18") == {"onnx": str(tmp_path / "sub" / "r18.onnx")}     # against the manifest's folder
    assert m.get(rtdetr, "v2-s") == {"checkpoint": str(tmp_path / "sub" / "ckpt" / "v2s.pth")}
    assert m.get(rtdetr, "r101") == {}                                              # never r50's or r18's file
    assert m.unknown_keys([rtdetr, rtmdet]) == []
    assert ModelMap.parse(["rtdetr/r99=x"]).unknown_keys([rtdetr]) == ["rtdetr/r99"]
    with pytest.raises(ConfigError, match="MODEL/VARIANT=PATH"):
        ModelMap.parse(["rtdetr"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("rtdetr/r18: {weights: x}\n")
    with pytest.raises(ConfigError, match="bad.yaml"):
        ModelMap.parse([], str(bad))


def test_the_matrix_holds_only_variants_with_a_model(capsys):
    from common.ci.matrix import enumerate_cases
    skipped: list = []
    cases = enumerate_cases(["rtmdet", "rtdetr"], model_map=ModelMap.parse(["rtdetr/r18=/x/r18.onnx"]),
                            skipped=skipped)
    assert {c.variant for c in cases} == {"r18"} and all(c.onnx == "/x/r18.onnx" for c in cases)
    assert "rtmdet/nano-person/fp32" in skipped
    assert regress("run", "--list") == 2 and "no case of the matrix that has a model" in capsys.readouterr().err


def test_cases_get_no_environment_defaults_and_absolute_paths(tmp_path, monkeypatch):
    from common.config.options import ENV
    for name in ENV:   # every variable the suite reads as a default
        monkeypatch.setenv(name, "/leaked")
    monkeypatch.setenv("SUITE_SOMETHING_NEW", "/leaked")
    monkeypatch.setenv("KEEP_ME", "1")
    env = case_env()
    assert not any(v == "/leaked" for v in env.values()) and env["KEEP_ME"] == "1"
    monkeypatch.chdir(tmp_path)
    assert absolute_path("data/coco") == str(tmp_path / "data" / "coco")
    assert absolute_path("instances.json", only_if_exists=True) == "instances.json"    # a name under annotations/
    (tmp_path / "mine.json").write_text("{}")
    assert absolute_path("mine.json", only_if_exists=True) == str(tmp_path / "mine.json")
    from common.ci.matrix import Case
    case = Case("m", "v", "onnxruntime", "fp32", 1, "accuracy", "m", onnx="/abs/m.onnx")
    cmd = case_command(case, CaseOptions(dataset_dir=absolute_path("data")), Path("rel/records"))
    assert cmd[cmd.index("--results-dir") + 1] == str(tmp_path / "rel" / "records")
    assert cmd[cmd.index("--onnx") + 1] == "/abs/m.onnx"
    assert cmd[cmd.index("--dataset-dir") + 1] == str(tmp_path / "data")


def test_ab_confirmation_only_with_the_same_runtime_and_the_same_model_file(tmp_path):
    from common.engine_cache import file_sha256
    from common.ci.regress import ReportOptions, _baseline_model
    onnx = tmp_path / "old.onnx"
    onnx.write_bytes(b"model")
    key = "m/v/onnxruntime/fp32/bs1"
    _write_baseline(tmp_path / "b", {key: {"fps": 100.0, "cov": 0.01, "onnx_path": str(onnx), "runtime": RT,
                                           "onnx_sha256": file_sha256(onnx)}})
    ropts = ReportOptions(baselines_dir=str(tmp_path / "b"))
    v = {"case": _case(), "device": "cpu", "sdk": RT}
    assert _baseline_model(v, ropts) == str(onnx)
    # a new SDK: the old model on it would hide an SDK slowdown -> plain re-measurement instead
    assert _baseline_model({**v, "sdk": "onnxruntime-9.0.0"}, ropts) is None
    onnx.write_bytes(b"changed")                                   # not the model the baseline measured
    assert _baseline_model(v, ropts) is None


def test_timed_outputs_that_differ_from_the_accuracy_run_fail(tmp_path):
    """A performance run whose engine computed something else than the evaluated one (boxes moved by 60 px, a
    lost detection) fails, however fast it was."""
    dets = tmp_path / "dets.json"
    dets.write_text(json.dumps([{"image_id": 7, "category_id": 1, "bbox": [10, 10, 100, 200], "score": 0.9},
                                {"image_id": 7, "category_id": 1, "bbox": [300, 50, 80, 160], "score": 0.6},
                                {"image_id": 8, "category_id": 1, "bbox": [0, 0, 5, 5], "score": 0.9}]))
    same = {"image_id": 7, "boxes": [[10.5, 10, 110, 210], [300, 50, 380, 210]], "scores": [0.91, 0.58],
            "categories": [1, 1]}
    moved = {**same, "boxes": [[70, 70, 170, 270], [360, 110, 440, 270]]}
    lost = {**same, "boxes": same["boxes"][:1], "scores": [0.91], "categories": [1]}
    acc = _outcome(_case("accuracy"), [_acc_record(0.5)], detections_path=str(dets))

    def run(timed):
        perf = _outcome(_case(), [{**_perf_record(100.0), "timed_detections": timed}])
        return next(v for v in judge([acc, perf], RULES, tmp_path) if v["case"]["kind"] == "performance")

    assert run(same)["status"] == WARN and any(n.startswith("timed outputs match") for n in run(same)["notes"])
    for bad in (moved, lost):
        v = run(bad)
        assert v["status"] == FAILED and any(n.startswith("timed outputs differ from the accuracy run's: image 7")
                                             for n in v["notes"])
    # no image was timed (random inputs): said, not judged
    v = run({"reason": "timed on random inputs: no image to compare"})
    assert v["status"] == WARN and "timed outputs not compared: timed on random inputs" in v["notes"][-2]


def test_a_cell_the_backend_cannot_run_is_unsupported_not_a_crash():
    """Asked from the backend's capabilities: TVM builds fp32 only, ONNX Runtime knows no 'gpu0' device."""
    from common.ci.matrix import Case
    from common.ci.regress import cell_unsupported
    tvm_int8 = Case("m", "v", "tvm", "int8", 1, "accuracy", "m")
    assert "precision int8 is not supported" in cell_unsupported(tvm_int8, None)
    ort = Case("m", "v", "onnxruntime", "fp16", 1, "accuracy", "m")
    assert cell_unsupported(ort, None) is None and cell_unsupported(ort, "cpu") is None
    assert "device 'gpu0' is not supported" in cell_unsupported(ort, "gpu0")


def test_an_fps_jump_on_a_cpu_runner_warns_and_on_an_accelerator_fails(tmp_path):
    """Issue 31, defect 8: a baseline taken on a loaded CPU runner made the next idle run fail as a suspicious
    jump. By default (--jumps auto) a host-computing runtime only warns; an accelerator's jump still fails."""
    _write_baseline(tmp_path, {"m/v/onnxruntime/fp32/bs1": {"fps": 100.0, "cov": 0.01}})
    faster = [_perf_record(140.0), _perf_record(140.0)]
    (v,) = judge([_outcome(_case(), faster)], RULES, tmp_path)
    assert v["status"] == WARN and any("suspicious FPS jump" in n and "a warning" in n for n in v["notes"])
    (v,) = judge([_outcome(_case(), faster)], RULES, tmp_path, rule=FpsRule(jumps="fail"))
    assert v["status"] == FAILED
    igie = dict(_case(), backend="igie", id="m/v/igie/fp32/bs1/performance")
    _write_baseline(tmp_path, {"m/v/igie/fp32/bs1": {"fps": 100.0, "cov": 0.01}})
    (v,) = judge([_outcome(igie, faster)], RULES, tmp_path)
    assert v["status"] == FAILED and any("suspicious FPS jump" in n for n in v["notes"])


def test_int8_slower_than_fp32_in_the_same_run_is_a_warning(tmp_path):
    """An INT8 performance case not faster than the same backend's FP32 case at the same batch size in the same
    run gets the warning verdict (in the verdicts and the summary); a faster one does not; another batch size is
    no reference."""
    from common.ci.reports import markdown_summary, text_table
    from common.ci.verdicts import INT8_NO_SPEED
    base = {}
    for prec, bs, fps in [("fp32", 1, 100.0), ("int8", 1, 80.0), ("fp32", 8, 100.0), ("int8", 8, 150.0),
                          ("int8", 32, 50.0)]:
        base[(prec, bs)] = _outcome(_case(precision=prec, bs=bs), [_perf_record(fps)])
    _write_baseline(tmp_path, {})
    verdicts = {v["id"]: v for v in judge(list(base.values()), {}, tmp_path)}
    slow = verdicts[_case(precision="int8", bs=1)["id"]]
    assert slow["status"] == WARN and slow["int8_speed"] == "no speed"
    assert any(n.startswith(INT8_NO_SPEED) and "x0.80" in n for n in slow["notes"])
    assert INT8_NO_SPEED in markdown_summary(list(verdicts.values()), "r") or INT8_NO_SPEED in text_table(
        list(verdicts.values()))
    fast = verdicts[_case(precision="int8", bs=8)["id"]]
    assert fast["int8_speed"] == "faster" and not any(n.startswith(INT8_NO_SPEED) for n in fast["notes"])
    alone = verdicts[_case(precision="int8", bs=32)["id"]]
    assert "int8_speed" not in alone and any("INT8 speed not judged" in n for n in alone["notes"])
    assert verdicts[_case(precision="fp32", bs=1)["id"]].get("int8_speed") is None
