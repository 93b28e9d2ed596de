"""The regression runner with fewer cases than nodes: the accuracy cases are split by images across the nodes
(`--shard k/n`), each node runs its image shard, and `regress.py merge` joins them into the case itself, its 12
stats those of the unsharded run exactly (docs/scale-out.md). A missing image shard leaves the case incomplete
(exit 4, named), also when the missing node held every case."""
from __future__ import annotations

import json

import pytest
import yaml

from regress_helpers import REPO, regress, verdicts

ANN = "instances_val2017_person_subset350.json"
CASE = "rtmdet/nano-person/onnxruntime/fp32/bs1/accuracy"


def _spec(path):
    raw = yaml.safe_load((REPO / "models" / "rtmdet" / "model.yaml").read_text())
    variant = raw["variants"][raw["default_variant"]]
    raw["variants"] = {raw["default_variant"]: variant}
    variant["matrix"] = {"precisions": ["fp32"], "batch_sizes": [], "accuracy_batch_sizes": [1]}
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def _metrics(run_dir, case_id=CASE):
    outcome = json.loads(next((run_dir / "cases").glob("*.json")).read_text())
    assert outcome["case"]["id"] == case_id
    [record] = outcome["records"]
    return json.loads((run_dir / record).read_text())


@pytest.mark.slow
def test_one_accuracy_case_split_over_three_nodes_merges_exactly(tmp_path, rtmdet_onnx, coco_layout, capsys):
    args = ["--models", _spec(tmp_path / "model.yaml"), "--kind", "accuracy", "--onnx", f"rtmdet={rtmdet_onnx}",
            "--dataset-dir", coco_layout, "--ann", ANN, "--max-images", 30, "--workers", 0, "--cache-dir",
            tmp_path / "engines", "--no-plots", "--baselines", tmp_path / "b"]
    whole = tmp_path / "whole"
    assert regress("run", *args, "--out", whole, "--run-id", "w") == 0
    nodes = []
    for k in (3, 1, 2):
        d = tmp_path / f"node{k}"
        assert regress("run", *args, "--shard", f"{k}/3", "--out", d, "--run-id", "s") == 0
        [case_file] = (d / "cases").glob("*.json")
        assert json.loads(case_file.read_text())["case"]["id"] == f"{CASE}/images-{k}-of-3"
        nodes.append(d)
    merged = tmp_path / "merged"
    assert regress("merge", *nodes, "--out", merged, "--baselines", tmp_path / "b", "--no-plots") == 0
    a, b = _metrics(whole), _metrics(merged)
    assert b["metrics"] == a["metrics"] and b["dataset"]["num_images"] == a["dataset"]["num_images"] == 30
    assert [s["images"] for s in b["merged_from"]] == [10, 10, 10]
    assert verdicts(merged)[CASE]["status"] == verdicts(whole)[CASE]["status"]
    assert (merged / "records").joinpath(*_case_dir(merged), "dets", "detections.json").is_file()
    # a node missing: the case is incomplete and its image shard named
    capsys.readouterr()
    assert regress("merge", nodes[0], nodes[1], "--out", tmp_path / "gap", "--baselines", tmp_path / "b",
                   "--no-plots") == 4
    out = capsys.readouterr().out
    assert f"INCOMPLETE: {CASE}: image shard 2/3 was not merged" in out and "shard 2/3 was not merged" in out


def _case_dir(run_dir):
    [d] = [p.name for p in (run_dir / "records").iterdir() if "images" not in p.name]
    return (d,)


@pytest.mark.slow
def test_a_merge_missing_the_only_shard_with_cases_is_incomplete(tmp_path, rtmdet_onnx, capsys):
    """2 nodes, 1 performance case: node 2 has no case. Merging node 2 alone is exit 4 naming shard 1/2, not
    exit 2 ("not a regress run directory")."""
    spec = _spec(tmp_path / "model.yaml")
    args = ["--models", spec, "--kind", "performance", "--bs", "1", "--onnx", f"rtmdet={rtmdet_onnx}", "--out"]
    raw = yaml.safe_load(spec.read_text())
    raw["variants"]["nano-person"]["matrix"]["batch_sizes"] = [1]
    spec.write_text(yaml.safe_dump(raw, sort_keys=False))
    assert regress("run", *args, tmp_path / "n2", "--shard", "2/2", "--allow-empty") == 0
    capsys.readouterr()
    assert regress("merge", tmp_path / "n2", "--out", tmp_path / "m") == 4
    assert "INCOMPLETE: shard 1/2 was not merged" in capsys.readouterr().out
