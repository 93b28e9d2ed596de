"""Image shards of one accuracy run on the 350 shared val2017 images, merged by `scripts/suite merge`: the 12 stats
equal the unsharded run's exactly (docs/scale-out.md). The shards replay the session's FP32 pass (the same raw
outputs of the same ONNX on the same images), so any difference comes from the sharding and the merge alone."""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from common.errors import ConfigError, IncompleteError, InputError
from common.harness.merge import merge_shards
from common.harness.runs import run_accuracy
from helpers import SUITE

KEEP = lambda record: None  # noqa: E731  -- a publisher: the shard writes its own files


def _shard_cfg(fp32, results_dir: Path, shard: str, **kw):
    return dataclasses.replace(fp32.cfg, **{"backend": "replay", "backend_options": {"replay_dir": str(fp32.recording)},
                                            "record_outputs": None, "input_cache": None, "detections_out": None,
                                            "workers": 0, "results_dir": str(results_dir), "shard": shard, **kw})


def _run_shards(fp32, root: Path, n: int, order, **kw) -> list[Path]:
    dirs = []
    for k in order:
        d = root / f"shard{k}"
        record = run_accuracy(_shard_cfg(fp32, d, f"{k}/{n}", **kw), KEEP)
        assert record["kind"] == "accuracy-shard" and record["metrics"] == {}
        assert not list(d.glob("2*_accuracy.json")), "a shard writes no accuracy record of its own"
        dirs.append(d)
    return dirs


@pytest.fixture(scope="module")
def four_shards(rtmdet_fp32_pass, tmp_path_factory):
    """Shards 1..4 of the 350 images, run in the order 3, 1, 4, 2, each in its own results dir."""
    root = tmp_path_factory.mktemp("shards4")
    dirs = _run_shards(rtmdet_fp32_pass, root, 4, (3, 1, 4, 2))
    return {int(d.name[-1]): d for d in dirs}


def test_four_shards_merged_in_any_order_equal_the_unsharded_run(rtmdet_fp32_pass, four_shards):
    whole = rtmdet_fp32_pass.record
    sizes = [json.loads(next(four_shards[k].glob("shard-*.json")).read_text())["dataset"]["num_images"]
             for k in (1, 2, 3, 4)]
    assert sizes == [87, 88, 87, 88] and sum(sizes) == whole["dataset"]["num_images"] == 350
    for order in ((1, 2, 3, 4), (4, 3, 2, 1), (2, 4, 1, 3)):
        merged = merge_shards([four_shards[k] for k in order])
        assert merged["kind"] == "accuracy" and merged["dataset"]["num_images"] == 350
        assert merged["metrics"] == whole["metrics"]          # exactly, all 12 stats
        # and what the reports show of them: the same matches and draws give the same intervals and detail
        assert whole["metrics_ci"]["resamples"] == 1000 and merged["metrics_ci"] == whole["metrics_ci"]
        assert merged["accuracy_detail"] == whole["accuracy_detail"] and merged["accuracy_detail"]["per_class"]
        assert merged["num_detections"] == whole["num_detections"]
        assert [s["index"] for s in merged["merged_from"]] == [1, 2, 3, 4]
        assert merged["verdict"] == whole["verdict"] == "pass" and merged["checks"] == whole["checks"]


def test_three_shards_of_a_reordered_annotation_file_merge_exactly(rtmdet_fp32_pass, tmp_path):
    """The partition is by image id, not by position in the file: the annotation file with its images and
    annotations in reverse order gives the same shards and the same merged stats."""
    cfg = rtmdet_fp32_pass.cfg
    ann = json.loads((Path(cfg.dataset_dir) / "annotations" / cfg.annotation).read_text())
    ann["images"].reverse()
    ann["annotations"].reverse()
    reordered = tmp_path / "reversed.json"
    reordered.write_text(json.dumps(ann))
    dirs = _run_shards(rtmdet_fp32_pass, tmp_path, 3, (2, 3, 1), annotation=str(reordered))
    merged = merge_shards(dirs)
    assert merged["metrics"] == rtmdet_fp32_pass.record["metrics"]
    assert merged["dataset"]["annotation"] == str(reordered)


def _merge_cli(*dirs, env=None):
    return subprocess.run([str(SUITE), "merge", *map(str, dirs), "--no-record"], capture_output=True, text=True,
                          env={**os.environ, "PYTHON": sys.executable, **(env or {})}, timeout=300)


def test_merge_refuses_a_missing_or_duplicated_shard(four_shards, tmp_path):
    r = _merge_cli(four_shards[4], four_shards[1], four_shards[3])
    assert r.returncode == 4, r.stderr
    assert "missing shard(s): 2/4 (images 88..175, 88 images)" in r.stderr
    dup = tmp_path / "again"
    dup.mkdir()
    for f in four_shards[2].glob("shard-*"):
        (dup / f.name).write_bytes(f.read_bytes())
    r = _merge_cli(*four_shards.values(), dup)
    assert r.returncode == 2 and "shard 2/4 is given twice" in r.stderr, r.stderr
    r = _merge_cli(four_shards[1], tmp_path / "nowhere")
    assert r.returncode == 2 and "no such results dir" in r.stderr


@pytest.mark.parametrize("field,words", [("onnx_sha256", "model bytes"), ("precision", "precision"),
                                         ("engine_key", "engine key"), ("dataset", "dataset"),
                                         ("annotation_sha256", "annotation file")])
def test_merge_refuses_shards_that_disagree(four_shards, tmp_path, field, words):
    """A shard that ran something else (its record says so) is refused with exit 2 naming what differs."""
    other = tmp_path / "other"
    other.mkdir()
    for f in four_shards[3].glob("shard-*"):
        (other / f.name).write_bytes(f.read_bytes())
    rec = next(other.glob("*.json"))
    record = json.loads(rec.read_text())
    record["identity"][field] = "something else"
    rec.write_text(json.dumps(record))
    with pytest.raises(ConfigError, match=f"disagree on the {words}"):
        merge_shards([four_shards[1], four_shards[2], other, four_shards[4]])


def test_merge_refuses_a_shard_of_another_batch_size_or_corrupt_detections(rtmdet_fp32_pass, four_shards,
                                                                          tmp_path):
    [bs2] = _run_shards(rtmdet_fp32_pass, tmp_path, 4, (2,), batch_size=2)
    with pytest.raises(ConfigError, match="disagree on the batch size"):
        merge_shards([four_shards[1], bs2, four_shards[3], four_shards[4]])
    cut = tmp_path / "cut"
    cut.mkdir()
    for f in four_shards[2].glob("shard-*"):
        (cut / f.name).write_bytes(f.read_bytes()[:-8] if f.suffix == ".npy" else f.read_bytes())
    with pytest.raises(InputError, match="do not match their shard record's sha256"):
        merge_shards([four_shards[1], cut, four_shards[3], four_shards[4]])


def test_the_only_non_empty_shard_missing_is_exit_4(rtmdet_fp32_pass, tmp_path):
    """One image in two shards: shard 1/2 holds none. Merging it alone is incomplete (exit 4, naming 2/2),
    not a bad input."""
    [empty] = _run_shards(rtmdet_fp32_pass, tmp_path, 2, (1,), max_images=1)
    record = json.loads(next(empty.glob("*.json")).read_text())
    assert record["dataset"]["num_images"] == 0 and record["shard"]["rows"] == 0
    with pytest.raises(IncompleteError, match=r"missing shard\(s\): 2/2 \(images 1..1, 1 images\)"):
        merge_shards([empty])
    r = _merge_cli(empty)
    assert r.returncode == 4 and "2/2" in r.stderr, r.stderr
    [full] = _run_shards(rtmdet_fp32_pass, tmp_path, 2, (2,), max_images=1)
    assert merge_shards([full, empty])["dataset"]["num_images"] == 1


def _suite_shard(fp32, results_dir, *flags, env=None):
    cfg = fp32.cfg
    cmd = [str(SUITE), "accuracy", "--model", "rtmdet", "--onnx", cfg.onnx, "--dataset-dir", cfg.dataset_dir,
           "--ann", cfg.annotation, "--backend", "replay", "--replay-dir", str(fp32.recording), "--workers", "0",
           "--preflight", "0", "--no-progress", "--results-dir", str(results_dir), "--cache-dir", cfg.cache_dir,
           *flags]
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("CI_NODE_", "SLURM_ARRAY_"))}
    return subprocess.run(cmd, capture_output=True, text=True, env={**clean, "PYTHON": sys.executable, **(env or {})},
                          timeout=300)


def test_ci_variables_set_the_shard_and_a_flag_wins(rtmdet_fp32_pass, four_shards, tmp_path):
    gitlab = {"CI_NODE_INDEX": "2", "CI_NODE_TOTAL": "4"}
    r = _suite_shard(rtmdet_fp32_pass, tmp_path / "gl", env=gitlab)
    assert r.returncode == 0, r.stderr
    assert "shard 2/4 (from $CI_NODE_INDEX=2/$CI_NODE_TOTAL=4 (GitLab parallel))" in r.stdout
    slurm = {"SLURM_ARRAY_TASK_ID": "13", "SLURM_ARRAY_TASK_MIN": "10", "SLURM_ARRAY_TASK_MAX": "13",
             "SLURM_ARRAY_TASK_COUNT": "4"}
    r = _suite_shard(rtmdet_fp32_pass, tmp_path / "slurm", env=slurm)
    assert r.returncode == 0, r.stderr
    assert "shard 4/4 (from $SLURM_ARRAY_TASK_ID=13 (Slurm array 10..13))" in r.stdout
    # the two nodes' shards merge with the others into the unsharded run's stats
    merged = merge_shards([four_shards[1], tmp_path / "gl", four_shards[3], tmp_path / "slurm"])
    assert merged["metrics"] == rtmdet_fp32_pass.record["metrics"]
    r = _suite_shard(rtmdet_fp32_pass, tmp_path / "flag", "--shard", "1/4", env=gitlab)
    assert r.returncode == 0 and "shard 1/4 (from --shard (overrides $CI_NODE_INDEX=2" in r.stdout, r.stdout
    r = _suite_shard(rtmdet_fp32_pass, tmp_path / "both", env={**gitlab, **slurm})
    assert r.returncode == 2 and "contradictory shard variables: 2/4 from $CI_NODE_INDEX" in r.stderr, r.stderr
    assert not (tmp_path / "both").exists()


def test_a_shard_saves_its_own_detections(rtmdet_fp32_pass, tmp_path):
    """--save-detections on a shard: the unsharded run's detections of the shard's images, as COCO results JSON."""
    out = tmp_path / "dets-2-of-4.json"
    record = run_accuracy(_shard_cfg(rtmdet_fp32_pass, tmp_path / "shard2", "2/4", detections_out=str(out)), KEEP)
    cfg = rtmdet_fp32_pass.cfg
    images = json.loads((Path(cfg.dataset_dir) / "annotations" / cfg.annotation).read_text())["images"]
    ids = sorted(im["id"] for im in images)[record["shard"]["first"] - 1:record["shard"]["last"]]
    whole = [d for d in json.loads(rtmdet_fp32_pass.detections.read_text()) if d["image_id"] in set(ids)]
    mine = json.loads(out.read_text())
    assert len(mine) == record["num_detections"] == len(whole) > 0
    key = lambda d: (d["image_id"], d["score"], *d["bbox"])  # noqa: E731
    assert sorted(map(key, mine)) == sorted(map(key, whole))
