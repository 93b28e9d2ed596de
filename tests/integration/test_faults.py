"""File-system faults, interrupts and concurrent runs (issue 17): each gives a clear error and an exit code, and
loses nothing. Permission faults as root run the command under setpriv without the DAC capabilities (root
bypasses permission bits); they skip when that is not possible here."""
import errno
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from common import BOOTSTRAP, cli
from common.data.coco import BatchLoader, image_items, read_annotations
from common.errors import ConfigError, InputError, RuntimeFailure
from common.data.preprocess import Preprocessor
from common.record.results import write_record
from common.harness.run_state import RunState
from common.harness.runs import RunConfig, run_accuracy
from common.config.specs import load_model
from tiny_detector import make_tiny_detector, tiny_detector_env

from helpers import REPO, full_record  # noqa: E402
N_IMAGES = 40
DROP_DAC = ["setpriv", "--inh-caps=-dac_override,-dac_read_search",
            "--bounding-set=-dac_override,-dac_read_search"]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return tiny_detector_env(tmp_path_factory.mktemp("faults"), N_IMAGES)


def _cfg(env, tmp, onnx_path=None, **kw):
    kw = {"results_dir": str(tmp / "res"), "cache_dir": str(tmp / "cache"), **kw}
    return RunConfig(model=str(env["spec"]), onnx=str(onnx_path or env["onnx"]), dataset_dir=str(env["coco"]),
                     workers=0, progress=False, threads=1, **kw)


def _cli(env, results, *extra, onnx_path=None):
    return [sys.executable, str(BOOTSTRAP), "accuracy", "--model", str(env["spec"]),
            "--onnx", str(onnx_path or env["onnx"]), "--dataset-dir", str(env["coco"]), "--results-dir", str(results),
            "--cache-dir", str(env["dir"] / "cache"), "--no-progress", "--threads", "1", "--preflight", "0", *extra]


def _run(cmd, **kw):
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300, **kw)


def _records(results):
    return [json.loads(p.read_text()) for p in sorted(Path(results).glob("*.json"))]


def _clean(res, code, *needles):
    assert res.returncode == code, (res.returncode, res.stdout, res.stderr)
    assert "Traceback" not in res.stderr and "internal failure" not in res.stderr, res.stderr
    for needle in needles:
        assert str(needle) in res.stderr, res.stderr


@pytest.fixture(scope="module")
def unprivileged():
    """A prefix that runs a command without the rights that bypass permission bits."""
    if os.geteuid() != 0:
        return []
    if not shutil.which("setpriv"):
        pytest.skip("running as root and setpriv is not available: permission faults cannot be planted")
    probe = subprocess.run([*DROP_DAC, "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"setpriv cannot drop the DAC capabilities here: {probe.stderr.decode().strip()}")
    return DROP_DAC


def _wait_for_chunks(state, proc, n, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline and len(list(state.glob("*/*.npz"))) < n and proc.poll() is None:
        time.sleep(0.01)
    assert proc.poll() is None, "the run ended before it could be interrupted"
    assert len(list(state.glob("*/*.npz"))) >= n, "the run made no progress in time"


# 1: results dir ---------------------------------------------------------------------------------------------

def test_unwritable_results_dir_is_exit_2_before_the_run(env, tmp_path, unprivileged):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    res = _run([*unprivileged, *_cli(env, ro, "--checkpoint-interval", "1000")])
    _clean(res, 2, ro, "results dir is not writable")
    assert "mAP" not in res.stdout, "refused before the run, not after it"


def test_results_dir_that_is_a_file(env, tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(InputError, match="results dir is not a directory") as ei:
        run_accuracy(_cfg(env, tmp_path, results_dir=str(f)))
    assert str(f) in str(ei.value)
    with pytest.raises(InputError, match="cannot be created.*is not a directory"):
        run_accuracy(_cfg(env, tmp_path, results_dir=str(f / "sub")))


def _fail_link_with_enospc(monkeypatch):
    def link(src, dst, *a, **k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(os, "link", link)


def test_record_write_failure_names_the_dir_and_leaves_no_temp_file(tmp_path, monkeypatch):
    _fail_link_with_enospc(monkeypatch)
    rec = full_record("accuracy", backend="b", device="d")
    with pytest.raises(RuntimeFailure, match="No space left") as ei:
        write_record(tmp_path, rec)
    assert str(tmp_path) in str(ei.value) and ei.value.exit_code == 3
    assert not list(tmp_path.iterdir())


def test_a_record_that_cannot_be_written_loses_nothing(env, tmp_path, monkeypatch, capsys):
    """Full disk when the record is written: the metrics are printed, exit 3 names the dir, the predictions
    stay in the resume state, and the rerun evaluates them without recomputing."""
    results = tmp_path / "res"
    args = ["accuracy", "--model", str(env["spec"]), "--onnx", str(env["onnx"]), "--dataset-dir",
            str(env["coco"]), "--results-dir", str(results), "--cache-dir", str(tmp_path / "cache"), "--workers", "0",
            "--no-progress", "--threads", "1", "--checkpoint-interval", "1000", "--preflight", "0"]
    with monkeypatch.context() as m:
        _fail_link_with_enospc(m)
        assert cli.main(args) == 3
    out, err = capsys.readouterr()
    assert "mAP@0.5:0.95" in out, "the metrics must be printed even when the record cannot be written"
    assert str(results) in err and "No space left" in err and "kept" in err, err
    assert list(results.glob(".run-state/*/*.npz")), "the finished predictions were dropped"
    assert cli.main(args) == 0
    (rec,) = _records(results)
    assert rec["run"]["resumed_images"] == N_IMAGES
    assert not (results / ".run-state").exists(), "no state (not even an empty dir) after a completed run"


def test_full_disk_tmpfs(env, tmp_path):
    """A real 16 KiB tmpfs as the results dir, where this machine allows mounting one."""
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16k", "tmpfs", str(mnt)],
                                           capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root); the ENOSPC test above simulates it")
    try:
        fd = os.open(mnt / "fill", os.O_WRONLY | os.O_CREAT)
        try:  # fill it up: every block taken
            while os.write(fd, b"\0" * 512):
                pass
        except OSError:
            pass
        finally:
            os.close(fd)
        res = _run(_cli(env, mnt, "--workers", "0"))
        _clean(res, 3, mnt, "No space left")
        assert "mAP@0.5:0.95" in res.stdout, "the metrics are printed even when the record cannot be written"
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)


# 2: decode workers and kill -9 -------------------------------------------------------------------------------

def _children(pid):
    kids = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            kids += [int(k) for k in (task / "children").read_text().split()]
        except OSError:
            pass
    return kids


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs /proc to find the workers")
def test_kill_9_takes_the_decode_workers_with_it(env, tmp_path):
    results = tmp_path / "res"
    proc = subprocess.Popen(_cli(env, results, "--workers", "2", "--checkpoint-interval", "0", onnx_path=env["slow"]),
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        _wait_for_chunks(results / ".run-state", proc, 2)
        workers = _children(proc.pid)
        assert len(workers) >= 2, workers
        proc.kill()
        # EOF on both pipes only once every process holding them (the workers) is gone
        proc.communicate(timeout=30)
    finally:
        for pid in _children(proc.pid) if proc.poll() is None else []:
            os.kill(pid, signal.SIGKILL)
        proc.kill()
    deadline = time.time() + 10
    while time.time() < deadline and any(Path(f"/proc/{w}").exists() and
                                         "Z" not in Path(f"/proc/{w}/stat").read_text().split()[2] for w in workers):
        time.sleep(0.05)
    alive = [w for w in workers if Path(f"/proc/{w}").exists()
             and Path(f"/proc/{w}/stat").read_text().split()[2] != "Z"]
    for w in alive:
        os.kill(w, signal.SIGKILL)
    assert not alive, "decode workers outlived the killed run"


# 3: a truncated resume chunk ----------------------------------------------------------------------------------

def test_truncated_chunk_is_recomputed(tmp_path):
    rng = np.random.default_rng(0)
    state = RunState(tmp_path, "abc", interval_s=0, model="m")
    for start in (0, 3, 6):
        ids = np.arange(start, start + 3)
        state.save(start, 3, ids, rng.random((3, 4)), rng.random(3), rng.integers(0, 3, 3), {})
    chunk = state.dir / f"{3:09d}.npz"
    data = chunk.read_bytes()
    chunk.write_bytes(data[: len(data) // 2])  # truncate -s 50%
    done, chunks = state.load()
    assert done == 3 and len(chunks) == 1
    assert sorted(p.name for p in state.dir.glob("*.npz")) == [f"{0:09d}.npz"], \
        "the damaged chunk and those after it are removed, to be rewritten"


def test_truncated_chunk_in_a_real_run(env, tmp_path):
    results = tmp_path / "res"
    proc = subprocess.Popen(_cli(env, results, "--workers", "0", "--checkpoint-interval", "0",
                                 onnx_path=env["slow"]), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _wait_for_chunks(results / ".run-state", proc, 4)
    proc.kill()
    proc.communicate(timeout=30)
    chunks = sorted(results.glob(".run-state/*/*.npz"))
    os.truncate(chunks[1], chunks[1].stat().st_size // 2)
    res = _run(_cli(env, results, "--workers", "0", onnx_path=env["slow"]))
    _clean(res, 0)
    (rec,) = _records(results)
    ref = run_accuracy(_cfg(env, tmp_path / "ref", onnx_path=env["slow"]))
    assert rec["metrics"] == ref["metrics"] and 1 <= rec["run"]["resumed_images"] < N_IMAGES


# 4: two interrupts in a row ------------------------------------------------------------------------------------

@pytest.mark.parametrize("first,second,gap", [(signal.SIGTERM, signal.SIGTERM, 0.0),
                                              (signal.SIGINT, signal.SIGINT, 0.002),
                                              (signal.SIGINT, signal.SIGTERM, 0.05)])
def test_a_second_interrupt_is_absorbed(env, tmp_path, first, second, gap):
    results = tmp_path / "res"
    proc = subprocess.Popen(_cli(env, results, "--workers", "0", "--checkpoint-interval", "0",
                                 onnx_path=env["slow"]), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _wait_for_chunks(results / ".run-state", proc, 2)
    proc.send_signal(first)
    time.sleep(gap)
    proc.send_signal(second)
    _, err = proc.communicate(timeout=60)
    err = err.decode()
    assert proc.returncode == 130, (proc.returncode, err)
    assert "Traceback" not in err and "terminate called" not in err, err
    res = _run(_cli(env, results, "--workers", "0", onnx_path=env["slow"]))
    _clean(res, 0)
    assert _records(results)[0]["run"]["resumed_images"] >= 2


# 7: engine cache ----------------------------------------------------------------------------------------------

def test_read_only_cache_serves_hits_and_builds_misses_outside_it(env, tmp_path, unprivileged):
    cache = tmp_path / "cache"
    first = _run(_cli(env, tmp_path / "r1", "--precision", "fp16", "--cache-dir", str(cache), "--workers", "0"))
    _clean(first, 0)
    cache.chmod(0o555)
    for f in cache.iterdir():
        f.chmod(0o444)
    hit = _run([*unprivileged, *_cli(env, tmp_path / "r2", "--precision", "fp16", "--cache-dir", str(cache),
                                     "--workers", "0")])
    _clean(hit, 0)
    assert _records(tmp_path / "r2")[0]["engine"]["cache_hit"]
    empty = tmp_path / "empty"
    empty.mkdir()
    empty.chmod(0o555)
    miss = _run([*unprivileged, *_cli(env, tmp_path / "r3", "--precision", "fp16", "--cache-dir", str(empty),
                                      "--workers", "0")])
    # a miss in a cache that cannot take the engine: built outside it for this run, with a warning (issue 35)
    _clean(miss, 0)
    assert f"warning: {empty}: cannot write the engine cache (errno 13 EACCES" in miss.stderr
    assert not _records(tmp_path / "r3")[0]["engine"]["cache_hit"] and list(empty.iterdir()) == []


def test_cache_path_that_is_a_file(env, tmp_path):
    f = tmp_path / "cachefile"
    f.write_text("x")
    with pytest.raises(InputError, match="engine cache path is not a directory") as ei:
        run_accuracy(_cfg(env, tmp_path, precision="fp16", cache_dir=str(f), max_images=2))
    assert str(f) in str(ei.value)


# 6: dataset permissions ---------------------------------------------------------------------------------------

def test_unreadable_dataset_dir_and_unsearchable_images_dir(env, tmp_path, unprivileged):
    coco = tmp_path / "coco"
    shutil.copytree(env["coco"], coco)
    base = [sys.executable, str(BOOTSTRAP), "accuracy", "--model", str(env["spec"]), "--onnx", str(env["onnx"]),
            "--results-dir", str(tmp_path / "res"), "--no-progress", "--workers", "0", "--preflight", "0"]
    coco.chmod(0)
    try:
        res = _run([*unprivileged, *base, "--dataset-dir", str(coco)])
        _clean(res, 2, coco, "permission denied")
    finally:
        coco.chmod(0o755)
    images = coco / "images" / "val2017"
    images.chmod(0o644)  # readable, not searchable
    try:
        res = _run([*unprivileged, *base, "--dataset-dir", str(coco)])
        _clean(res, 2, images, "permission denied")
        assert "missing" not in res.stderr
    finally:
        images.chmod(0o755)


# 10: a batch larger than the dataset ---------------------------------------------------------------------------

def test_prefetch_slots_are_bounded_by_the_images(env):
    items = image_items(read_annotations(env["coco"] / "annotations" / "instances_val2017.json"),
                        env["coco"] / "images" / "val2017", 8)
    v = load_model(str(env["spec"])).variant(None)
    with BatchLoader(items, Preprocessor(v.preprocess, v.height, v.width), 100_000, workers=1) as loader:
        assert loader.prefetch <= len(items)
        (batch,) = list(loader)
    assert len(batch.image_ids) == 8


# 12: model errors name the ONNX file ---------------------------------------------------------------------------

def _with_label(src, dst, label):
    model = onnx.load(str(src))
    for init in model.graph.initializer:
        if init.name == "lab":
            init.CopyFrom(numpy_helper.from_array(np.full((1, 3), label, np.float32), "lab"))
    onnx.save(model, str(dst))
    return dst


def test_model_errors_name_the_onnx(env, tmp_path):
    bad_input = make_tiny_detector(tmp_path / "in.onnx", input_name="images")
    with pytest.raises(InputError, match="no input 'input'") as ei:
        run_accuracy(_cfg(env, tmp_path, onnx_path=bad_input, max_images=2))
    assert str(bad_input) in str(ei.value)
    fixed = make_tiny_detector(tmp_path / "b1.onnx", batch=1)
    with pytest.raises(InputError, match="engine built for batch 1") as ei:
        run_accuracy(_cfg(env, tmp_path, onnx_path=fixed, batch_size=4, max_images=8))
    assert str(fixed) in str(ei.value)
    label = _with_label(env["onnx"], tmp_path / "label.onnx", 7)
    with pytest.raises(InputError, match="label 7, outside") as ei:
        run_accuracy(_cfg(env, tmp_path, onnx_path=label, max_images=2))
    assert str(label) in str(ei.value)
    spec = tmp_path / "spec.yaml"
    spec.write_text(env["spec"].read_text().replace("dets: dets", "dets: boxes"))
    with pytest.raises(InputError, match="no output 'boxes'") as ei:
        run_accuracy(RunConfig(**{**_cfg(env, tmp_path, max_images=2).__dict__, "model": str(spec)}))
    assert str(env["onnx"]) in str(ei.value)


# 13: --save-detections checked up front -------------------------------------------------------------------------

def test_unusable_save_detections_path_is_refused_first(env, tmp_path, unprivileged):
    a_dir = tmp_path / "adir"
    a_dir.mkdir()
    missing_onnx = tmp_path / "none.onnx"  # refused before the ONNX is even looked at
    for path, needle in ((a_dir, "is a directory"), (tmp_path / "file.txt" / "d.json", "not a directory")):
        if path.parent.name == "file.txt":
            path.parent.write_text("x")
        with pytest.raises(InputError, match=needle) as ei:
            run_accuracy(_cfg(env, tmp_path, onnx_path=missing_onnx, detections_out=str(path)))
        assert "--save-detections" in str(ei.value)
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    res = _run([*unprivileged, *_cli(env, tmp_path / "res", "--save-detections", str(ro / "d.json"))])
    _clean(res, 2, ro, "--save-detections")


def test_save_detections_is_streamed_into_the_run_and_a_failed_write_keeps_the_predictions(env, tmp_path,
                                                                                             monkeypatch):
    """The detections file is the JSON of every kept detection in order, finished inside the run's time; a write
    that fails (here the sync of the finished file) is exit 3 naming the file, leaves no temporary file and keeps
    the predictions for a rerun, which then writes the same file."""
    from common.evaluate.metrics import to_coco_results
    dets = tmp_path / "out" / "d.json"
    dets.parent.mkdir()
    ref = run_accuracy(_cfg(env, tmp_path, detections_out=str(tmp_path / "ref.json"), max_images=9, batch_size=2))
    saved = json.loads((tmp_path / "ref.json").read_text())
    assert len(saved) == ref["num_detections"] > 0
    assert (tmp_path / "ref.json").read_text() == json.dumps(to_coco_results(np.array(
        [[d["image_id"], *d["bbox"], d["score"], d["category_id"]] for d in saved], np.float64)))
    assert 0 <= ref["run"]["save_detections_tail_s"] <= ref["run"]["wall_s"]
    # the phases a faster device cannot shorten: before the first inference, after the last batch (the file's end in it)
    run = ref["run"]
    assert 0 < run["setup_s"] and run["save_detections_tail_s"] <= run["tail_s"]
    assert run["setup_s"] + run["tail_s"] + run["inference_s"] / run["streams"] <= run["wall_s"]
    real_fsync = os.fsync

    def failing(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(os, "fsync", failing)
    with pytest.raises(RuntimeFailure, match="cannot write the detections") as ei:
        run_accuracy(_cfg(env, tmp_path, detections_out=str(dets), max_images=9, batch_size=2, checkpoint_s=0))
    assert ei.value.exit_code == 3 and str(dets) in str(ei.value) and "predictions are kept" in str(ei.value)
    assert os.listdir(dets.parent) == []
    monkeypatch.setattr(os, "fsync", real_fsync)
    again = run_accuracy(_cfg(env, tmp_path, detections_out=str(dets), max_images=9, batch_size=2))
    assert again["run"]["resumed_images"] == 9 and again["metrics"] == ref["metrics"]
    assert dets.read_text() == (tmp_path / "ref.json").read_text()


# 14: modes and leftovers ----------------------------------------------------------------------------------------

def test_records_and_engines_honour_the_umask(env, tmp_path):
    old = os.umask(0o022)
    try:
        res = _run(_cli(env, tmp_path / "res", "--precision", "fp16", "--cache-dir", str(tmp_path / "cache"),
                        "--workers", "0"))
    finally:
        os.umask(old)
    _clean(res, 0)
    (record,) = Path(tmp_path / "res").glob("*.json")
    engines = list((tmp_path / "cache").glob("*.onnx")) + list((tmp_path / "cache").glob("*.json"))
    assert engines
    for f in [record, *engines]:
        assert stat.S_IMODE(f.stat().st_mode) == 0o644, f
    assert not (tmp_path / "res" / ".run-state").exists(), "an empty .run-state dir is left"


# 15: a concurrent identical run -------------------------------------------------------------------------------

def test_a_live_runs_state_is_not_adopted(env, tmp_path):
    results = tmp_path / "res"
    proc = subprocess.Popen(_cli(env, results, "--workers", "0", "--checkpoint-interval", "0",
                                 onnx_path=env["slow"]), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        _wait_for_chunks(results / ".run-state", proc, 2)
        proc.send_signal(signal.SIGSTOP)  # alive (holding its lock), however long the second run takes
        owner_chunks = sorted(results.glob(".run-state/*/*.npz"))
        second = _run(_cli(env, results, "--workers", "0", onnx_path=env["slow"]))
        _clean(second, 0)
        assert "identical run is in progress" in second.stderr
        (rec,) = _records(results)
        assert rec["run"]["resumed_images"] == 0, "a live run's chunks were adopted"
        assert set(owner_chunks) <= set(results.glob(".run-state/*/*.npz")), "the owner's chunks were touched"
        proc.kill()  # a dead owner's state is adopted
        proc.communicate(timeout=30)
        third = _run(_cli(env, results, "--workers", "0", onnx_path=env["slow"]))
        _clean(third, 0)
        assert max(r["run"]["resumed_images"] for r in _records(results)) >= 2
    finally:
        proc.kill()
        proc.communicate()


# SIGTERM while the engine is still being set up (a session creation that takes minutes) --------------------------

def test_sigterm_during_engine_setup_ends_the_run(env, tmp_path):
    args = _cli(env, tmp_path / "res", "--workers", "0")[2:]   # after the interpreter and the bootstrap
    code = ("import sys, time, common.harness.runs as r\n"
            "def slow(*a, **k):\n"
            "    print('setting up', file=sys.stderr, flush=True)\n"
            "    time.sleep(300)\n"
            "r.prepare = slow\n"
            "from common import cli\n"
            f"getattr(cli, 'exit_now', sys.exit)(cli.main({args!r}))\n")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stderr.readline().strip() == b"setting up"
        time.sleep(0.5)  # let the main thread reach its wait for the set-up
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 130 and b"interrupted" in err, (proc.returncode, err)


def test_a_run_refused_after_claiming_its_state_leaves_no_state_dir(env, tmp_path):
    f = tmp_path / "cachefile"
    f.write_text("x")
    with pytest.raises(InputError, match="engine cache path is not a directory"):
        run_accuracy(_cfg(env, tmp_path, precision="fp16", cache_dir=str(f), max_images=2))
    assert not (tmp_path / "res" / ".run-state").exists()


def test_input_cache_on_a_disk_too_small_is_refused_before_any_work(env, tmp_path, monkeypatch):
    """The cache's size is known up front (images x 3 x H x W bytes): a disk that cannot hold it is refused with
    exit 2, naming the directory and the bytes needed and free, and nothing is left behind. Both ways a disk can
    be too small: the free space says so, or the space is gone when it is reserved (another writer, a quota)."""
    cache = tmp_path / "inputs"
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda p: real(p)._replace(free=1000))
    with pytest.raises(ConfigError) as err:
        run_accuracy(_cfg(env, tmp_path, input_cache=str(cache), max_images=6))
    v = load_model(str(env["spec"])).variant()
    needed = 6 * 3 * v.height * v.width + 6 * 6 * 8  # canvases and geometry rows
    assert err.value.exit_code == 2 and err.value.path == str(cache)
    assert f"needs {needed} bytes (6 images x 3x{v.height}x{v.width} uint8" in str(err.value)
    assert "1000 bytes free" in str(err.value)
    assert list(cache.iterdir()) == [] and not (tmp_path / "res" / ".run-state").exists()
    monkeypatch.setattr(shutil, "disk_usage", real)

    def full(*a, **k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(os, "posix_fallocate", full)
    with pytest.raises(ConfigError, match=f"needs {needed} bytes"):
        run_accuracy(_cfg(env, tmp_path, input_cache=str(cache), max_images=6))
    assert list(cache.iterdir()) == []