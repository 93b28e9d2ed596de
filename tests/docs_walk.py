"""The walk of every documented command (issue 31): which code blocks of README.md and docs/*.md are commands, how
each is run here (the data, placeholders and environment it is given) or why it is not, and the runner.

A command is a line of a ```bash block (continuation lines joined, `a && b` split into two), a whole ```python
block, or a `$ `-prompted line of any other block (the rest of such a block is its output). Its documented exit
status is the `# exit N` comment at its end, else 0. Every command must match exactly one entry of WALK: an entry
that runs it or one that says why it is not run (tests/unit/test_docs_commands.py checks it without data;
tests/realdata/test_docs_walk.py runs them)."""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from helpers import REPO

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


@dataclass(frozen=True)
class Command:
    doc: str          # file name, as in the doc list
    line: int         # line of the block where the command starts
    text: str         # the command as documented (comments dropped)
    exit: int         # the documented exit status
    python: bool = False   # a ```python block: run by the interpreter

    def __str__(self):
        return f"{self.doc}:{self.line}: {self.text.splitlines()[0][:120]}"


def documented_commands(path: Path, name: str | None = None) -> list[Command]:
    """The commands of one Markdown file, in order."""
    name = name or path.name
    out: list[Command] = []
    lines = path.read_text().splitlines()
    i = 0
    while i < len(lines):
        fence = re.match(r"\s*```(\w*)\s*$", lines[i])
        if not fence:
            i += 1
            continue
        lang, start = fence.group(1), i + 1
        end = next((j for j in range(start, len(lines)) if lines[j].lstrip().startswith("```")), len(lines))
        block = lines[start:end]
        if lang == "python":
            out.append(Command(name, start + 1, "\n".join(block), 0, python=True))
        elif lang == "bash" or any(ln.lstrip().startswith("$ ") for ln in block):
            out += _shell_commands(block, start, name, prompted=lang != "bash")
        i = end + 1
    return out


def _shell_commands(block: list[str], first: int, name: str, prompted: bool) -> list[Command]:
    out, pending, at = [], "", 0
    for k, raw in enumerate(block):
        line = raw.strip()
        if prompted and not pending:
            if not line.startswith("$ "):
                continue
            line = line[2:]
        m = re.search(r"(^|\s)#(.*)$", line)
        comment = m.group(2) if m else ""
        line = line[:m.start()].rstrip() if m else line
        if not pending:
            at = first + k + 1
        pending += line
        if pending.endswith("\\"):
            pending = pending[:-1].rstrip() + " "
            continue
        code = re.search(r"\bexit (\d+)\b", comment)
        parts = [p.strip() for p in pending.split("&&") if p.strip()]
        for j, part in enumerate(parts):    # `# exit N` is the last part's; the earlier ones must succeed
            out.append(Command(name, at, part, int(code.group(1)) if code and j == len(parts) - 1 else 0))
        pending = ""
    return out


def all_commands(docs=None) -> list[Command]:
    return [c for d in (docs or DOCS) for c in documented_commands(d)]


@dataclass(frozen=True)
class Entry:
    """How the commands matching `pattern` (a regex searched in the documented text) are walked.

    skip: why they are not run (empty: they run). subs: literal text -> replacement, applied after the optional
    `[...]` groups are dropped (placeholders such as `/data/coco` or `model.onnx` -> generated or shared files);
    values are formatted with the walk's context ({coco}, {work}, {shared}, ...). more: what `...` stands for
    (a command with `...` and no `more` is an error). env: variables the user would have set (formatted too).
    each: one run per item, its key=value pairs formatted in (a command documented 'on each node')."""
    pattern: str
    skip: str = ""
    subs: dict = field(default_factory=dict)
    more: str = ""
    env: dict = field(default_factory=dict)
    each: tuple = ({},)
    stage: int = 1           # producers (stage 0) run before the commands that read what they write
    # a verdict on timing (LoadGen's latency bound, early stopping when queries were over it): exit 1 with output
    # matching this is the loaded host, not the doc (tests never assert on timing); any other exit still fails
    timing: str = ""


# The data the walked commands get, made by tests/realdata/test_docs_walk.py (the context's keys):
#   {shared}  the shared data, also at ../shared/data beside the checkout copy (as the docs' paths expect)
#   {coco}    a COCO layout of a few shared images: val2017/ -> the shared images, annotations/ with
#             person_keypoints_val2017.json (8 images of the person subset) and instances_val2017.json (4 images
#             of the 80-class subset): what a user's $DATASETS_DIR or /data/coco stands for
#   {calib}   8 other shared images, copied (calibration images are never evaluation images)
#   {onnx}    the shared RTMDet-nano person ONNX; {dyn_onnx}: a small generated detector with a dynamic H x W
#   {p2}      the fidelity doc's P2 graph (the raw cut with the SPP input x 1e4 ... / 1e4)
#   {rtmdet_tiny}  a random RTMDet-tiny checkpoint in mmdet's layout (tests/rtmdet_checkpoints.py)
#   {work}    a scratch dir outside the checkout
MAIN_ENV = {"DATASETS_DIR": "{coco}", "ONNX_MODEL": "{onnx}"}    # the README main job's two variables
SHARED_COCO = "--dataset-dir ../shared/data/coco --ann instances_val2017_person_subset350.json"
SMALL_REGRESS = ("--bs 1 --max-images 4 --repeats 1 --warmup 0.02 --min-duration 0.05 --min-iters 3 --workers 0 "
                 "--threads 1 "
                 "--fps-min-band 0.95 --fps-max-band 10 --jumps warn --no-plots --timeout 600")
RTDETR_CKPT = {"/tmp/rtdetr_r18_random": "{work}/rtdetr_r18_random", "/models/rtdetr_r18vd": "{work}/rtdetr_r18_random"}

WALK = [
    # --- installs and the test suite: not run by a test ------------------------------------------------------------
    Entry(r"^(SUITE_SYSTEM_SITE_PACKAGES=1 )?bash scripts/setup\.sh",
          skip="installs the layers from the package registry into .venv: .ci/run runs it before the tests (the "
               "walk runs in the environment it made); tests/integration/test_install_layers.py checks its layers"),
    Entry(r"pytest -q$", skip="the test suite itself (CI's own command, which runs this walk)"),
    Entry(r"pytest -q tests/", skip="test files of this suite, which CI runs"),
    Entry(r"scripts/bench_\w+\.py", skip="a benchmark (README: benchmarks print their numbers, they are not tests): "
                                        "minutes of both cores, and figures no test could judge on a shared host"),
    Entry(r"scripts/int8_error_sources\.py --shared-data",
          skip="an analysis that prints figures (int8.md: 3 minutes on "
          "the shared cores for the four APs and the per-Conv SQNR columns), like the benchmarks not a test"),
    # --- README ---------------------------------------------------------------------------------------------------
    Entry(r"infer_rtmdet_fp16_accuracy\.sh --ann instances_val2017_person_subset350\.json$"),   # as written
    # --- bring-your-own-detector.md -------------------------------------------------------------------------------
    Entry(r"^(scripts/suite (--version|env)|export (MY_ONNX|COCO|ANN)=|scripts/suite accuracy --model mydet/|"
          r"scripts/regress\.py (run|baseline-update) (--models mydet/|mydet/run1))",
          skip="run as written, command by command, by tests/realdata/test_bring_your_own_detector.py "
               "(its own test of this doc)"),
    # --- ci-regression.md -----------------------------------------------------------------------------------------
    Entry(r"regress\.py run --list --onnx rtmdet=/data/",
          subs={"/data/rtmdet_nano.onnx": "{onnx}"}),
    Entry(r"regress\.py run --onnx rtmdet=/data/rtmdet_nano\.onnx --dataset-dir /data/coco$",
          skip="the whole default matrix (rtmdet: 6 ONNX Runtime performance cases x 3 repeats at the default "
               "timing, batch 32 x 100 iterations among them): 10+ minutes of both cores; the same runner on the "
               "same model is walked below with the documented filters and limits"),
    Entry(r"regress\.py run --onnx rtdetr/r18=/data/r18\.onnx --models-manifest /data/models\.yaml --strict",
          subs={"/data/r18.onnx": "{work}/r18.onnx", "/data/models.yaml": "{work}/models.yaml"},
          more="--kind accuracy --precision fp32 " + SHARED_COCO + " --out {work}/regress-r18 " + SMALL_REGRESS),
    Entry(r"regress\.py run --onnx rtmdet=/data/rtmdet_nano\.onnx --models rtmdet --precision fp16 --bs 1,8",
          subs={"/data/rtmdet_nano.onnx": "{onnx}"},
          more="--out {work}/regress-perf " + SMALL_REGRESS.replace("--bs 1 ", "")),
    Entry(r"regress\.py run --shard 2/4 --out regress/shard-2 \.\.\.", stage=0,
          subs={"2/4": "{k}/4", "shard-2": "shard-{k}"}, each=tuple({"k": k} for k in (1, 2, 3, 4)),
          more="--run-id walk --onnx rtmdet={onnx} " + SHARED_COCO + " --precision fp32 --backend onnxruntime "
               + SMALL_REGRESS),
    Entry(r"regress\.py merge regress/shard-\* --out regress/merged"),
    Entry(r"regress\.py report regress/merged --history results/history\.jsonl --update-readmes"),
    Entry(r"regress\.py baseline-update regress/merged --baselines baselines"),
    # --- engines.md: IGIE on the simulated SDK (tests/sim_igie on PYTHONPATH, as the IGIE tests run it) ------------
    Entry(r"build_engine\.py --model rtmdet \[--variant nano-person\] --onnx model\.onnx +--backend igie "
          r"--precision fp16 --bs 32",
          subs={"model.onnx": "{onnx}"}, env={"PYTHONPATH": "{sim_igie}"}),
    Entry(r"build_engine\.py --onnx model\.onnx --input-shape 3x640x640 --backend tvm --bs 1",
          subs={"model.onnx": "{dyn_onnx}"}),
    Entry(r"build_engine\.py --model rtmdet --onnx model\.onnx --backend igie --precision int8",
          subs={"model.onnx": "{onnx}", "calib_images/": "{calib}"}, env={"PYTHONPATH": "{sim_igie}", **MAIN_ENV}),
    Entry(r"build_engine\.py --model rtmdet --onnx model\.onnx --backend onnxruntime --precision int8",
          subs={"model.onnx": "{onnx}", "calib_images/": "{calib}"}, env=MAIN_ENV),
    Entry(r"suite accuracy --model rtmdet --precision int8 --calib-dir calib_images/ \.\.\.",
          subs={"calib_images/": "{calib}"}, more="--onnx {onnx} --dataset-dir {coco}"),
    Entry(r"int8_sensitivity\.py --model rtmdet --onnx model\.onnx",
          subs={"model.onnx": "{onnx}", "calib/": "{calib}", "held_apart.json": "{held_apart}"}, env=MAIN_ENV),
    # --- fidelity.md ------------------------------------------------------------------------------------------------
    Entry(r"compare\.py --model rtmdet (--precision fp16 )?--onnx "
          r"\.\./shared/data/models/rtmdet-nano-person/rtmdet_nano"
          r"\.onnx +--dataset-dir \.\./shared/data/coco --ann instances_val2017_person_subset350\.json --images 32$"),
    Entry(r"compare\.py --model rtmdet --variant nano-person-raw --precision fp16 --onnx P2\.onnx",
          subs={"P2.onnx": "{p2}"}),
    Entry(r"suite accuracy --model rtmdet --variant nano-person-raw --precision fp16 --onnx P2\.onnx \.\.\.",
          subs={"P2.onnx": "{p2}"}, more=SHARED_COCO + " --max-images 8"),
    Entry(r"compare\.py --model rtmdet --variant nano-person-raw --onnx raw\.onnx",
          subs={"--onnx raw.onnx": "--onnx rtmdet_nano_raw.onnx"}),   # what rtmdet.md's python block wrote
    # --- loadgen.md ---------------------------------------------------------------------------------------------
    Entry(r"suite loadgen --model rtmdet --onnx \.\./shared/data/.* --scenario Server --target-qps 20 --short$",
          timing=r"result INVALID[\s\S]*(latency bound|early stopping)"),   # both: queries over the bound
    Entry(r"infer_rtmdet_fp16_loadgen\.sh --scenario Offline --target-qps 200 --bs 8 --short +--ann "
          r"instances_val2017_person_subset350\.json$"),
    # --- records.md ---------------------------------------------------------------------------------------------
    Entry(r"PYTHONPATH=\.importpath \.venv/bin/python -m common\.record\.types$"),
    # --- rtdetr.md: the random checkpoint the doc says how to make stands in for the published ones -----------
    Entry(r"random_checkpoint\.py --variant r18 --out /tmp/rtdetr_r18_random$", subs=RTDETR_CKPT, stage=0),
    Entry(r"export\.py --checkpoint /models/rtdetr_r18vd --variant r18 --out r18\.onnx --check",
          subs={**RTDETR_CKPT, "--out r18.onnx": "--out {work}/r18.onnx"}, stage=0),
    # a random checkpoint: the doc says to add --preflight 0 (or SUITE_PREFLIGHT=0) to its FP16 accuracy runs
    Entry(r"infer_rtdetr_fp16_accuracy\.sh --variant r18 --checkpoint /models/rtdetr_r18vd$", subs=RTDETR_CKPT,
          env={"DATASETS_DIR": "{coco}", "SUITE_PREFLIGHT": "0"}),
    Entry(r"infer_rtdetr_fp32_accuracy\.sh --variant v2-l --checkpoint rtdetrv2_r50vd_6x_coco_ema\.pth",
          skip="the authors' RT-DETRv2-R50 .pth (no such weights here; a random one: a 42 M-parameter export and "
               "640x640 FP32 inference, minutes of both cores); the .pth path is run on random networks by "
               "tests/integration/test_rtdetr_original.py"),
    Entry(r"infer_rtdetr_fp16_performance\.sh --variant v2-l-discrete",
          skip="RT-DETRv2-R50 timing: at least 100 iterations at 640x640 (the command has no flag slot for fewer), "
               "~2 s each on 2 CPU cores, after its export; tests/integration/test_rtdetr_export.py runs the "
               "performance script on a random tiny RT-DETRv2"),
    # --- rtmdet.md ----------------------------------------------------------------------------------------------
    Entry(r"^import onnx\.utils\nonnx\.utils\.extract_model\(\"rtmdet_nano\.onnx\"", stage=0),
    Entry(r"infer_rtmdet_fp16_(accuracy|performance)\.sh --variant tiny",
          skip="mmdet's published RTMDet-tiny checkpoint (a download this host cannot make); random mmdet "
               "checkpoints run through both scripts in tests/integration/test_rtmdet_export.py (a random tiny "
               "fails the variant's AP target, exit 1, as it should)"),
    # a random checkpoint in mmdet's layout (tests/rtmdet_checkpoints.py) for the published one; of the optional
    # groups the doc says one of --config / --variant is needed: --variant tiny, the checkpoint's
    Entry(r"models/rtmdet/export\.py --checkpoint rtmdet_tiny\.pth",
          subs={"rtmdet_tiny.pth": "{rtmdet_tiny}", "--out tiny.onnx": "--variant tiny --out {work}/tiny.onnx"}),
    # --- scale-out.md -------------------------------------------------------------------------------------------
    Entry(r"suite accuracy --model rtmdet --precision fp16 --shard 2/4 --results-dir shards/node-2$", stage=0,
          subs={"2/4": "{k}/4", "node-2": "node-{k}"}, each=tuple({"k": k} for k in (1, 2, 3, 4)), env=MAIN_ENV),
    Entry(r"suite merge shards/node-\* --results-dir results/val2017$", env=MAIN_ENV),
    Entry(r"suite accuracy --model rtmdet --backend igie --precision fp16 --devices 0,1,2,3$",
          env={"PYTHONPATH": "{sim_igie}", **MAIN_ENV}),
]


def _expand(text: str, ctx: dict) -> str:
    return text.format(**ctx) if "{" in text else text


def matching(command: Command, walk=None) -> list[Entry]:
    return [e for e in (walk or WALK) if re.search(e.pattern, command.text)]


def plan(commands, walk=None):
    """(command, its entry) for every command with exactly one entry; the commands with none; with several."""
    planned, unlisted, ambiguous = [], [], []
    for c in commands:
        found = matching(c, walk)
        (planned.append((c, found[0])) if len(found) == 1 else (unlisted if not found else ambiguous).append(c))
    return planned, unlisted, ambiguous


def shell_lines(command: Command, entry: Entry, ctx: dict) -> list[str]:
    """The command lines the entry runs for a documented command: optional groups dropped, placeholders
    replaced, `...` filled in."""
    text = command.text
    if not command.python:
        while (shorter := re.sub(r"\s*\[[^\[\]]*\]", "", text)) != text:   # nested groups, innermost first
            text = shorter
    lines = []
    for item in entry.each:
        line = text
        for old, new in entry.subs.items():
            line = line.replace(old, _expand(new, {**ctx, **item}))
        if not command.python and re.search(r"(^|\s)\.\.\.(\s|$)", line):
            if not entry.more:
                raise ValueError(f"{command}: `...` but its entry says nothing to put there")
            filling = _expand(entry.more, {**ctx, **item})
            line = re.sub(r"(^|\s)\.\.\.(\s|$)", lambda _, f=filling: f" {f} ", line).strip()
        lines.append(line)
    return lines


def run(command: Command, entry: Entry, ctx: dict, cwd: Path, base_env: dict, log: list,
        durations: list) -> list[str]:
    """Run one documented command as the entry says; what went wrong (empty when it exited as documented)."""
    env = {**base_env, **{k: _expand(v, ctx) for k, v in entry.env.items()}}
    problems = []
    for line in shell_lines(command, entry, ctx):
        argv = [str(Path(ctx["python"])), "-c", line] if command.python else ["bash", "-c", line]
        start = time.monotonic()
        proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
        took = time.monotonic() - start
        durations.append((took, str(command)))
        log.append(f"$ {line}   [{command.doc}:{command.line}]\n{proc.stdout[-1500:]}{proc.stderr[-1500:]}"
                   f"[exit {proc.returncode}, documented {command.exit}; {took:.1f} s]")
        if entry.timing and proc.returncode == 1 and re.search(entry.timing, proc.stdout + proc.stderr):
            log[-1] += " (a timing verdict of this loaded host: accepted)"
        elif proc.returncode != command.exit:
            problems.append(f"{command}: exited {proc.returncode}, documented {command.exit}\n  ran: {line}\n"
                            f"  {(proc.stderr or proc.stdout).strip().splitlines()[-1:] or ['(no output)']}")
    return problems


def quoted(words) -> str:
    return " ".join(shlex.quote(str(w)) for w in words)


def clean_env(extra: dict | None = None) -> dict:
    """The environment of a new user's shell: none of the suite's variables (ONNX_MODEL, DATASETS_DIR, SUITE_*,
    REGRESS_*) leak in from the test's own; one runtime thread per process, as every test process."""
    from common.config.options import ENV
    env = {k: v for k, v in os.environ.items() if k not in ENV and not k.startswith(("REGRESS_", "SUITE_"))
           and k not in ("GITHUB_STEP_SUMMARY", "PYTHONPATH", "COCO", "ANN", "MY_ONNX")}
    env["SUITE_THREADS"] = "1"
    return {**env, **(extra or {})}
