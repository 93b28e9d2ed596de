"""The shipped CI examples (ci/examples/*.yml) run as shipped on a runner that has only the shared data next to
its checkout: each YAML is parsed, its jobs are run in stage / dependency order with their own variables, and
every command of every job runs in a fresh copy of the repository, the way the CI system would, with small
limits appended to the regression commands (few images, one repeat, short timing, batch size 1, FP32, one runtime
thread) and a wide FPS band (this test checks the pipeline, not the speed of a loaded CPU).

Stand-ins, and only these: the install line (`pip install -r requirements.txt`) is skipped, the test's virtual
environment being linked as .venv; the MR-V100 runner's IGIE SDK is the test-only simulation in tests/sim_igie
(on PYTHONPATH); `actions/checkout` / `upload-artifact` are no-ops and `download-artifact` copies the shard
folders where the real one puts them.

GitLab: the first pipeline on a new device stops with exit 4 (strict: no baselines), the manual baseline-update
jobs store them, the next pipeline passes. GitHub Actions then passes against the same baselines."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from common.config.options import ENV
from helpers import copy_checkout

RUN_LIMITS = ("--bs 1 --precision fp32 --max-images 4 --repeats 1 --warmup 0.02 --min-duration 0.05 --min-iters 3 "
              "--workers 0 --threads 1 --timeout 300")
REPORT_LIMITS = "--fps-min-band 0.95 --fps-max-band 10 --jumps warn --no-plots"


def _with_limits(line: str) -> str:
    """Append the small limits to a regress.py command (before its `||` handler: the command's own flags come
    first, so the limits win)."""
    m = re.search(r"scripts/regress\.py (run|merge|report|baseline-update)\b", line)
    if not m:
        return line
    limits = (RUN_LIMITS + " " if m.group(1) == "run" else "") + REPORT_LIMITS
    head, sep, tail = line.partition(" || ")
    return f"{head} {limits}{sep}{tail}"


@pytest.fixture()
def runner(tmp_path, shared_data):
    """A CI runner's working copy: the repository's files (not its ignored outputs) in <root>/checkout and the
    shared data at <root>/shared/data, as the examples expect (../shared/data from the checkout)."""
    root = tmp_path / "runner"
    checkout = root / "checkout"
    copy_checkout(checkout)
    (root / "shared").mkdir()
    (root / "shared" / "data").symlink_to(shared_data)
    for device in (checkout / "baselines").iterdir():   # a new device: no baselines yet, whatever the clone holds
        if device.is_dir():
            shutil.rmtree(device)
    return checkout


def _base_env(checkout: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ENV and not k.startswith("REGRESS_")
           and k not in ("GITHUB_STEP_SUMMARY", "PYTHONPATH")}
    env["PYTHONPATH"] = str(checkout / "tests" / "sim_igie")     # the simulated IGIE SDK of the MR-V100 runner
    return env


def _expand(value: str, env: dict) -> str:
    return re.sub(r"\$\{?(\w+)\}?", lambda m: env.get(m.group(1), ""), str(value))


def _sh(line: str, checkout: Path, env: dict, log: list) -> int:
    line = _with_limits(line)
    proc = subprocess.run(["bash", "-c", line], cwd=checkout, env=env, capture_output=True, text=True,
                          timeout=900)
    log.append(f"$ {line}\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}[exit {proc.returncode}]")
    return proc.returncode


# --- GitLab ----------------------------------------------------------------------------------------------------------

def _gitlab_jobs(ci: dict) -> list[tuple[str, dict]]:
    """Jobs in stage order, `extends` resolved, `parallel: N` expanded into N jobs with CI_NODE_INDEX/TOTAL."""
    stages = ci.get("stages", ["test"])
    jobs = []
    for name, job in ci.items():
        if name.startswith(".") or not isinstance(job, dict) or "script" not in job:
            continue
        for parent in [job["extends"]] if isinstance(job.get("extends"), str) else job.get("extends", []):
            job = {**ci[parent], **job}
        n = job.get("parallel", 1)
        for k in range(1, n + 1):
            node = dict(job, node_vars={"CI_NODE_INDEX": str(k), "CI_NODE_TOTAL": str(n)} if n > 1 else {},
                        base_name=name)
            jobs.append((f"{name} {k}/{n}" if n > 1 else name, node))
    return sorted(jobs, key=lambda j: stages.index(j[1].get("stage", "test")))


def _run_gitlab(ci: dict, checkout: Path, pipeline: int, manual: bool, log: list) -> dict:
    results: dict = {}      # base job name -> worst exit code of its instances
    for name, job in _gitlab_jobs(ci):
        if (job.get("when") == "manual") != manual:
            continue
        needs = job.get("needs", [])
        if any(results.get(n, 0) != 0 for n in needs) and job.get("when") != "always":
            results[job["base_name"]] = "skipped"
            continue
        env = _base_env(checkout)
        env.update(CI_PIPELINE_ID=str(pipeline), **job["node_vars"])
        for key, val in {**ci.get("variables", {}), **job.get("variables", {})}.items():
            env[key] = _expand(val, env)
        code = 0
        for line in job.get("before_script", []) + job["script"]:
            if "pip install" in line:
                continue          # the test's virtual environment stands in for the install
            code = _sh(line, checkout, env, log)
            if code:
                break
        prev = results.get(job["base_name"], 0)
        results[job["base_name"]] = code if code else prev
    return results


# --- GitHub Actions ---------------------------------------------------------------------------------------------------

def _run_github(wf: dict, checkout: Path, run_id: int, log: list) -> dict:
    results: dict = {}
    order = ["cpu", "shard", "merge"]
    assert sorted(wf["jobs"]) == sorted(order)
    for name in order:
        job = wf["jobs"][name]
        shards = job.get("strategy", {}).get("matrix", {}).get("shard", [None])
        for shard in shards:
            env = _base_env(checkout)
            ctx = {"github.run_id": str(run_id), "github.run_attempt": "1", "matrix.shard": str(shard)}
            sub = lambda text: re.sub(r"\$\{\{\s*([\w.]+)\s*\}\}",  # noqa: E731
                                      lambda m: ctx.get(m.group(1), ""), text)
            for key, val in {**wf.get("env", {}), **job.get("env", {})}.items():
                env[key] = sub(str(val))
            failed = 0
            for step in job["steps"]:
                cond = str(step.get("if", ""))
                if "inputs.baseline_update" in cond:
                    continue          # workflow_dispatch input: false on a pull request
                if failed and "always()" not in cond:
                    continue
                uses = step.get("uses", "")
                if uses.startswith("actions/download-artifact"):
                    for d in sorted((checkout / "regress").glob("shard-*")):
                        dst = checkout / "shards" / f"regress-{d.name}" / d.name
                        shutil.copytree(d, dst, dirs_exist_ok=True)
                    continue
                if uses:
                    continue          # checkout / upload-artifact
                script = sub(step["run"]).replace("\\\n", " ")
                if "pip install" in script:
                    continue
                for line in filter(str.strip, script.splitlines()):
                    code = _sh(line, checkout, env, log)
                    if code:
                        failed = code
                        break
            results[name] = failed or results.get(name, 0)
    return results


@pytest.mark.slow
def test_shipped_ci_examples_run_as_shipped(runner):
    log: list = []
    try:
        gitlab = yaml.safe_load((runner / "ci/examples/gitlab-ci.yml").read_text())
        first = _run_gitlab(gitlab, runner, 1, manual=False, log=log)
        # a new device: strict mode stops the CPU job and the merge with exit 4, never a silent pass
        assert first == {"regress:cpu": 4, "regress:mr-v100": 0, "merge:mr-v100": 4}, first
        accepted = _run_gitlab(gitlab, runner, 1, manual=True, log=log)
        assert accepted == {"baseline-update:mr-v100": 0, "baseline-update:cpu": 0}, accepted
        stored = sorted(str(p.relative_to(runner / "baselines")) for p in (runner / "baselines").rglob("*.json"))
        assert [p.split("/")[0] for p in stored] == ["cpu-ci", "mr-v100"], stored
        shutil.rmtree(runner / "regress")                       # the next pipeline has a fresh checkout
        second = _run_gitlab(gitlab, runner, 2, manual=False, log=log)
        assert second == {"regress:cpu": 0, "regress:mr-v100": 0, "merge:mr-v100": 0}, second
        merged = (runner / "regress" / "merged" / "summary.md").read_text()
        assert "PASSED" in merged and "igie" in merged and "onnxruntime" not in merged
        assert "onnxruntime" in (runner / "regress" / "cpu" / "summary.md").read_text()

        shutil.rmtree(runner / "regress")
        github = yaml.safe_load((runner / "ci/examples/github-actions.yml").read_text())
        assert _run_github(github, runner, 3, log) == {"cpu": 0, "shard": 0, "merge": 0}
    except BaseException:
        print("\n\n".join(log[-8:]))
        raise


# --- full val2017 across N nodes / N cards (docs/scale-out.md) ------------------------------------------------------

SUITE_LIMITS = ["--max-images", "24", "--threads", "1", "--workers", "0"]


def _suite_line(line: str, checkout: Path, env: dict, log: list) -> int:
    """A job's command, a `scripts/suite accuracy` one with the small limits appended."""
    if "scripts/suite accuracy" in line:
        line = f"{line} {' '.join(SUITE_LIMITS)}"
    proc = subprocess.run(["bash", "-c", line], cwd=checkout, env=env, capture_output=True, text=True, timeout=900)
    log.append(f"$ {line}\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}[exit {proc.returncode}]")
    return proc.returncode


def _merged_metrics(results_dir: Path) -> dict:
    [path] = results_dir.glob("2*_accuracy.json")
    record = yaml.safe_load(path.read_text())   # JSON is YAML
    return record["metrics"], record["merged_from"]


@pytest.mark.slow
def test_val2017_scale_out_examples_run_as_shipped(runner):
    """GitLab `parallel: 4`, a GitHub matrix of 3 and a Slurm array of 2 nodes x 2 devices, as shipped: each
    merged record has the 12 stats of one unsharded run of the same images exactly."""
    log: list = []
    try:
        gitlab = yaml.safe_load((runner / "ci/examples/val2017-gitlab-ci.yml").read_text())
        shipped = {k: _expand(v, {}) for k, v in gitlab["variables"].items()}
        env = {**_base_env(runner), **shipped}
        assert _suite_line("scripts/suite accuracy --model rtmdet --precision fp32 --results-dir ref", runner, env,
                           log) == 0
        [ref_path] = (runner / "ref").glob("2*_accuracy.json")
        reference = yaml.safe_load(ref_path.read_text())["metrics"]

        for name, job in _gitlab_jobs(gitlab):
            env = {**_base_env(runner), **job["node_vars"]}
            for key, val in {**gitlab["variables"], **job.get("variables", {})}.items():
                env[key] = _expand(val, env)
            for line in job.get("before_script", []) + job["script"]:
                if "pip install" not in line:
                    assert _suite_line(line, runner, env, log) == 0, name
        metrics, shards = _merged_metrics(runner / "results" / "val2017")
        assert metrics == reference
        assert [(s["index"], s["total"], s["images"]) for s in shards] == [(k, 4, 6) for k in (1, 2, 3, 4)]
        assert all(s["source"].startswith("$CI_NODE_INDEX=") for s in shards)

        shutil.rmtree(runner / "shards")
        shutil.rmtree(runner / "results")
        github = yaml.safe_load((runner / "ci/examples/val2017-github-actions.yml").read_text())
        for name in ("shard", "merge"):
            job = github["jobs"][name]
            for shard in job.get("strategy", {}).get("matrix", {}).get("shard", [None]):
                env = {**_base_env(runner), **github["env"]}
                for step in job["steps"]:
                    uses = step.get("uses", "")
                    if uses.startswith("actions/download-artifact"):   # each artifact in shards/<its name>/
                        for d in sorted((runner / "uploaded").iterdir()):
                            shutil.copytree(d, runner / "shards" / f"val2017-{d.name}")
                    if uses or "pip install" in step["run"]:
                        continue
                    line = re.sub(r"\$\{\{\s*matrix\.shard\s*\}\}", str(shard), step["run"])
                    assert _suite_line(line, runner, env, log) == 0, name
            if name == "shard":   # upload-artifact: the shard dirs leave the runner
                (runner / "shards").rename(runner / "uploaded")
        metrics, shards = _merged_metrics(runner / "results" / "val2017")
        assert metrics == reference and [s["images"] for s in shards] == [8, 8, 8]

        shutil.rmtree(runner / "shards")
        shutil.rmtree(runner / "results")
        for task in (0, 1):   # the array's two tasks, as Slurm starts them
            env = {**_base_env(runner), "SLURM_SUBMIT_DIR": str(runner), "SLURM_ARRAY_TASK_ID": str(task),
                   "SLURM_ARRAY_TASK_MIN": "0", "SLURM_ARRAY_TASK_MAX": "1", "SLURM_ARRAY_TASK_COUNT": "2"}
            assert _suite_line(f"bash ci/examples/val2017-slurm.sbatch {' '.join(SUITE_LIMITS)}", runner, env,
                               log) == 0
        assert _suite_line("bash ci/examples/val2017-slurm-merge.sbatch", runner,
                           {**_base_env(runner), "SLURM_SUBMIT_DIR": str(runner)}, log) == 0
        metrics, shards = _merged_metrics(runner / "results" / "val2017")
        assert metrics == reference
        # 2 nodes x 2 devices: shards 1..4 of 4, each worker on its own $SUITE_GPU_INDEX
        assert [(s["index"], s["total"], s["gpu_index"]) for s in shards] == [(1, 4, 0), (2, 4, 1), (3, 4, 0),
                                                                               (4, 4, 1)]
    except BaseException:
        print("\n\n".join(log[-8:]))
        raise
