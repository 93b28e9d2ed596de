"""Every command of README.md and docs/*.md, executed as a new user would run it in a fresh clone (issue 31): in a
copy of the repository with the shared data at ../shared/data beside it, the command's own text, and its exit
status must be the documented one (`# exit N`, else 0). What each command is given where the docs name a
placeholder (`/data/coco`, `model.onnx`, `P2.onnx`, a published checkpoint), and the commands not run with the
reason, are tests/docs_walk.py's WALK; a command on neither list fails tests/unit/test_docs_commands.py.

One copy, one engine cache and one set of generated inputs serve every command, in the docs' order (producers,
such as the random RT-DETR checkpoint, first), so the walk costs what its slowest commands cost, not their sum
of set-ups."""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import onnx
import pytest

import docs_walk
from docs_walk import Entry, all_commands, clean_env, plan, run
from helpers import REPO, copy_checkout

PERSON350 = "instances_val2017_person_subset350.json"
COCO80 = "instances_val2017_subset150.json"


def _subset(src: Path, dst: Path, ids: list[int]):
    data = json.loads(src.read_text())
    keep = set(ids)
    data["images"] = [im for im in data["images"] if im["id"] in keep]
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] in keep]
    dst.write_text(json.dumps(data))


def _dynamic_onnx(path: Path) -> Path:
    """A small detector whose input leaves H x W dynamic (build_engine.py's `--input-shape` case)."""
    from tiny_detector import make_tiny_detector
    make_tiny_detector(path)
    model = onnx.load(str(path))
    dims = model.graph.input[0].type.tensor_type.shape.dim
    for d, name in ((dims[2], "H"), (dims[3], "W")):
        d.ClearField("dim_value")
        d.dim_param = name
    onnx.save(model, str(path))
    return path


def _p2(raw: Path, dst: Path) -> Path:
    """docs/fidelity.md's P2: the SPP input x 1e4 through the three MaxPools and the Concat, then / 1e4."""
    from fidelity_helpers import plant_around
    nodes = {n.name: n for n in onnx.load(str(raw)).graph.node}
    return plant_around(raw, dst, tensor=nodes["MaxPool_143"].input[0], after=nodes["Concat_146"].output[0],
                        factor=1e4)


@pytest.fixture(scope="module")
def walk_ctx(tmp_path_factory, shared_data, rtmdet_onnx, rtmdet_raw_onnx):
    pytest.importorskip("torch", reason="the export layer (requirements-export.txt): the docs' checkpoint commands")
    root = tmp_path_factory.mktemp("newuser")
    checkout = copy_checkout(root / "checkout")
    (root / "shared").mkdir()
    (root / "shared" / "data").symlink_to(shared_data)
    for device in (checkout / "baselines").iterdir():   # a new device: no baselines yet
        if device.is_dir():
            shutil.rmtree(device)
    (checkout / "rtmdet_nano.onnx").symlink_to(rtmdet_onnx)   # rtmdet.md's python block reads it from the cwd
    work = root / "work"
    work.mkdir()
    ann = shared_data / "coco" / "annotations"
    person = sorted(im["id"] for im in json.loads((ann / PERSON350).read_text())["images"])
    coco80 = sorted(im["id"] for im in json.loads((ann / COCO80).read_text())["images"])
    coco = work / "coco"
    (coco / "annotations").mkdir(parents=True)
    (coco / "val2017").symlink_to(shared_data / "coco" / "val2017")
    _subset(ann / PERSON350, coco / "annotations" / "person_keypoints_val2017.json", person[:8])
    _subset(ann / COCO80, coco / "annotations" / "instances_val2017.json", coco80[:4])
    _subset(ann / PERSON350, work / "held_apart.json", person[8:16])
    names = {im["id"]: im["file_name"] for im in json.loads((ann / PERSON350).read_text())["images"]}
    used = set(person[:16]) | set(coco80[:4])
    calib = work / "calib"
    calib.mkdir()
    for i in [i for i in person if i not in used][:8]:   # copies: calibration images are not evaluation images
        shutil.copy2(shared_data / "coco" / "val2017" / names[i], calib / names[i])
    (work / "models.yaml").write_text(f"rtmdet/nano-person: {rtmdet_onnx}\n")
    from rtmdet_checkpoints import write_checkpoint
    rtmdet_tiny = write_checkpoint(work / "rtmdet_tiny.pth",
                                   REPO / "models" / "rtmdet" / "configs" / "rtmdet_tiny_coco.py", seed=2)
    return {"checkout": checkout, "shared": str(shared_data), "coco": str(coco), "calib": str(calib),
            "held_apart": str(work / "held_apart.json"), "onnx": str(rtmdet_onnx),
            "dyn_onnx": str(_dynamic_onnx(work / "dynamic.onnx")), "p2": str(_p2(rtmdet_raw_onnx, work / "P2.onnx")),
            "rtmdet_tiny": str(rtmdet_tiny), "work": str(work), "sim_igie": str(checkout / "tests" / "sim_igie"),
            "python": sys.executable}


def walk(commands, ctx, walk_list=None):
    """Run every planned command that is not skipped, producers first; (what went wrong, the log, how many ran)."""
    planned, unlisted, ambiguous = plan(commands, walk_list)
    problems = [f"{c}: on no list of tests/docs_walk.py" for c in unlisted]
    problems += [f"{c}: matches several entries" for c in ambiguous]
    log: list = []
    durations: list = []
    todo = sorted([(e.stage, i, c, e) for i, (c, e) in enumerate(planned) if not e.skip], key=lambda t: t[:2])
    for _, _, c, e in todo:
        problems += run(c, e, {k: v for k, v in ctx.items() if k != "checkout"}, ctx["checkout"], clean_env(), log,
                        durations)
    print("\n".join(f"{t:6.1f} s  {c}" for t, c in sorted(durations, reverse=True)))   # what the walk costs, by command
    return problems, log, len(todo)


@pytest.mark.slow
def test_every_documented_command_exits_as_documented(walk_ctx):
    problems, log, ran = walk(all_commands(), walk_ctx)
    assert not problems, "\n".join(problems) + "\n\n--- log ---\n" + "\n\n".join(log)
    assert ran >= 25
    # what the commands claim to write is there
    checkout = walk_ctx["checkout"]
    assert (Path(walk_ctx["work"]) / "rtdetr_r18_random" / "config.json").is_file()
    assert (checkout / "rtmdet_nano_raw.onnx").is_file()
    merged = json.loads((checkout / "regress" / "merged" / "verdicts.json").read_text())
    assert merged["verdicts"] and (checkout / "regress" / "merged" / "readmes").is_dir()
    assert list((checkout / "baselines").rglob("*.json"))          # baseline-update --baselines baselines
    assert list((checkout / "results" / "val2017").glob("*_accuracy.json"))    # the scale-out merge
    # records.md's command rewrites docs/schemas/ of the copy: what it writes is what the repository holds
    for schema in (REPO / "docs" / "schemas").glob("*.json"):
        assert (checkout / "docs" / "schemas" / schema.name).read_text() == schema.read_text(), schema.name


def test_the_walk_fails_a_command_that_exits_otherwise_than_documented(tmp_path, walk_ctx):
    """Planted: a doc whose command exits 2 (an ONNX that does not exist) where the doc promises 0, and one
    whose `# exit 1` the command does not keep; beside them a command that is on no list."""
    doc = tmp_path / "planted.md"
    doc.write_text("```bash\nscripts/suite accuracy --model rtmdet --onnx no-such.onnx\n"
                   "scripts/regress.py run --list --onnx rtmdet=/data/rtmdet_nano.onnx   # exit 1\n"
                   "scripts/suite frobnicate --all\n```\n")
    commands = docs_walk.documented_commands(doc)
    assert [c.exit for c in commands] == [0, 1, 0]
    planted = [*docs_walk.WALK, Entry(r"^scripts/suite accuracy --model rtmdet --onnx no-such\.onnx$")]
    problems, _, ran = walk(commands, walk_ctx, planted)
    assert ran == 2
    assert any("no-such.onnx" in p and "exited 2, documented 0" in p for p in problems), problems
    assert any("run --list" in p and "exited 0, documented 1" in p for p in problems), problems
    assert any("frobnicate" in p and "on no list" in p for p in problems), problems
    assert len(problems) == 3
