"""Issue 35's fresh faults (items 4 to 8): each test plants the fault and checks the clear answer the suite
now gives (docs/robustness.md, "Fresh faults")."""
import errno
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from common import BOOTSTRAP
from common.harness.runs import RunConfig, run_accuracy
from helpers import REPO
from tiny_detector import SPEC, tiny_detector_env

N_IMAGES = 12


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return tiny_detector_env(tmp_path_factory.mktemp("fresh"), N_IMAGES)


def _cfg(env, tmp, spec=None, **kw):
    kw = {"results_dir": str(tmp / "res"), "cache_dir": str(tmp / "cache"), "preflight": 0, **kw}
    return RunConfig(model=str(spec or env["spec"]), onnx=str(env["onnx"]), dataset_dir=str(env["coco"]),
                     workers=0, progress=False, threads=1, **kw)


# --- item 5: the record says how the images were fed and which spec bytes were read --------------------------

def test_record_carries_resolved_preprocessing_and_spec_hash(env, tmp_path):
    rgb = tmp_path / "rgb.yaml"   # the planted difference: RGB instead of BGR, and the pad / interpolation defaults
    rgb.write_text(SPEC.format(size=64).replace("color: bgr", "color: rgb"))
    record = run_accuracy(_cfg(env, tmp_path, spec=rgb))
    pre = json.loads(json.dumps(record["preprocess"]))  # as a reader of the written record sees it
    assert pre == {"height": 64, "width": 64, "resize": "letterbox", "pad": "bottom_right", "pad_value": 114.0,
                   "color": "rgb", "mean": [100.0] * 3, "std": [50.0] * 3, "interpolation": "linear"}
    assert record["spec"] == {"path": str(rgb), "sha256": hashlib.sha256(rgb.read_bytes()).hexdigest(),
                              "variant": "v"}
    assert record["spec"]["sha256"] != hashlib.sha256(env["spec"].read_bytes()).hexdigest()


def test_category_coverage_line_and_warning(env, tmp_path, capsys):
    from common.cli import print_summary
    # a one-class detector judged on every category of the annotation file (80 listed; 1, 3 and 18 annotated)
    # with an 80-class label map
    wide = tmp_path / "wide.yaml"
    wide.write_text(SPEC.format(size=64).replace("labels: person", "labels: coco80")
                    .replace("categories: [1]", "categories: null"))
    record = run_accuracy(_cfg(env, tmp_path, spec=wide))
    cov = record["dataset"]["category_coverage"]
    assert (cov["evaluated"], cov["detected"], cov["with_ground_truth"], cov["detected_with_ground_truth"]) == \
        (80, 1, 3, 1)
    assert "only 1 of the 3 categories" in cov["warning"]
    print_summary(record)
    out = capsys.readouterr().out
    assert " categories: 1 of 80 evaluated got any detection" in out and "WARNING: only 1 of the 3" in out
    # the spec that evaluates the one category the model knows: covered, no warning
    cov = run_accuracy(_cfg(env, tmp_path))["dataset"]["category_coverage"]
    assert (cov["evaluated"], cov["detected"], cov["warning"]) == (1, 1, None)


# --- item 7: a batch far larger than the dataset --------------------------------------------------------------

def test_huge_batch_with_workers(env, tmp_path):
    """--bs 100000 --workers 2 on a 320x320 input: the loader's shared buffers hold min(batch, images) rows, not
    100000 (122 GB each: the mapping failed, an internal failure, exit 3)."""
    from common.data.coco import image_items, read_annotations
    from common.data.loader import SharedBatchLoader
    from common.data.preprocess import Preprocess, Preprocessor
    from tiny_detector import make_tiny_detector, write_tiny_spec

    items = image_items(read_annotations(env["coco"] / "annotations" / "instances_val2017.json"),
                        env["coco"] / "images" / "val2017")
    with SharedBatchLoader(items, Preprocessor(Preprocess(), 320, 320), 100000, workers=2) as loader:
        assert loader.inputs[0].shape == (N_IMAGES, 3, 320, 320)
        batches = list(loader)
        assert [len(b.image_ids) for b in batches] == [N_IMAGES]
    spec, onnx_path = write_tiny_spec(tmp_path / "t320.yaml", 320), make_tiny_detector(tmp_path / "m320.onnx", 320)
    # twice with the input cache: written (canvases from the workers), then read (normalised into reused buffers)
    for extra in ([], ["--input-cache", str(tmp_path / "inputs")], ["--input-cache", str(tmp_path / "inputs")]):
        res = subprocess.run([sys.executable, str(BOOTSTRAP), "accuracy", "--model", str(spec), "--onnx",
                              str(onnx_path), "--dataset-dir", str(env["coco"]), "--results-dir",
                              str(tmp_path / "res"), "--cache-dir", str(tmp_path / "cache"), "--no-progress",
                              "--threads", "1", "--preflight", "0", "--bs", "100000", "--workers", "2", *extra],
                             cwd=REPO, capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, (extra, res.stderr)
        assert "internal failure" not in res.stderr


# --- item 7: a full or unwritable engine cache ----------------------------------------------------------------

def _fill(directory: Path):
    """Write into `directory` until its file system answers ENOSPC."""
    with open(directory / "filler", "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc


@pytest.fixture
def full_fs(tmp_path):
    """A 256 KiB tmpfs filled to the last byte (mounting needs root with CAP_SYS_ADMIN; skips otherwise)."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a small tmpfs here (needs root with CAP_SYS_ADMIN)")
    try:
        (mnt / "cache").mkdir()
        _fill(mnt)
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_engine_cache_on_a_full_file_system(env, tmp_path, full_fs):
    cache = full_fs / "cache"
    res = subprocess.run([sys.executable, str(BOOTSTRAP), "accuracy", "--model", str(env["spec"]), "--onnx",
                          str(env["onnx"]), "--dataset-dir", str(env["coco"]), "--results-dir", str(tmp_path / "res"),
                          "--cache-dir", str(cache), "--no-progress", "--threads", "1", "--preflight", "0",
                          "--precision", "fp16", "--workers", "0"],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert f"warning: {cache}: cannot write the engine cache (errno 28 ENOSPC" in res.stderr, res.stderr
    assert "internal failure" not in res.stderr
    record = json.loads(next((tmp_path / "res").glob("*.json")).read_text())
    assert record["engine"]["cache_hit"] is False and not record["engine"]["path"].startswith(str(cache))
    assert not Path(record["engine"]["path"]).exists()   # the uncached engine went with the process
    # no partial engine, sidecar, empty .lock or half-written memo left (only the memos' empty folders)
    assert [p for p in cache.rglob("*") if not p.is_dir()] == []


class _Build:
    """An engine build that writes `size` bytes to its target, failing with `fail_errno` for targets in `full`."""

    def __init__(self, full: Path | None = None, fail_errno: int = errno.ENOSPC, size: int = 1000):
        self.full, self.fail_errno, self.size, self.targets = full, fail_errno, size, []

    def __call__(self, target: Path):
        self.targets.append(target)
        with open(target, "wb") as f:
            f.write(b"e" * (self.size // 2))
            if self.full is not None and Path(target).parent == self.full:
                raise OSError(self.fail_errno, os.strerror(self.fail_errno), str(target))
            f.write(b"e" * (self.size - self.size // 2))


def test_full_cache_builds_outside_it_with_a_warning(tmp_path, capsys):
    from common.engine_cache import EngineCache
    cache = tmp_path / "cache"
    build = _Build(full=cache)
    engine, hit = EngineCache(cache).get_or_build("k" * 32, ".onnx", build, {})
    assert not hit and engine.read_bytes() == b"e" * 1000 and engine.parent != cache
    err = capsys.readouterr().err
    assert f"warning: {cache}: cannot write the engine cache (errno 28 ENOSPC: No space left on device)" in err
    assert sorted(p.name for p in cache.iterdir()) == []   # the partial build removed, no empty .lock


def test_no_room_anywhere_is_exit_3_naming_the_cache(tmp_path, monkeypatch):
    """Where the engine cannot be built outside the cache either, caching was required: exit 3, the dir and
    the errno named."""
    import tempfile as tf
    from common.engine_cache import EngineCache
    from common.errors import RuntimeFailure
    cache = tmp_path / "cache"
    monkeypatch.setattr(tf, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    build = _Build(full=cache)
    real = build.__call__

    def everywhere_full(target):
        build.full = Path(target).parent
        real(target)
    with pytest.raises(RuntimeFailure) as ei:
        EngineCache(cache).get_or_build("k" * 32, ".onnx", everywhere_full, {})
    assert ei.value.exit_code == 3 and str(cache) in str(ei.value) and "errno 28 ENOSPC" in str(ei.value)


def test_build_permission_fault_is_not_blamed_on_the_cache(tmp_path):
    """A permission fault raised by the build itself (reading its input) is its own error, not a cache fallback."""
    from common.engine_cache import EngineCache
    build = _Build(full=tmp_path / "cache", fail_errno=errno.EACCES)
    with pytest.raises(PermissionError):
        EngineCache(tmp_path / "cache").get_or_build("k" * 32, ".onnx", build, {})
    assert len(build.targets) == 1


# --- item 8: no empty .lock stays in the cache ------------------------------------------------------------------

def test_no_lock_file_stays_after_a_build_or_a_failed_one(tmp_path):
    from common.engine_cache import EngineCache
    cache = EngineCache(tmp_path / "cache")
    engine, hit = cache.get_or_build("a" * 32, ".onnx", _Build(), {})
    assert not hit and sorted(p.name for p in cache.root.iterdir()) == ["a" * 32 + ".json", "a" * 32 + ".onnx"]

    def broken(target):
        raise ValueError("the converter failed")
    with pytest.raises(ValueError):
        cache.get_or_build("b" * 32, ".onnx", broken, {})
    assert not any(p.suffix == ".lock" for p in cache.root.iterdir())
    assert cache.get_or_build("a" * 32, ".onnx", _Build(), {}) == (engine, True)


# --- item 8: a FIFO named .jpg; the performance run's interrupt message ---------------------------------------

def test_fifo_named_jpg_is_not_a_regular_file_not_missing(env, tmp_path):
    import shutil
    from common.data.coco import image_items, read_annotations
    from common.errors import InputError
    coco = tmp_path / "coco"
    shutil.copytree(env["coco"], coco)
    ann = read_annotations(coco / "annotations" / "instances_val2017.json")
    victim = coco / "images" / "val2017" / ann["images"][3]["file_name"]
    victim.unlink()
    os.mkfifo(victim)
    with pytest.raises(InputError) as ei:
        image_items(ann, coco / "images" / "val2017")
    msg = str(ei.value)
    assert "not regular files" in msg and str(victim) in msg and "FIFO" in msg and "missing" not in msg, msg
    assert ei.value.exit_code == 2


@pytest.mark.parametrize("command", ["performance", "accuracy"])
def test_interrupt_message_fits_the_command(env, tmp_path, monkeypatch, capsys, command):
    from common import cli

    def interrupted(cfg, publish=None):
        raise KeyboardInterrupt
    monkeypatch.setattr(cli, "run_performance" if command == "performance" else "run_accuracy", interrupted)
    code = cli.main([command, "--model", str(env["spec"]), "--onnx", str(env["onnx"]), "--dataset-dir",
                     str(env["coco"]), "--results-dir", str(tmp_path / "res")])
    err = capsys.readouterr().err
    assert code == 130
    if command == "performance":
        assert "accuracy" not in err and "resume" not in err and "keeps nothing" in err, err
    else:
        assert "resumes from its finished batches" in err, err


# --- item 4: annotation files that silently changed the AP ----------------------------------------------------

def _copy_coco(env, tmp_path, edit):
    import shutil
    coco = tmp_path / "coco"
    shutil.copytree(env["coco"], coco)
    ann_file = coco / "annotations" / "instances_val2017.json"
    data = json.loads(ann_file.read_text())
    edit(data)
    ann_file.write_text(json.dumps(data))
    return coco, ann_file


def test_one_file_under_two_image_ids_is_refused(env, tmp_path):
    from common.data.coco import read_annotations
    from common.errors import InputError

    def dup(data):
        twin = dict(data["images"][2], id=99999)   # the same file listed again under a new id
        twin["file_name"] = "./" + twin["file_name"]
        data["images"].append(twin)
    coco, ann_file = _copy_coco(env, tmp_path, dup)
    with pytest.raises(InputError) as ei:
        read_annotations(ann_file)
    msg = str(ei.value)
    assert str(ann_file) in msg and "id 99999" in msg and "evaluated twice" in msg, msg
    assert ei.value.exit_code == 2


def test_zero_area_ground_truth_box_is_dropped_with_a_warning(env, tmp_path, capsys):
    """Detections equal to every real ground-truth box score AP 1; a planted zero-width box beside them can never
    be matched and, kept, lowered AP and AR (one miss more)."""
    import numpy as np
    from common.data.coco import read_annotations
    from common.evaluate.metrics import CocoEvaluator, coco_metrics

    def zero(data):
        gt = next(a for a in data["annotations"] if a["category_id"] == 1)
        data["annotations"].append(dict(gt, id=777777, bbox=[gt["bbox"][0], gt["bbox"][1], 0.0, gt["bbox"][3]]))
    coco, ann_file = _copy_coco(env, tmp_path, zero)
    capsys.readouterr()
    ann = read_annotations(ann_file)
    err = capsys.readouterr().err
    assert f"warning: {ann_file}: 1 ground-truth box(es) of zero width or height dropped" in err, err
    assert "777777" in err
    real = [a for a in json.loads(ann_file.read_text())["annotations"] if a["id"] != 777777]
    rows = np.array([[a["image_id"], *a["bbox"], 1.0, a["category_id"]] for a in real], np.float64)
    image_ids = [im["id"] for im in ann["images"]]
    cats = sorted({a["category_id"] for a in real})
    assert coco_metrics(ann, rows, image_ids, cats)["AP"] == pytest.approx(1.0)   # pycocotools
    ev = CocoEvaluator(ann, tuple(range(91)), cats, None, source=ann_file)      # the default engine
    xyxy = rows[:, 1:5].copy()
    xyxy[:, 2:] += xyxy[:, :2]
    ev.add(rows[:, 0].astype(np.int64), xyxy, rows[:, 5], rows[:, 6].astype(np.int64))
    ev.complete(image_ids)
    m = ev.evaluate(image_ids)
    assert m["AP"] == pytest.approx(1.0) and m["AR100"] == pytest.approx(1.0)
