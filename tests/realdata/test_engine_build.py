"""scripts/build_engine.py and the engine cache, on the SIMULATED IGIE SDK (tests/sim_igie, test-only) and the real
RTMDet ONNX: a hit, a miss for each part of the key (ONNX content, precision, batch, SDK version), damaged engines
rebuilt rather than reused, and an interrupted build never published."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import onnx
import pytest

from helpers import REPO

SIM = REPO / "tests" / "sim_igie"
SCRIPT = REPO / "scripts" / "build_engine.py"


def build(cache, onnx_path, *extra, log=None, env=None, **popen):
    full_env = {**os.environ, "PYTHONPATH": str(SIM), **(env or {})}
    if log:
        full_env["SIM_IGIE_LOG"] = str(log)
    cmd = [sys.executable, str(SCRIPT), "--model", "rtmdet", "--onnx", str(onnx_path), "--backend", "igie",
           "--cache-dir", str(cache), "--json", *map(str, extra)]
    if popen:
        return subprocess.Popen(cmd, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    res = subprocess.run(cmd, env=full_env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def compiled(log):
    calls = [json.loads(line)["call"] for line in log.read_text().splitlines()] if log.exists() else []
    log.unlink(missing_ok=True)
    return "tvm.relay.build" in calls


@pytest.fixture()
def cache(tmp_path):
    return tmp_path / "engines"


def test_hit_and_a_miss_for_every_part_of_the_key(rtmdet_onnx, cache, tmp_path):
    log = tmp_path / "calls.jsonl"
    first = build(cache, rtmdet_onnx, "--bs", 2, log=log)
    assert first["cache"] == "miss" and compiled(log)
    again = build(cache, rtmdet_onnx, "--bs", 2, log=log)
    assert again == {**first, "cache": "hit", "seconds": again["seconds"]} and not compiled(log)

    # the key is the content, not the name: a renamed copy is a hit
    copy = tmp_path / "renamed.onnx"
    shutil.copy(rtmdet_onnx, copy)
    assert build(cache, copy, "--bs", 2, log=log)["engine"] == first["engine"] and not compiled(log)
    # one changed byte of metadata is another model
    model = onnx.load(str(rtmdet_onnx))
    model.doc_string = "re-exported"
    onnx.save(model, str(copy))
    changed = build(cache, copy, "--bs", 2, log=log)
    assert changed["cache"] == "miss" and changed["engine"] != first["engine"] and compiled(log)

    for what, extra, env in [("batch", ["--bs", 4], None), ("precision", ["--bs", 2, "--precision", "fp16"], None),
                             ("SDK version", ["--bs", 2], {"SIM_IGIE_VERSION": "0.1-sim"})]:
        res = build(cache, rtmdet_onnx, *extra, log=log, env=env)
        assert res["cache"] == "miss" and res["engine"] != first["engine"] and compiled(log), what
        assert build(cache, rtmdet_onnx, *extra, log=log, env=env)["cache"] == "hit", what
    assert json.loads((cache / (first["engine"].rsplit("/", 1)[1][:-3] + ".json")).read_text())["runtime"] \
        == "igie-tvm-0.0-sim"


@pytest.mark.parametrize("damage", ["corrupt", "truncated", "empty", "sidecar lost"])
def test_a_damaged_engine_is_rebuilt_not_reused(rtmdet_onnx, cache, tmp_path, damage):
    log = tmp_path / "calls.jsonl"
    first = build(cache, rtmdet_onnx, log=log)
    engine = first["engine"]
    good = open(engine, "rb").read()
    compiled(log)
    if damage == "corrupt":
        data = bytearray(good)
        data[len(data) // 2] ^= 0xFF
        open(engine, "wb").write(bytes(data))
    elif damage == "truncated":
        open(engine, "wb").write(good[:len(good) // 3])
    elif damage == "empty":
        open(engine, "wb").close()
    else:
        os.unlink(engine[:-3] + ".json")
    res = build(cache, rtmdet_onnx, log=log)
    assert res["cache"] == "miss" and res["engine"] == engine and compiled(log)
    assert open(engine, "rb").read() == good
    assert build(cache, rtmdet_onnx, log=log)["cache"] == "hit"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_an_interrupted_build_is_never_published(rtmdet_onnx, cache, tmp_path, sig):
    log = tmp_path / "calls.jsonl"
    proc = build(cache, rtmdet_onnx, log=log, env={"SIM_IGIE_EXPORT_STALL": "60"}, popen=True)
    deadline = time.time() + 120
    while not (log.exists() and "export_library.stalled" in log.read_text()):
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.1)
    proc.send_signal(sig)
    proc.communicate(timeout=60)
    assert proc.returncode != 0
    published = [p for p in cache.iterdir() if not p.name.startswith(".") and p.suffix in (".so", ".json")]
    assert published == []  # half an engine was written, under a temp name only
    leftovers = [p for p in cache.iterdir() if p.name.endswith(".tmp")]
    assert (leftovers == []) == (sig == signal.SIGTERM)  # SIGTERM cleans up; kill -9 cannot
    compiled(log)
    res = build(cache, rtmdet_onnx, log=log)
    assert res["cache"] == "miss" and compiled(log)
    assert [p for p in cache.iterdir() if p.name.endswith(".tmp")] == []  # the next build removed the stale one
    assert build(cache, rtmdet_onnx, log=log)["cache"] == "hit"


def test_build_engine_bad_inputs_exit_2(rtmdet_onnx, tmp_path):
    def run(*args):
        return subprocess.run([sys.executable, str(SCRIPT), "--cache-dir", str(tmp_path), *map(str, args)],
                              capture_output=True, text=True, timeout=120)
    for args, words in [(["--onnx", tmp_path / "missing.onnx", "--input-shape", "3x320x320"], "not found"),
                        (["--onnx", rtmdet_onnx], "dynamic image shape"),
                        (["--model", "rtmdet", "--onnx", rtmdet_onnx, "--backend", "nope"], "unknown backend"),
                        (["--model", "nosuchmodel", "--onnx", rtmdet_onnx], "nosuchmodel")]:
        res = run(*args)
        assert res.returncode == 2 and words in res.stderr and "Traceback" not in res.stderr, (args, res.stderr)
