"""LoadGen cases in the CI regression matrix (`kind: loadgen`, the spec's matrix loadgen_scenarios): run in the
short mode, judged by their own record (an INVALID run fails) and by the scenario's figure against a stored
baseline; a planted slower figure (a baseline the run cannot reach) is a regression."""
from __future__ import annotations

import json

import pytest
import yaml

pytest.importorskip("mlperf_loadgen", reason="MLCommons LoadGen is not installed (bash scripts/setup.sh --loadgen: "
                                             "requirements-loadgen.txt)")

from common.ci.matrix import enumerate_cases  # noqa: E402
from regress_helpers import REPO, regress, verdicts  # noqa: E402

ANN = "instances_val2017_person_subset350.json"
CASE = "rtmdet/nano-person/onnxruntime/fp32/bs4/loadgen-Offline"


def _spec(path, loadgen: dict):
    raw = yaml.safe_load((REPO / "models" / "rtmdet" / "model.yaml").read_text())
    variant = raw["variants"][raw["default_variant"]]
    raw["variants"] = {raw["default_variant"]: variant}
    variant["matrix"] = {"precisions": ["fp32"], "batch_sizes": [], "accuracy_batch_sizes": [],
                         "loadgen_scenarios": ["Offline"], "loadgen_batch_sizes": [4], "max_images": 16}
    variant["loadgen"] = loadgen
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def test_matrix_lists_loadgen_cases(tmp_path):
    spec = _spec(tmp_path / "m.yaml", {})
    cases = enumerate_cases([str(spec)])
    assert [c.id for c in cases] == [CASE] and cases[0].scenario == "Offline" and cases[0].max_images == 16


@pytest.mark.slow
def test_loadgen_case_baseline_regression_and_invalid_run(tmp_path, rtmdet_onnx, coco_layout):
    common = ["--kind", "loadgen", "--onnx", f"rtmdet={rtmdet_onnx}", "--dataset-dir", coco_layout, "--ann", ANN,
              "--workers", 0, "--cache-dir", tmp_path / "engines", "--no-plots", "--baselines", tmp_path / "b"]
    # Offline issues target_qps x min_duration samples at once: an expected QPS above any this model reaches on the
    # CPU (bs4, 2 cores: ~200) keeps a valid run longer than the 1 s minimum on an idle host too
    spec = _spec(tmp_path / "ok.yaml", {"Offline": {"target_qps": 1500, "min_query_count": 32}})
    first = tmp_path / "first"
    assert regress("run", "--models", spec, *common, "--out", first) == 0
    v = verdicts(first)[CASE]
    assert v["status"] == "warn" and v["gaps"] == ["missing LoadGen baseline"], v["notes"]
    assert v["values"]["metric"] == "qps" and v["values"]["valid"] and v["values"]["value"] > 0
    assert regress("baseline-update", first, "--baselines", tmp_path / "b") == 0
    files = list((tmp_path / "b").rglob("*.json"))
    entry = json.loads(files[0].read_text())["entries"]["rtmdet/nano-person/onnxruntime/fp32/bs4/loadgen-Offline"]
    assert entry["value"] == pytest.approx(v["values"]["value"])
    # plant: the stored figure is three times what this host reaches, as if the engine had become 3x slower
    data = json.loads(files[0].read_text())
    data["entries"]["rtmdet/nano-person/onnxruntime/fp32/bs4/loadgen-Offline"]["value"] *= 3
    files[0].write_text(json.dumps(data))
    second = tmp_path / "second"
    assert regress("run", "--models", spec, *common, "--out", second) == 1
    v = verdicts(second)[CASE]
    assert v["status"] == "fail" and any(n.startswith("LoadGen regression: LoadGen Offline qps") for n in v["notes"])
    # an INVALID LoadGen run (an expected QPS so low that its 4 samples end long before the 3 s minimum duration) fails
    # on its own record
    bad = _spec(tmp_path / "bad.yaml", {"Offline": {"target_qps": 1, "min_query_count": 4, "min_duration_s": 3}})
    third = tmp_path / "third"
    assert regress("run", "--models", bad, *common, "--out", third) == 1
    v = verdicts(third)[CASE]
    assert v["status"] == "fail" and any("LoadGen: result INVALID" in n for n in v["notes"]), v["notes"]
