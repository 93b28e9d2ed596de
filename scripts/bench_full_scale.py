#!/usr/bin/env python3
"""Memory, disk and speed of the harness at full val2017 scale (issue 29): every figure as a ratio measured in this
one run, on 5000-image sets built by datasets/full_scale.py.

A. input cache for the 80-class set at 640x640 (RT-DETR's input): its size on disk, stated and measured
   (target <= 7 GB), and how long it took to build.
B. peak RSS of a 5000-image run with 300 detections per image over 80 classes (RT-DETR's output, replayed from a
   recording of RT-DETR-like outputs: jittered ground-truth boxes plus random queries, random logits), input cache,
   with and without --save-detections (target <= 1.5 GB with it); the detections file's time inside run.wall_s.
C. a simulated 2627 images/s device (--backend replay --replay-fps, input cache, batch 32) on the person set with
   RTMDet-nano's recorded outputs: wall / device time (target <= 1.10), with the evaluation's tail.
D. the whole 5000-image accuracy run (the suite's process, real inference) against a bare process doing the same
   per-image work (scripts/serial_reference.py --floor-threads N --evaluate: interpreter, imports, one session,
   decode, preprocess, inference, faster-coco-eval), alternated side by side (target <= 1.10).
E. replay without the input cache (decoding workers, evaluation included) against the decode limit: one process per
   core doing cv2.imread + resize over its share of the same files, all running at once (target >= 0.75).

    python scripts/bench_full_scale.py --person /work/fullscale-person --eighty /work/fullscale-80 \\
        --onnx ../shared/data/models/rtmdet-nano-person/rtmdet_nano.onnx

The machine's load average is printed at the start and the end and beside each figure: on a shared host only
ratios measured side by side mean anything.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
import ixuca_suite  # noqa: E402,F401  the one bootstrap: sys.path, the repo's .venv (scripts/ixuca_suite.py)
from common.harness.benchmarking import add_keep_flag, scratch_dir  # noqa: E402

import numpy as np  # noqa: E402

from common.config.specs import load_model  # noqa: E402
from common.data.coco import image_items, read_annotations  # noqa: E402
from common.data.input_cache import InputCache  # noqa: E402
from common.data.loader import open_loader  # noqa: E402
from common.data.preprocess import Preprocessor  # noqa: E402
from common.runtime.replay import OutputRecorder  # noqa: E402

SUITE = str(ROOT / "scripts" / "suite")


def load() -> str:
    return f"load {os.getloadavg()[0]:.1f}"


def the_set(root: str) -> tuple[str, str]:
    """(images dir, annotation file) of a set written by datasets/full_scale.py."""
    anns = sorted((Path(root) / "annotations").glob("*.json"))
    if len(anns) != 1:
        sys.exit(f"{root}: expected one annotation file under annotations/, found {len(anns)}")
    return str(Path(root) / "images" / "val2017"), str(anns[0])


CPU_S: list = []   # CPU seconds (user + system) of each run_child command, its reaped children included


def run_child(cmd: list[str], env: dict | None = None) -> tuple[float, int, int, str]:
    """(wall s, peak RSS bytes of the process itself, exit code, stderr tail) of a command; its CPU seconds
    are appended to CPU_S (less sensitive to the host's other load than the wall time)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    err = proc.stderr.read().decode(errors="replace")
    proc.stderr.close()
    proc.returncode = os.waitstatus_to_exitcode(status)
    CPU_S.append(usage.ru_utime + usage.ru_stime)
    return wall, usage.ru_maxrss * 1024, proc.returncode, err[-1500:]


def record_of(results_dir: Path) -> dict:
    files = sorted(results_dir.rglob("*.json"), key=lambda p: p.stat().st_mtime)
    records = [json.loads(p.read_text()) for p in files if p.parent.name != ".run-state"]
    return [r for r in records if isinstance(r, dict) and r.get("kind") == "accuracy"][-1]


def rtdetr_like_recording(ann: dict, items, variant, onnx_sha256: str, out: Path, seed: int = 0):
    """RT-DETR outputs (logits [300, 80], normalised cxcywh pred_boxes [300, 4]) for every image: one query per
    ground-truth box (jittered, its class's logit high), the rest random boxes; random logits elsewhere, so that
    the top-300 (query, class) pairs over 300 x 80 all pass the 0.01 floor: 300 detections per image."""
    rng = np.random.default_rng(seed)
    to_label = {c: i for i, c in enumerate(variant.label_map)}
    boxes_of: dict = {}
    for a in ann["annotations"]:
        boxes_of.setdefault(a["image_id"], []).append((a["bbox"], to_label.get(a["category_id"])))
    rec = OutputRecorder(out, onnx_sha256, variant.preprocess.key(variant.height, variant.width))
    chunk = 100
    for s in range(0, len(items), chunk):
        part = items[s:s + chunk]
        logits = rng.normal(-3.0, 1.0, (len(part), 300, 80)).astype(np.float32)
        boxes = np.concatenate([rng.uniform(0.1, 0.9, (len(part), 300, 2)),
                                rng.uniform(0.02, 0.5, (len(part), 300, 2))], axis=2).astype(np.float32)
        for k, it in enumerate(part):
            for q, ((x, y, w, h), label) in enumerate(boxes_of.get(it.image_id, [])[:300]):
                if label is None:
                    continue
                jitter = rng.normal(1.0, 0.05, 4)
                boxes[k, q] = ((x + w / 2) / it.width * jitter[0], (y + h / 2) / it.height * jitter[1],
                               w / it.width * jitter[2], h / it.height * jitter[3])
                logits[k, q, label] = rng.normal(2.0, 1.0)
        rec.add(np.array([it.image_id for it in part]), {"logits": logits, "pred_boxes": boxes})
    rec.write()


def decode_share(files: list[str], height: int, width: int, conn):
    import cv2
    for path in files:
        img = cv2.imread(path)
        h, w = img.shape[:2]
        r = min(height / h, width / w)
        cv2.resize(img, (int(round(w * r)), int(round(h * r))), interpolation=cv2.INTER_LINEAR)
    conn.send(time.perf_counter())
    conn.close()


def decode_limit(files: list[str], pre: Preprocessor, cores: int) -> float:
    """Images/s of one decoding process per core, all at once, each over its share of the files."""
    import multiprocessing as mp
    ctx = mp.get_context("fork")
    pipes, procs = [], []
    t0 = time.perf_counter()
    for i in range(cores):
        parent, child = ctx.Pipe(duplex=False)
        p = ctx.Process(target=decode_share, args=(files[i::cores], pre.height, pre.width, child))
        p.start()
        pipes.append(parent)
        procs.append(p)
    ends = [c.recv() for c in pipes]
    for p in procs:
        p.join()
    return len(files) / (max(ends) - t0)


def suite_cmd(model: str, onnx: str, images: str, ann: str, results: Path, *extra) -> list[str]:
    """An accuracy run without the bootstrap intervals (--bootstrap 0): the per-image work the figures compare
    (their own cost is printed with figure C)."""
    return [SUITE, "accuracy", "--model", model, "--onnx", onnx, "--images-dir", images, "--ann", ann,
            "--results-dir", str(results), "--no-progress", "--no-resume", "--preflight", "0", "--bootstrap", "0",
            *map(str, extra)]


def main():
    import argparse
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--person", required=True, help="full_scale.py set with person annotations (RTMDet-nano)")
    ap.add_argument("--eighty", required=True, help="full_scale.py set with 80-class annotations (RT-DETR-like)")
    ap.add_argument("--onnx", required=True, help="RTMDet-nano person ONNX")
    ap.add_argument("--repeats", type=int, default=2, help="alternated repeats of figures C, D, E (default 2)")
    ap.add_argument("--device-fps", type=float, default=2627.0)
    ap.add_argument("--rss-bs", type=int, default=8, help="batch size of figure B (default 8)")
    ap.add_argument("--work", help="scratch directory (default: a temporary one); must hold ~7 GB")
    ap.add_argument("--only", default="ABCDE", help="figures to run (default ABCDE)")
    add_keep_flag(ap)
    a = ap.parse_args()
    if a.work:
        Path(a.work).mkdir(parents=True, exist_ok=True)
        run(a, Path(a.work))
    else:
        with scratch_dir("bench-full-", a.keep) as work:
            run(a, work)


def run(a, work: Path):
    cores = os.cpu_count() or 1
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               "?")
    print(f"{cores} cores ({cpu}); {load()} at start; the host is shared: compare only figures of this run",
          flush=True)
    engines = str(work / "engines")

    if "A" in a.only or "B" in a.only:
        images80, ann80 = the_set(a.eighty)
        rtdetr = load_model("rtdetr").variant()
        pre80 = Preprocessor(rtdetr.preprocess, rtdetr.height, rtdetr.width)
        ann = read_annotations(ann80, polygons=False)
        items80 = image_items(ann, Path(images80))
        cache80 = work / "inputs-640"
        t0 = time.perf_counter()
        entry = InputCache(cache80, items80, pre80)
        stated, hit = entry.nbytes, entry.lookup() is not None
        if not hit:  # built by the loader's own worker processes, as a run builds it
            with open_loader(items80, pre80, 32, workers=cores, cache_dir=str(cache80)) as building:
                for _ in building:
                    pass
        build_s = time.perf_counter() - t0
        on_disk = sum(p.stat().st_blocks * 512 for p in cache80.iterdir())
        print(f"A. input cache, {len(items80)} images at {rtdetr.height}x{rtdetr.width}: stated {stated / 1e9:.2f} GB, "
              f"on disk {on_disk / 1e9:.2f} GB (target <= 7 GB; float32 inputs would be {4 * stated / 1e9:.1f} GB); "
              f"{'already built' if hit else f'built in {build_s:.0f} s with {cores} workers'}; {load()}", flush=True)

    if "B" in a.only:
        onnx80 = work / "rtdetr-like.onnx"  # the replay backend serves the recording; the file only names the model
        onnx80.write_bytes(b"replay only: RT-DETR-like outputs of scripts/bench_full_scale.py\n")
        from common.engine_cache import file_sha256
        rec80 = work / "rec-rtdetr"
        if not rec80.exists():
            rtdetr_like_recording(ann, items80, rtdetr, file_sha256(onnx80), rec80)
        rows = []
        for save in (False, True):
            res = work / f"rss-{int(save)}"
            cmd = suite_cmd("rtdetr", str(onnx80), images80, ann80, res, "--backend", "replay", "--replay-dir", rec80,
                            "--input-cache", cache80, "--bs", a.rss_bs, "--cache-dir", engines)
            if save:
                cmd += ["--save-detections", str(work / "dets80.json")]
            wall, rss, code, err = run_child(cmd)
            if code not in (0, 1):
                sys.exit(f"figure B run failed ({code}): {err}")
            r = record_of(res)
            rows.append((save, wall, rss, r))
        (_, w0, rss0, r0), (_, w1, rss1, r1) = rows
        dets_mb = (work / "dets80.json").stat().st_size / 1e6
        print(f"B. {r1['dataset']['num_images']} images, {r1['num_detections']} detections "
              f"({r1['num_detections'] / r1['dataset']['num_images']:.0f} per image, 80 classes), --bs {a.rss_bs}, "
              f"input cache: peak RSS {rss1 / 1e9:.2f} GB with --save-detections ({dets_mb:.0f} MB file; target <= 1.5 GB), "
              f"{rss0 / 1e9:.2f} GB without; run.wall_s {r1['run']['wall_s']:.1f} s with, {r0['run']['wall_s']:.1f} s "
              f"without (process {w1:.1f} / {w0:.1f} s); after the last batch {r0['run']['tail_s']:.2f} s without "
              f"(evaluation {r0['run']['evaluate_s']:.2f} s), {r1['run']['tail_s']:.2f} s with, of which the file's "
              f"{r1['run']['save_detections_tail_s']:.2f} s, inside run.wall_s; {load()}", flush=True)

    images, annp = the_set(a.person)
    rec = work / "rec-person"
    rtmdet = load_model("rtmdet").variant()
    pre = Preprocessor(rtmdet.preprocess, rtmdet.height, rtmdet.width)
    items = image_items(read_annotations(annp, polygons=False), Path(images))
    files = [it.path for it in items]
    if any(f in a.only for f in "CDE") and not rec.exists():
        # RTMDet-nano's real outputs on the 5000 images, recorded once for the replay figures
        t0 = time.perf_counter()
        _, _, code, err = run_child(suite_cmd("rtmdet", a.onnx, images, annp, work / "rec-run", "--record-outputs",
                                              rec, "--cache-dir", engines))
        if code not in (0, 1):
            sys.exit(f"recording run failed ({code}): {err}")
        print(f"   (recorded RTMDet-nano's outputs on {len(items)} images in {time.perf_counter() - t0:.0f} s)",
              flush=True)
    replay = ("--backend", "replay", "--replay-dir", rec, "--cache-dir", engines)

    if "C" in a.only:
        cache = work / "inputs-320"
        cmd = suite_cmd("rtmdet", a.onnx, images, annp, work / "sim", *replay, "--input-cache", cache, "--bs", 32,
                        "--replay-fps", a.device_fps, "--workers", 1, "--streams", 2)
        run_child(cmd)  # builds the input cache
        sims = []
        for _ in range(max(3, a.repeats)):
            _, _, code, err = run_child(cmd)
            if code not in (0, 1):
                sys.exit(f"figure C run failed ({code}): {err}")
            sims.append(dict(record_of(work / "sim")["run"], cpu_s=CPU_S[-1]))
        _, _, code, err = run_child(cmd[:cmd.index("--bootstrap")] + cmd[cmd.index("--bootstrap") + 2:])
        with_ci = record_of(work / "sim")["run"]
        best = min(sims, key=lambda r: r["wall_s"] / r["simulated_device_s"])
        every = ", ".join(f"{r['wall_s'] / r['simulated_device_s']:.3f}" for r in sims)
        print(f"C. simulated {a.device_fps:g} images/s device, batch 32, input cache, {len(items)} images: wall "
              f"{best['wall_s']:.2f} s vs device {best['simulated_device_s']:.2f} s: ratio "
              f"{best['wall_s'] / best['simulated_device_s']:.3f} (target <= 1.10; best of {len(sims)}, all "
              f"{every}); before the first inference {best['setup_s']:.2f} s, after the last batch {best['tail_s']:.2f} s "
              f"(evaluation {best['evaluate_s']:.2f} s), in between {(best['wall_s'] - best['setup_s'] - best['tail_s']) / best['simulated_device_s']:.3f} x the device time; the process's CPU {best['cpu_s']:.2f} s = "
              f"{best['cpu_s'] / best['simulated_device_s']:.2f} x the device time on {cores} cores; {load()}", flush=True)
        print(f"   with the default bootstrap intervals (--bootstrap 1000) the same run takes {with_ci['wall_s']:.2f} s, "
              f"{with_ci.get('bootstrap_s') or 0:.2f} s of it the bootstrap after the last batch", flush=True)

    if "D" in a.only:
        suite = suite_cmd("rtmdet", a.onnx, images, annp, work / "acc", "--bs", 1, "--cache-dir", engines)
        bare = [sys.executable, "-P", str(ROOT / "scripts" / "serial_reference.py"), "--onnx", a.onnx,
                "--images-dir", images, "--ann", annp, "--floor-threads", str(cores), "--evaluate"]
        suite_t, bare_t, loads, suite_c, bare_c = [], [], [], [], []
        for i in range(a.repeats):
            for what in (("suite", "bare") if i % 2 == 0 else ("bare", "suite")):
                loads.append(os.getloadavg()[0])
                wall, _, code, err = run_child(suite if what == "suite" else bare)
                if code not in (0, 1):
                    sys.exit(f"figure D {what} run failed ({code}): {err}")
                (suite_t if what == "suite" else bare_t).append(wall)
                (suite_c if what == "suite" else bare_c).append(CPU_S[-1])
        ratios = [s / b for s, b in zip(suite_t, bare_t)]
        print(f"D. whole-process accuracy run, {len(items)} images, real inference: suite "
              f"{' '.join(f'{t:.1f}' for t in suite_t)} s vs bare process (same per-image work, {cores} threads, "
              f"faster-coco-eval) {' '.join(f'{t:.1f}' for t in bare_t)} s: ratio per pair "
              f"{' '.join(f'{r:.3f}' for r in ratios)}, of the sums {sum(suite_t) / sum(bare_t):.3f} (target <= 1.10); "
              f"load {min(loads):.1f}-{max(loads):.1f}; CPU s suite {' '.join(f'{c:.1f}' for c in suite_c)} vs bare "
              f"{' '.join(f'{c:.1f}' for c in bare_c)}: ratio {sum(suite_c) / sum(bare_c):.3f}", flush=True)

    if "E" in a.only:
        limits, rates, loads, cpus = [], [], [], []
        for i in range(a.repeats):
            for what in (("limit", "replay") if i % 2 == 0 else ("replay", "limit")):
                loads.append(os.getloadavg()[0])
                if what == "limit":
                    limits.append(decode_limit(files, pre, cores))
                    continue
                _, _, code, err = run_child(suite_cmd("rtmdet", a.onnx, images, annp, work / "cold", *replay,
                                                      "--bs", 32, "--workers", cores, "--streams", 1))
                if code not in (0, 1):
                    sys.exit(f"figure E run failed ({code}): {err}")
                r = record_of(work / "cold")["run"]
                rates.append(len(items) / r["wall_s"])
                cpus.append(CPU_S[-1] / len(items))
        pairs = [r / lim for r, lim in zip(rates, limits)]
        print(f"E. replay without the input cache, {cores} decoding workers, batch 32, evaluation included: "
              f"{' '.join(f'{r:.0f}' for r in rates)} images/s vs the decode limit ({cores} processes cv2.imread + "
              f"resize at once over the same files) {' '.join(f'{lim:.0f}' for lim in limits)} images/s: ratio per "
              f"pair {' '.join(f'{p:.3f}' for p in pairs)} (target >= 0.75); load {min(loads):.1f}-{max(loads):.1f}; "
              f"CPU per image of the replay run (workers + parent) {' '.join(f'{c * 1e3:.2f}' for c in cpus)} ms",
              flush=True)
    print(f"{load()} at end")


if __name__ == "__main__":
    main()
