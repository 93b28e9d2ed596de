"""`--devices`: one worker process per (simulated) device on disjoint image shards of the 350 shared images, one
merged record equal to the unsharded run; a SIGKILLed worker fails the run naming its device, and the rerun runs
only the missing shard (docs/scale-out.md)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from helpers import REPO, SUITE

SIM = REPO / "tests" / "sim_igie"
WAIT_S = 240


def _suite(*args, env=None, **kw):
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("CI_NODE_", "SLURM_ARRAY_"))}
    return subprocess.Popen([str(SUITE), "accuracy", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**clean, "PYTHON": sys.executable, **(env or {})},
                            **kw)


def _replay_args(fp32, results_dir, *extra):
    cfg = fp32.cfg
    return ["--model", "rtmdet", "--onnx", cfg.onnx, "--dataset-dir", cfg.dataset_dir, "--ann", cfg.annotation,
            "--backend", "replay", "--replay-dir", fp32.recording, "--workers", "0", "--preflight", "0",
            "--no-progress", "--results-dir", results_dir, "--cache-dir", cfg.cache_dir, *extra]


def _wait_for(predicate, what: str):
    deadline = time.monotonic() + WAIT_S
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting {WAIT_S} s for {what}")
        time.sleep(0.05)


def _record(results_dir):
    [path] = results_dir.glob("2*_accuracy.json")
    return json.loads(path.read_text())


@pytest.mark.slow
def test_sigkilled_worker_fails_the_run_and_the_rerun_runs_only_its_shard(rtmdet_fp32_pass, tmp_path):
    out = tmp_path / "results"
    # a simulated device of 15 images/s: each shard's 175 images take ~12 s, so the kill lands mid-shard
    args = _replay_args(rtmdet_fp32_pass, out, "--devices", "0,1", "--replay-fps", "15", "--checkpoint-interval", "0")
    first = _suite(*args)
    state = out / "devices" / "2-of-2" / ".run-state"
    pid_file = out / "devices" / "2-of-2" / "worker.pid"
    _wait_for(lambda: pid_file.is_file() and state.is_dir() and any(state.rglob("*.npz")),
              "shard 2's first saved batches")
    os.kill(int(pid_file.read_text()), signal.SIGKILL)
    stdout, stderr = first.communicate(timeout=WAIT_S)
    assert first.returncode == 3, stderr
    assert "device 1 (shard 2/2) killed by SIGKILL" in stderr and "run only shard(s) 2/2" in stderr
    assert "device 0 (shard 1/2): finished" in stdout
    assert not list(out.glob("2*_accuracy.json")), "a failed run writes no merged record"
    rerun = _suite(*args)
    stdout, stderr = rerun.communicate(timeout=WAIT_S)
    assert rerun.returncode == 0, stderr
    assert "device 0 (shard 1/2): already finished by an earlier run of this command, not run again" in stdout
    assert "device 1 (shard 2/2): started" in stdout and "device 0 (shard 1/2): started" not in stdout
    record = _record(out)
    assert record["metrics"] == rtmdet_fp32_pass.record["metrics"]
    assert record["num_detections"] == rtmdet_fp32_pass.record["num_detections"]
    assert [(d["device"], d["shard"], d["reused"]) for d in record["devices"]] == [(0, "1/2", True),
                                                                                  (1, "2/2", False)]
    assert [m["gpu_index"] for m in record["merged_from"]] == [0, 1]
    assert record["merged_from"][1]["resumed_images"] > 0, "the killed worker's saved batches are resumed"
    assert not (out / "devices").exists(), "the worker dirs go once the merged record is written"


def _calls(log):
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


@pytest.mark.slow
def test_two_simulated_igie_devices_merge_to_the_one_device_run(rtmdet_onnx, shared_data, tmp_path):
    """Each worker builds / loads its own engine on its own device ($SUITE_GPU_INDEX -> tvm.device index)."""
    ann = shared_data / "coco" / "annotations" / "instances_val2017_person_subset350.json"
    log = tmp_path / "calls.jsonl"
    env = {"PYTHONPATH": f"{SIM}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "SIM_IGIE_LOG": str(log)}

    def run(results, *extra):
        p = _suite("--model", "rtmdet", "--backend", "igie", "--onnx", rtmdet_onnx, "--images-dir",
                   shared_data / "coco" / "val2017", "--ann", ann, "--cache-dir", tmp_path / "engines", "--bs", 4,
                   "--max-images", 48, "--preflight", 0, "--no-progress", "--results-dir", results, *extra, env=env)
        stdout, stderr = p.communicate(timeout=WAIT_S)
        assert p.returncode == 0, stderr
        return _record(results), stdout

    one, _ = run(tmp_path / "one")
    log.unlink()
    two, stdout = run(tmp_path / "two", "--devices", "0,1")
    assert two["metrics"] == one["metrics"] and two["num_detections"] == one["num_detections"]
    assert two["backend"] == "igie" and [m["images"] for m in two["merged_from"]] == [24, 24]
    devices = sorted(c["index"] for c in _calls(log) if c["call"] == "tvm.device")
    assert set(devices) == {0, 1}, devices
