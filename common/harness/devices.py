"""`--devices 0,1,...`: one accuracy run spread over the accelerator cards of one node (docs/scale-out.md).

One worker process per device, each with its own engine and $SUITE_GPU_INDEX, runs one image shard
(common/harness/shards.py) into <results-dir>/devices/<J>-of-<M>/; once all have finished, their detections are
merged and evaluated once (common/harness/merge.py) into one accuracy record in <results-dir>, and the worker dirs
are removed. A worker that dies fails the run naming its device; the shards that finished stay, and the same
command run again starts only the missing ones (a killed worker's own finished batches are resumed too).

With a node shard K/N as well (--shard or the CI variables), the node's D workers run shards (K-1)*D+1..K*D of
N*D and no merge happens here: `scripts/suite merge` over every node's results dir joins them.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from common import BOOTSTRAP
from common.config.options import SHARD_ENV, RunConfig, parse_devices, parse_shard, to_flags
from common.errors import ConfigError, RuntimeFailure
from common.harness.merge import merge_shards
from common.harness.requests import outputs_request, parallelism, request_key
from common.harness.runs import check_outputs
from common.harness.shards import SHARD_KIND
from common.runtime.backends import backend_class

DEVICES_DIR = "devices"
POLL_S = 0.2
STOP_WAIT_S = 30.0


@dataclasses.dataclass
class Worker:
    device: int
    index: int  # its shard index of `total`
    total: int
    cfg: RunConfig
    dir: Path
    proc: subprocess.Popen | None = None
    reused: bool = False

    @property
    def name(self) -> str:
        """How messages name this worker: its device and its shard."""
        return f"device {self.device} (shard {self.index}/{self.total})"

    def finished_record(self) -> dict | None:
        """This shard's record when a worker of the same request already wrote it (then it is not run again)."""
        for path in self.dir.glob(f"shard-{self.index}-of-{self.total}.*.json"):
            try:
                record = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError):
                continue
            if (
                record.get("kind") == SHARD_KIND
                and record.get("shard", {}).get("request") == request_key(self.cfg)
                and (self.dir / record["shard"].get("detections", "")).is_file()
            ):
                return record
        return None


def _workers_per_device(cfg: RunConfig, count: int) -> int:
    """The decoding processes each worker gets: the node's, shared out."""
    streams, workers = parallelism(cfg.streams, cfg.workers, backend_class(cfg.backend).capabilities)
    return cfg.workers if cfg.workers is not None else max(0 if workers == 0 else 1, workers // count)


def plan(cfg: RunConfig) -> list[Worker]:
    """One worker per device of `cfg.devices`, each with its shard, its own results dir and its share of decoders."""
    if cfg.devices is None:
        raise ConfigError("--devices is not set: nothing to spread the run over")
    devices = parse_devices(cfg.devices)
    d = len(devices)
    if cfg.shard:
        k, n = parse_shard(cfg.shard)
        first, total = (k - 1) * d + 1, n * d
    else:
        first, total = 1, d
    root = Path(cfg.results_dir) / DEVICES_DIR
    per = _workers_per_device(cfg, d)
    out = []
    for i, device in enumerate(devices):
        j = first + i
        wdir = root / f"{j}-of-{total}"
        wcfg = dataclasses.replace(
            cfg,
            devices=None,
            shard=f"{j}/{total}",
            results_dir=str(wdir),
            progress=False,
            detections_out=None,
            workers=per,
        )
        out.append(Worker(device, j, total, wcfg, wdir))
    return out


def _env(device: int) -> dict:
    # the worker's shard is its flag, and it runs on its one device (never fans out again)
    env = {k: v for k, v in os.environ.items() if k not in SHARD_ENV and k != "SUITE_DEVICES"}
    env["SUITE_GPU_INDEX"] = str(device)
    return env


def _start(w: Worker, echo):
    w.dir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, str(BOOTSTRAP), "accuracy", *to_flags(w.cfg, "accuracy")]
    log = open(w.dir / "worker.log", "w", encoding="utf-8")
    try:
        log.write(f"$ SUITE_GPU_INDEX={w.device:d} {' '.join(cmd)}\n")
        log.flush()
        w.proc = proc = subprocess.Popen(
            cmd,
            env=_env(w.device),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    finally:
        log.close()
    (w.dir / "worker.pid").write_text(f"{proc.pid}\n")
    echo(f"{w.name}: started, pid {proc.pid}, log {w.dir / 'worker.log'}")


def _stop(workers: list[Worker]):
    """SIGTERM every running worker (each keeps its finished batches for the rerun), SIGKILL if one lingers."""
    running = [w.proc for w in workers if w.proc is not None and w.proc.poll() is None]
    for proc in running:
        os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_WAIT_S
    for proc in running:
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _how(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def _last_error(w: Worker) -> str:
    try:
        lines = [ln for ln in (w.dir / "worker.log").read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    err = next((ln for ln in reversed(lines) if ln.startswith("error:")), "")
    return f": {err[:300]}" if err else ""


def run_on_devices(cfg: RunConfig, publish=None, echo=print) -> dict:
    """The accuracy run of `cfg` over `cfg.devices`: the merged accuracy record (or, under a node shard, the
    node's shard summary); `publish(record)` as in run_accuracy."""
    if cfg.record_outputs:
        raise ConfigError(
            "--record-outputs with --devices: a recording is made by one process over every image; "
            "run it without --devices"
        )
    check_outputs(outputs_request(cfg), accuracy=True)
    workers = plan(cfg)
    root = Path(cfg.results_dir) / DEVICES_DIR
    if root.is_dir():  # another split's leftovers must not be merged with this one's
        keep = {w.dir.name for w in workers}
        for stale in root.iterdir():
            if stale.name not in keep:
                shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink()
    for w in workers:
        if w.finished_record() is not None:
            w.reused = True
            echo(f"{w.name}: already finished by an earlier run of this command, not run again")
    try:
        for w in workers:
            if not w.reused:
                _start(w, echo)
        while any(w.proc is not None and w.proc.poll() is None for w in workers):
            time.sleep(POLL_S)
    except BaseException:
        _stop(workers)
        raise
    failed: list[tuple[Worker, int]] = []
    for w in workers:
        if w.reused:
            continue
        assert w.proc is not None, "every worker not reused was started above"
        code = w.proc.returncode
        # 0, or 1 with its shard record (an output fault, judged on the merged record): the shard is there
        if code in (0, 1) and w.finished_record() is not None:
            echo(f"{w.name}: finished")
        else:
            failed.append((w, code))
            echo(f"{w.name}: FAILED ({_how(code)}){_last_error(w)}")
    if failed:
        what = "; ".join(f"{w.name} {_how(code)}{_last_error(w)} (log {w.dir / 'worker.log'})" for w, code in failed)
        rerun = ", ".join(f"{w.index}/{w.total}" for w, _ in failed)
        if all(code == 2 for _, code in failed):
            raise ConfigError(f"--devices: {what}")
        raise RuntimeFailure(
            f"--devices: worker failed: {what}; the finished shards are kept: run the same command "
            f"again to run only shard(s) {rerun}"
        )
    records = []
    for w in workers:
        finished = w.finished_record()
        if finished is None:  # checked above; only a file removed meanwhile gets here
            raise RuntimeFailure(f"--devices: {w.name}: its shard record vanished from {w.dir} after it finished")
        records.append(finished)
    if cfg.shard:
        return _node_summary(cfg, cfg.shard, workers, records)
    record = merge_shards([w.dir for w in workers], evaluator=cfg.evaluator, detections_out=cfg.detections_out)
    record["devices"] = [
        {"device": w.device, "shard": f"{w.index}/{w.total}", "reused": w.reused, "wall_s": r["run"]["wall_s"]}
        for w, r in zip(workers, records)
    ]
    if publish is not None:
        publish(record)
    shutil.rmtree(root, ignore_errors=True)  # merged and written: a rerun measures afresh
    return record


def _node_summary(cfg: RunConfig, shard: str, workers: list[Worker], records: list[dict]) -> dict:
    """What a node that ran its devices' shards of node shard `shard` prints: its shards stay for the merge."""
    k, n = parse_shard(shard)
    summary = dict(records[0])
    reasons = [r for rec in records for r in rec["reasons"]]
    summary.update(
        shard={**records[0]["shard"], "index": k, "total": n, "source": cfg.shard_source or "--shard"},
        dataset={**records[0]["dataset"], "num_images": sum(r["dataset"]["num_images"] for r in records)},
        num_detections=sum(r["num_detections"] for r in records),
        run={"wall_s": max(r["run"]["wall_s"] for r in records)},
        reasons=reasons,
        verdict="fail" if reasons else "unchecked",
        path=f"{Path(cfg.results_dir) / DEVICES_DIR} (shards {workers[0].index}..{workers[-1].index} of "
        f"{workers[0].total}, one per device)",
    )
    return summary
