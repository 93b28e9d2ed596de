"""Acceptance of image-sharded accuracy runs (issue 29, docs/scale-out.md). Prints, measured in this one run:

1. the unsharded accuracy run (ONNX Runtime, CPU) over every image;
2. 4 shards run in the order 4, 3, 2, 1 (each its own process and results dir), merged: 12 stats identical?
3. the same 4 shards merged with their dirs given in reverse (and shuffled) order: identical?
4. shard 2 SIGKILLed mid-run (once its first batches are saved), rerun (it resumes), merged: identical?
5. --devices 0,1 on 2 simulated IGIE devices (tests/sim_igie: IGIE's API on ONNX Runtime), one merged record:
   identical?
and, for contrast, the mean of the 4 shards' own APs (what a merge never does) against the merged AP.

    python scripts/bench_sharding.py --onnx ../shared/data/models/rtmdet-nano-person/rtmdet_nano.onnx \
        --images-dir /work/fullscale-person/images/val2017 \
        --ann /work/fullscale-person/annotations/instances_val2017_person_subset350.json

Each run is the real command line (`scripts/suite accuracy ...`), with --preflight 0 (the pre-flight is the same in
every run and is not what is measured here).
"""
from __future__ import annotations

import json
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
import ixuca_suite  # noqa: E402,F401  the one bootstrap: sys.path, the repo's .venv (scripts/ixuca_suite.py)
from common.harness.benchmarking import benchmark_parser, scratch_dir  # noqa: E402

SUITE = ROOT / "scripts" / "suite"
SIM = ROOT / "tests" / "sim_igie"
STATS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
KILL_WAIT_S = 1800


def _env(extra=None) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CI_NODE_", "SLURM_ARRAY_"))}
    env["PYTHON"] = sys.executable
    env.update(extra or {})
    return env


def _suite(args, env=None, check=True) -> tuple[float, subprocess.CompletedProcess]:
    t0 = time.perf_counter()
    r = subprocess.run([str(SUITE), *map(str, args)], capture_output=True, text=True, env=_env(env))
    if check and r.returncode != 0:
        sys.exit(f"failed ({r.returncode}): {' '.join(map(str, args))}\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
    return time.perf_counter() - t0, r


def _record(results_dir: Path) -> dict:
    paths = sorted(results_dir.glob("2*_accuracy.json"))
    return json.loads(paths[-1].read_text())


def _same(a: dict, b: dict) -> str:
    diff = [f"{s} {a[s]:.6f} vs {b[s]:.6f}" for s in STATS if a[s] != b[s]]
    return "IDENTICAL (all 12 stats equal)" if not diff else "DIFFERENT: " + ", ".join(diff)


def main():
    ap = benchmark_parser(__doc__)
    ap.add_argument("--shards", type=int, default=4, help="shards of the sharded runs (default 4)")
    args = ap.parse_args()
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor())
    print(f"machine: {cpu}, {os.cpu_count()} cores (shared with other work: wall times are indicative only)")
    n = args.shards
    with scratch_dir("bench_sharding_", args.keep) as tmp:
        base = ["accuracy", "--model", args.model, "--onnx", args.onnx, "--images-dir", args.images_dir,
                "--ann", args.ann, "--preflight", "0", "--no-progress", "--cache-dir", tmp / "engines"]
        wall, _ = _suite([*base, "--results-dir", tmp / "whole"])
        whole = _record(tmp / "whole")
        m = whole["metrics"]
        print(f"1. unsharded: {whole['dataset']['num_images']} images, {whole['num_detections']} detections, "
              f"AP {m['AP']:.4f} AP50 {m['AP50']:.4f}, {wall:.1f} s")

        dirs = {}
        t_all = 0.0
        for k in range(n, 0, -1):
            dirs[k] = tmp / f"shard{k}"
            w, r = _suite([*base, "--shard", f"{k}/{n}", "--results-dir", dirs[k]])
            t_all += w
            print(f"   shard {k}/{n}: {r.stdout.splitlines()[0]} ({w:.1f} s)")
        w, r = _suite(["merge", *[dirs[k] for k in range(1, n + 1)], "--results-dir", tmp / "merged"])
        merged = _record(tmp / "merged")
        print(f"2. {n} shards run in the order {n}..1 ({t_all:.1f} s in all), merged ({w:.1f} s): "
              f"{_same(m, merged['metrics'])}; detections {merged['num_detections']} vs {whole['num_detections']}")

        order = [dirs[k] for k in range(n, 0, -1)]
        _, r = _suite(["merge", *order, "--results-dir", tmp / "merged_rev"])
        rev = _record(tmp / "merged_rev")
        shuffled = [dirs[k] for k in ([2, 4, 1, 3] if n == 4 else range(n, 0, -1))]
        _, r = _suite(["merge", *shuffled, "--results-dir", tmp / "merged_shuf"])
        shuf = _record(tmp / "merged_shuf")
        print(f"3. merged with the dirs in reverse order: {_same(m, rev['metrics'])}; "
              f"in the order {[d.name for d in shuffled]}: {_same(m, shuf['metrics'])}")

        # 4: shard 2 again in a fresh dir, SIGKILLed once its first batches are saved, then rerun (it resumes)
        killed = tmp / "shard2_killed"
        proc = subprocess.Popen([str(SUITE), *map(str, base), "--shard", f"2/{n}", "--results-dir", killed,
                                 "--checkpoint-interval", "0"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                env=_env(), start_new_session=True)
        state = killed / ".run-state"
        deadline = time.monotonic() + KILL_WAIT_S
        while not (state.is_dir() and len(list(state.rglob("*.npz"))) >= 20):
            if proc.poll() is not None or time.monotonic() > deadline:
                sys.exit("4. the shard ended (or did not start) before it could be killed")
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)
        code = proc.wait()
        saved = len(list(state.rglob("*.npz")))
        w, r = _suite([*base, "--shard", f"2/{n}", "--results-dir", killed])
        rec = json.loads(next(killed.glob("shard-*.json")).read_text())
        _, r = _suite(["merge", *[killed if k == 2 else dirs[k] for k in range(1, n + 1)],
                       "--results-dir", tmp / "merged_kill"])
        kill = _record(tmp / "merged_kill")
        print(f"4. shard 2/{n} SIGKILLed (exit {code}) after {saved} saved batches, rerun ({w:.1f} s, resumed "
              f"{rec['run']['resumed_images']} of {rec['dataset']['num_images']} images), merged: "
              f"{_same(m, kill['metrics'])}")

        # 5: two simulated IGIE devices
        sim_env = {"PYTHONPATH": f"{SIM}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
        sim = [*base, "--backend", "igie"]
        w1, _ = _suite([*sim, "--results-dir", tmp / "igie_one"], env=sim_env)
        one = _record(tmp / "igie_one")
        w2, r = _suite([*sim, "--devices", "0,1", "--results-dir", tmp / "igie_two"], env=sim_env)
        two = _record(tmp / "igie_two")
        print(f"5. --devices 0,1 (simulated IGIE, {w2:.1f} s) vs one simulated device ({w1:.1f} s): "
              f"{_same(one['metrics'], two['metrics'])}; vs the ONNX Runtime run: {_same(m, two['metrics'])}; "
              f"shards on $SUITE_GPU_INDEX {[s['gpu_index'] for s in two['merged_from']]}")

        from common.data.coco import read_annotations
        from common.evaluate.metrics import coco_metrics
        from common.harness.shards import find_shards
        ann = read_annotations(args.ann, polygons=False)
        shards, _ = find_shards([dirs[k] for k in range(1, n + 1)])
        aps = []
        for s in sorted(shards, key=lambda s: s.index):
            ids = sorted(int(i) for i in set(s.rows()[:, 0].astype(int)))
            first, last = s.record["shard"]["first"], s.record["shard"]["last"]
            all_ids = sorted(int(im["id"]) for im in ann["images"])[first - 1:last]
            aps.append(coco_metrics(ann, s.rows(), all_ids or ids, [1], "faster-coco-eval")["AP"])
        mean = sum(aps) / len(aps)
        print(f"   for contrast, the mean of the {n} shards' own APs: {mean:.4f} vs the merged AP {m['AP']:.4f} "
              f"({mean - m['AP']:+.4f}): never what a merge reports")


if __name__ == "__main__":
    main()
