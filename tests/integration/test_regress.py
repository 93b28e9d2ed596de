"""The CI regression runner on a small random DETR-style ONNX (no shared data needed): matrix, shards, FPS rule,
a crashing and a hanging case, a planted FPS regression against a stored baseline, history and plots."""
from __future__ import annotations

import json

import pytest

from common.errors import ConfigError
from common.record.history import last_good, read_history
from common.ci.matrix import Filters, enumerate_cases, shard
from common.ci.verdicts import FAILED, PASS, WARN, FpsRule, compare_fps
from regress_helpers import FAST_PERF, junit_cases, regress, verdicts
from tiny_detr import build_tiny_detr, tiny_detr_spec


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny")
    fast = build_tiny_detr(d / "tiny_detr.onnx")
    slow = build_tiny_detr(d / "tiny_detr_slow.onnx", slow=True)
    broken = d / "broken.onnx"
    broken.write_bytes(b"this is not an ONNX model")
    spec = tiny_detr_spec(d / "model.yaml", fast, broken)
    return {"spec": spec, "fast": fast, "slow": slow, "cache": d / "engines"}


def test_matrix_from_spec_filters_and_shards(tiny):
    cases = enumerate_cases([str(tiny["spec"])])
    ids = [c.id for c in cases]
    # tiny: 2 precisions x (1 accuracy + 2 performance batch sizes); broken: fp32 performance bs1 only
    assert len(ids) == 7 and len(set(ids)) == 7
    assert "tinydetr/broken/onnxruntime/fp32/bs1/performance" in ids
    assert "tinydetr/tiny/onnxruntime/fp16/bs2/performance" in ids
    picked = enumerate_cases([str(tiny["spec"])], Filters(variants="tiny", precisions="fp16", batch_sizes="1,2",
                                                          kinds="performance"))
    assert [c.id for c in picked] == ["tinydetr/tiny/onnxruntime/fp16/bs1/performance",
                                      "tinydetr/tiny/onnxruntime/fp16/bs2/performance"]
    for n in (1, 2, 3, 7, 9):
        slices = [shard(cases, k, n) for k in range(1, n + 1)]
        flat = [c.id for s in slices for c in s]
        assert slices == [shard(list(reversed(cases)), k, n) for k in range(1, n + 1)]   # order-independent
        if n <= len(ids):
            assert sorted(flat) == sorted(ids) and len(flat) == len(ids)   # a partition of the matrix
            continue
        # more nodes than cases: the accuracy cases are split by images, every node gets work
        assert all(slices) and len(flat) == n
        pieces = [c for s in slices for c in s if c.image_shard]
        assert {c.base_id for c in pieces} <= {c.id for c in cases if c.kind == "accuracy"}
        assert sorted({c.base_id for s in slices for c in s}) == sorted(ids)
        for base in {c.base_id for c in pieces}:
            mine = sorted(c.image_shard for c in pieces if c.base_id == base)
            m = int(mine[0].split("/")[1])
            assert mine == sorted(f"{j}/{m}" for j in range(1, m + 1))


def test_bad_matrix_and_bad_flags_are_configuration_errors(tmp_path, tiny, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(tiny["spec"].read_text().replace("batch_sizes: [1, 2]", "batch_sizes: [1, two]"))
    with pytest.raises(ConfigError, match=r"variants\.tiny\.matrix\.batch_sizes"):
        enumerate_cases([str(bad)])
    assert regress("run", "--models", bad, "--list") == 2
    assert regress("run", "--models", tiny["spec"], "--shard", "3/2", "--list") == 2
    assert regress("run", "--models", tiny["spec"], "--precision", "int8", "--list") == 2
    assert "error:" in capsys.readouterr().err


def test_fps_rule_drops_jumps_and_noise():
    rule = FpsRule()
    base = {"fps": 100.0, "cov": 0.01}
    assert compare_fps({"fps": 98.0, "cov": 0.01}, base, rule)[0] == PASS
    status, text, nums = compare_fps({"fps": 80.0, "cov": 0.01}, base, rule)
    assert status == FAILED and "regression" in text and nums["band"] == pytest.approx(0.05)
    status, text, _ = compare_fps({"fps": 125.0, "cov": 0.01}, base, rule)
    assert status == FAILED and "jump" in text
    assert compare_fps({"fps": 125.0, "cov": 0.01}, base, FpsRule(jumps="warn"))[0] == WARN
    # a noisy measurement widens the band: -20% is inside 3 x 8% ...
    status, text, nums = compare_fps({"fps": 80.0, "cov": 0.08}, base, rule)
    assert status == PASS and nums["band"] == pytest.approx(3 * (0.08 ** 2 + 0.01 ** 2) ** 0.5)
    # ... but never past max_band: a halving is a regression however noisy, and the noise itself is flagged
    assert compare_fps({"fps": 50.0, "cov": 0.5}, base, rule)[0] == FAILED
    status, text, _ = compare_fps({"fps": 95.0, "cov": 0.2}, base, rule)
    assert status == WARN and "noisy" in text
    assert compare_fps({"fps": 95.0, "cov": 0.2}, base, FpsRule(noisy="fail"))[0] == FAILED


def test_crashing_and_hanging_cases_are_reported_while_others_pass(tmp_path, tiny):
    run = tmp_path / "run"
    code = regress("run", "--models", tiny["spec"], "--kind", "performance", "--bs", "1", "--repeats", "1",
                   "--cache-dir", tiny["cache"], "--baselines", tmp_path / "baselines", "--out", run, *FAST_PERF)
    assert code == 3     # a crashed case is an infrastructure error, not a regression
    v = verdicts(run)
    assert set(v) == {"tinydetr/broken/onnxruntime/fp32/bs1/performance",
                      "tinydetr/tiny/onnxruntime/fp32/bs1/performance",
                      "tinydetr/tiny/onnxruntime/fp16/bs1/performance"}
    broken = v["tinydetr/broken/onnxruntime/fp32/bs1/performance"]
    assert broken["status"] == "error" and "exit code 2" in broken["notes"][0] and "broken.onnx" in broken["notes"][0]
    for cid in ("tinydetr/tiny/onnxruntime/fp32/bs1/performance", "tinydetr/tiny/onnxruntime/fp16/bs1/performance"):
        assert v[cid]["status"] == WARN and "no baseline" in v[cid]["notes"][-1]   # measured, nothing to compare
        assert v[cid]["values"]["fps"] > 0
    junit = junit_cases(run)
    assert junit["tinydetr.broken.onnxruntime.fp32.bs1.performance"][0] == "error"
    tag, message = junit["tinydetr.tiny.onnxruntime.fp16.bs1.performance"]
    assert tag == "skipped" and "no baseline" in message      # a warning is visible in the CI report
    assert (run / "logs" / "tinydetr_broken_onnxruntime_fp32_bs1_performance.log").read_text().count("error:") == 1
    summary = (run / "summary.md").read_text()
    assert "FAILED" in summary and "1 error" in summary

    # a case that outlives its timeout is killed (with its process group) and reported; the run still ends
    hung = tmp_path / "hung"
    code = regress("run", "--models", tiny["spec"], "--variant", "tiny", "--precision", "fp32", "--bs", "1",
                   "--kind", "performance", "--repeats", "1", "--timeout", "4", "--min-duration", "60",
                   "--cache-dir", tiny["cache"], "--out", hung, "--no-plots")
    assert code == 3
    (only,) = verdicts(hung).values()
    assert only["status"] == "error" and "timed out after 4 s" in only["notes"][0]
    assert only["duration_s"] < 20


@pytest.mark.slow
def test_planted_fps_regression_is_caught_against_the_stored_baseline(tmp_path, tiny):
    baselines, history = tmp_path / "baselines", tmp_path / "history.jsonl"
    common = ["--models", tiny["spec"], "--variant", "tiny", "--precision", "fp32", "--bs", "1", "--kind",
              "performance", "--repeats", "3", "--cache-dir", tiny["cache"], "--baselines", baselines, *FAST_PERF]
    good = tmp_path / "good"
    assert regress("run", *common, "--out", good, "--run-id", "good", "--no-plots") == 0   # no baseline yet: warn
    assert regress("baseline-update", good, "--baselines", baselines) == 0
    (path,) = baselines.rglob("*.json")
    assert path.relative_to(baselines).parts[0] == "cpu" and path.name.startswith("onnxruntime-")
    entry = json.loads(path.read_text())["entries"]["tinydetr/tiny/onnxruntime/fp32/bs1"]
    measured = verdicts(good)["tinydetr/tiny/onnxruntime/fp32/bs1/performance"]["values"]
    assert entry["fps"] == pytest.approx(measured["fps"]) and entry["repeats"] == 3
    # the run the baseline came from, judged again, passes (noise flags are not the point here)
    assert regress("report", good, "--baselines", baselines, "--history", history, "--fps-max-cov", "1") == 0
    # the same case with a model doing ~60x the work: the drop is caught whatever the noise, after a second,
    # independent measurement confirmed it
    slow = tmp_path / "slow"
    code = regress("run", *common, "--onnx", f"tinydetr/tiny={tiny['slow']}", "--out", slow, "--run-id", "slow",
                   "--history", history, "--confirm-rounds", "3")
    assert code == 1
    (v,) = verdicts(slow).values()
    assert v["status"] == FAILED and v["notes"][-1].startswith("FPS regression confirmed: first FPS")
    # the baseline's own model (same runtime, same file) was measured A/B/A/B with the case
    assert "A/B interleaved with the baseline's model" in v["notes"][-1]
    assert v["values"]["confirm_ratio"] < 0.5 and len(list((slow / "records").rglob("confirm_base/*.json"))) == 3
    assert v["values"]["confirm_pairs"] == 3 and v["values"]["confirm_spread"] is not None
    assert v["values"]["ratio"] < 0.5 and v["values"]["baseline_fps"] == pytest.approx(entry["fps"])
    assert junit_cases(slow)["tinydetr.tiny.onnxruntime.fp32.bs1.performance"][0] == "failure"
    # the history holds 3 records per run, and names the last good run of the failing case
    rows = read_history(history)
    assert [r["run_id"] for r in rows] == ["good"] * 3 + ["slow"] * 3
    assert last_good(rows, v["id"], before_run="slow")["run_id"] == "good"
    assert "run `good`" in (slow / "summary.md").read_text()
    assert (slow / "plots" / "history_fps.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # reporting again never appends the same run twice
    regress("report", slow, "--baselines", baselines, "--history", history, "--no-plots")
    assert len(read_history(history)) == 6
    # an SDK upgrade: the baseline only exists for an older runtime version -> compared with it, and said so
    renamed = path.with_name("onnxruntime-0.1.0.json")
    path.rename(renamed)
    assert regress("report", slow, "--baselines", baselines, "--no-plots") == 1
    (v,) = verdicts(slow).values()
    assert v["status"] == FAILED and any("compared with the newest older one (onnxruntime-0.1.0)" in n
                                         for n in v["notes"])
    assert regress("report", good, "--baselines", baselines, "--no-plots", "--fps-max-cov", "1") == 0
    # baseline-update refuses the failing run; --force stores it, printing old -> new
    assert regress("baseline-update", slow, "--baselines", baselines) == 1
    assert not path.exists()


def test_example_ci_configs_call_the_runner_with_valid_flags():
    """The shipped CI examples parse, fan out shards, merge in a final job, and every regress.py command line in
    them is accepted by the runner's own argument parser."""
    import re
    import shlex

    import yaml

    from regress_helpers import REPO, regress_script

    gitlab = yaml.safe_load((REPO / "ci/examples/gitlab-ci.yml").read_text())
    assert gitlab["regress:mr-v100"]["parallel"] >= 2 and gitlab["merge:mr-v100"]["needs"] == ["regress:mr-v100"]
    assert gitlab["merge:mr-v100"]["artifacts"]["reports"]["junit"].endswith("junit.xml")
    github = yaml.safe_load((REPO / "ci/examples/github-actions.yml").read_text())
    assert len(github["jobs"]["shard"]["strategy"]["matrix"]["shard"]) >= 2
    assert github["jobs"]["merge"]["needs"] == "shard"
    # accelerator jobs measure IGIE on the device, CPU jobs ONNX Runtime; every verdict job is strict
    for name in ("gitlab-ci.yml", "github-actions.yml"):
        text = (REPO / "ci" / "examples" / name).read_text()
        runs = [ln for ln in text.replace("\\\n", " ").splitlines() if "regress.py run" in ln]
        assert any("--backend igie" in ln and "--shard" in ln for ln in runs)
        assert any("--backend onnxruntime" in ln and "--strict" in ln for ln in runs)
    commands = []
    for path in ("ci/examples/gitlab-ci.yml", "ci/examples/github-actions.yml"):
        text = (REPO / path).read_text().replace("\\\n", " ")
        text = re.sub(r"\$\{\{ *matrix\.shard *\}\}", "1", text)
        commands += [line.split("scripts/regress.py", 1)[1].split("||")[0]
                     for line in re.sub(r"\n\s{8,}(?=--)", " ", text).splitlines() if "scripts/regress.py" in line]
    assert {c.split()[0] for c in commands} == {"run", "merge", "baseline-update"}
    assert all("--strict" in c for c in commands if c.split()[0] == "merge" and "regress/merged" in c)
    parser = regress_script.build_parser()
    env = {"CI_NODE_INDEX": "2", "CI_NODE_TOTAL": "4", "ONNX_RTMDET": "/m.onnx"}
    for command in commands:
        argv = [re.sub(r"\$\{?(\w+)(:-[^}]*)?\}?", lambda m: env.get(m.group(1), "x"), a) for a in shlex.split(command)]
        parser.parse_args(argv)   # argparse exits (SystemExit) on a flag the runner does not know


def _acc_outcome(precision: str, ap: float, images: int = 50, device: str = "cpu", status: str = "ok") -> dict:
    case = {"model": "m", "variant": "v", "backend": "onnxruntime", "precision": precision, "batch_size": 1,
            "kind": "accuracy", "spec": "m.yaml"}
    case["id"] = f"m/v/onnxruntime/{precision}/bs1/accuracy"
    record = {"verdict": "unchecked", "reasons": [], "checks": [], "device": device,
              "engine": {"runtime": "rt-1"}, "metrics": {"AP": ap, "AP50": ap + 0.2},
              "dataset": {"num_images": images, "annotation": "/d/ann.json"}}
    return {"case": case, "status": status, "records": [record] if status == "ok" else [],
            "error": None if status == "ok" else "crashed (exit code 3): boom"}


def test_relative_accuracy_rule_needs_a_comparable_fp32_reference(tmp_path):
    from common.ci.verdicts import judge
    rules = {("m.yaml", "v"): {"AP": 0.2}}

    def status_of(*outcomes):
        # each case's accuracy baseline is its own figure: only the relative rule can move the verdict here
        entries = {f"m/v/onnxruntime/{o['case']['precision']}/bs1/accuracy": {
            "AP": o["records"][0]["metrics"]["AP"], "images": o["records"][0]["dataset"]["num_images"],
            "annotation": "ann.json"} for o in outcomes if o["records"]}
        base = tmp_path / "cpu" / "rt-1.json"
        base.parent.mkdir(exist_ok=True)
        base.write_text(json.dumps({"entries": entries}))
        return {v["case"]["precision"]: (v["status"], next((n for n in v["notes"] if "FP32" in n or "crashed" in n),
                                                           ""))
                for v in judge(list(outcomes), rules, tmp_path)}

    assert status_of(_acc_outcome("fp32", 0.400), _acc_outcome("fp16", 0.3985))["fp16"][0] == PASS  # -0.15 pt
    status, note = status_of(_acc_outcome("fp32", 0.400), _acc_outcome("fp16", 0.3975))["fp16"]       # -0.25 pt
    assert status == FAILED and note == "accuracy regression: AP 39.75 < FP32 40.00 - 0.2 points"
    # no reference, a crashed one, or one measured differently: a warning, never a silent pass
    assert status_of(_acc_outcome("fp16", 0.1))["fp16"][0] == WARN
    got = status_of(_acc_outcome("fp32", 0.4, status="error"), _acc_outcome("fp16", 0.1))
    assert got["fp32"][0] == "error" and got["fp16"][0] == WARN
    assert "image count" in status_of(_acc_outcome("fp32", 0.4, images=20), _acc_outcome("fp16", 0.1))["fp16"][1]
    assert "device" in status_of(_acc_outcome("fp32", 0.4, device="cuda"), _acc_outcome("fp16", 0.1))["fp16"][1]


def test_relative_paths_from_another_cwd_no_env_leak_and_a_rerun_replaces_the_old_cases(tmp_path, tiny,
                                                                                         monkeypatch):
    """Started outside the repo root with relative --out / --cache-dir / --onnx, with an ONNX_MODEL (a file
    that is no model) and DEVICE / BACKEND in the environment: the cases run the given model where asked."""
    work = tmp_path / "elsewhere"
    work.mkdir()
    (work / "models").mkdir()
    (work / "models" / "fast.onnx").write_bytes(tiny["fast"].read_bytes())
    monkeypatch.chdir(work)
    monkeypatch.setenv("ONNX_MODEL", str(tmp_path / "nothing.onnx"))
    monkeypatch.setenv("DEVICE", "gpu0")
    monkeypatch.setenv("BACKEND", "tvm")
    common = ["--models", tiny["spec"], "--variant", "tiny", "--kind", "performance", "--repeats", "1",
              "--cache-dir", "engines", "--baselines", "baselines", "--no-plots", *FAST_PERF,
              "--onnx", "tinydetr/tiny=models/fast.onnx"]
    assert regress("run", *common, "--bs", "1,2", "--precision", "fp32", "--out", "out") == 0
    v = verdicts(work / "out")
    assert len(v) == 2 and all(x["status"] == WARN for x in v.values())     # measured; no baseline yet
    record = json.loads(next((work / "out" / "records").rglob("*.json")).read_text())
    assert record["onnx"]["path"] == str(work / "models" / "fast.onnx") and record["device"] == "cpu"
    cmd = json.loads(next((work / "out" / "cases").glob("*.json")).read_text())["command"]
    assert cmd[cmd.index("--cache-dir") + 1] == str(work / "engines")   # against the caller's cwd
    assert "--device" not in cmd
    # a second, smaller run into the same --out: only its own case is reported
    assert regress("run", *common, "--bs", "1", "--precision", "fp16", "--out", "out") == 0
    assert list(verdicts(work / "out")) == ["tinydetr/tiny/onnxruntime/fp16/bs1/performance"]
    assert len(list((work / "out" / "cases").glob("*.json"))) == 1
