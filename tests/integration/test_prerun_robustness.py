"""What can go wrong before a run, each reproduced as a user meets it (docs/robustness.md): dataset preparation
writing through links into the user's own dataset, archive refusals naming the member, damaged checkpoints, a
fidelity-section error in a spec given by path, the static-batch message, and a resumed run's images_per_s."""
from __future__ import annotations

import io
import json
import pickle
import shutil
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest

from common.data.archive import extract
from common.export.checkpoints import check_safetensors, load_state_dict, load_torch_checkpoint
from common.errors import ConfigError, InputError, RuntimeFailure
from prepare import main as prepare_main
from synthetic_coco import make_synthetic_coco

from helpers import REPO  # noqa: E402


def _tree(root: Path) -> dict:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _coco_zips(tmp_path):
    """COCO-like val2017.zip / annotations zip whose content differs from the source dataset's."""
    imgs, anns = tmp_path / "val2017.zip", tmp_path / "ann.zip"
    with zipfile.ZipFile(imgs, "w") as zf:
        zf.writestr("val2017/000000999999.jpg", b"zip image")
    with zipfile.ZipFile(anns, "w") as zf:
        zf.writestr("annotations/instances_val2017.json", b'{"from": "the zip"}')
    return imgs, anns


def test_prepare_never_writes_through_the_links_of_from_dir(tmp_path, capsys):
    src, out = tmp_path / "SRC", tmp_path / "O"
    make_synthetic_coco(src, n_images=2, seed=1)
    (src / "val2017").symlink_to(src / "images" / "val2017")    # the SRC layout: SRC/val2017, SRC/annotations
    assert prepare_main(["--out", str(out), "--from-dir", str(src)]) == 0
    before = _tree(src)
    imgs, anns = _coco_zips(tmp_path)
    code = prepare_main(["--out", str(out), "--images-zip", str(imgs), "--annotations-zip", str(anns)])
    err = capsys.readouterr().err
    assert code == 2 and "is a link" in err and "never" in err, err
    assert _tree(src) == before                                  # the user's dataset is untouched


def test_extraction_through_a_link_below_the_target_is_refused_for_zip_and_tar(tmp_path):
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "instances_val2017.json").write_text("original")
    target = tmp_path / "out"
    target.mkdir()
    (target / "annotations").symlink_to(theirs, target_is_directory=True)
    zpath = tmp_path / "a.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        zf.writestr("annotations/instances_val2017.json", "from zip")
    tpath = tmp_path / "a.tar"
    with tarfile.open(tpath, "w") as tf:
        info = tarfile.TarInfo("annotations/instances_val2017.json")
        info.size = 8
        tf.addfile(info, io.BytesIO(b"from tar"))
    for archive in (zpath, tpath):
        with pytest.raises(InputError) as ei:
            extract(archive, target)
        msg = str(ei.value)
        # the right reason, naming the member and the link; never "corrupt or truncated archive"
        assert "refusing to extract member 'annotations/instances_val2017.json'" in msg and "is a link" in msg, msg
        assert "corrupt" not in msg
    assert (theirs / "instances_val2017.json").read_text() == "original"


def test_tar_link_refusal_names_the_member(tmp_path):
    tpath = tmp_path / "l.tar"
    with tarfile.open(tpath, "w") as tf:
        info = tarfile.TarInfo("val2017/link")
        info.type, info.linkname = tarfile.SYMTYPE, "../../etc/passwd"
        tf.addfile(info)
    with pytest.raises(InputError) as ei:
        extract(tpath, tmp_path / "out")
    msg = str(ei.value)
    assert "member 'val2017/link'" in msg and "'val2017/../../etc/passwd'" in msg, msg


# ------------------------------------------------------------------ checkpoints

def _safetensors(path: Path) -> Path:
    from safetensors.numpy import save_file
    save_file({"w": np.arange(1000, dtype=np.float32), "b": np.ones(10, np.float32)}, str(path))
    return path


def test_truncated_safetensors_is_refused_by_the_suite_check(tmp_path):
    good = _safetensors(tmp_path / "model.safetensors")
    assert check_safetensors(good) == good
    data = good.read_bytes()
    for cut in (len(data) - 100, 50, 4):
        bad = tmp_path / f"cut{cut}.safetensors"
        bad.write_bytes(data[:cut])
        with pytest.raises(InputError, match="not a readable safetensors file") as ei:
            load_state_dict(bad)
        assert str(bad) in str(ei.value) and ei.value.exit_code == 2


def test_rtdetr_export_of_a_folder_with_a_truncated_safetensors_exits_2(tmp_path, capsys):
    pytest.importorskip("transformers")
    import sys
    sys.path.insert(0, str(REPO / "models" / "rtdetr"))
    from export import main as export_main
    from tiny_rtdetr import tiny_config_dict
    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(tiny_config_dict()))
    data = _safetensors(tmp_path / "w.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[:len(data) // 2])
    code = export_main(["--checkpoint", str(folder), "--variant", "r18", "--out", str(tmp_path / "o.onnx")])
    err = capsys.readouterr().err
    assert code == 2 and "model.safetensors: not a readable safetensors file" in err, err
    assert not (tmp_path / "o.onnx").exists() and not (tmp_path / "o.raw.onnx").exists()


def test_garbage_pth_is_not_called_a_pickle(tmp_path, capsys):
    torch = pytest.importorskip("torch")
    g = tmp_path / "g.pth"
    g.write_text("garbage\n")
    with pytest.raises(InputError, match="not a readable PyTorch checkpoint") as ei:
        load_torch_checkpoint(g)
    assert "pickle that needs" not in str(ei.value)
    text_pickle = tmp_path / "p.pth"                   # bytes of the pickle format, but cut short
    text_pickle.write_bytes(pickle.dumps({"a": 1}, protocol=2)[:6])
    with pytest.raises(InputError, match="not a readable PyTorch checkpoint"):
        load_torch_checkpoint(text_pickle)
    evil = tmp_path / "evil.pth"                       # a real pickle that would run code: still refused as such
    torch.save({"x": shutil.rmtree}, str(evil))
    with pytest.raises(InputError, match="refused: the checkpoint is a pickle that needs arbitrary code"):
        load_torch_checkpoint(evil)
    ok = tmp_path / "ok.pth"
    torch.save({"model": {"w": torch.zeros(2)}}, str(ok))
    assert list(load_state_dict(ok)) == ["w"]
    # the RT-DETR exporter's .pth path goes through the same loader
    import sys
    sys.path.insert(0, str(REPO / "models" / "rtdetr"))
    from export import main as export_main
    from tiny_rtdetr import tiny_config_dict
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps(tiny_config_dict()))
    code = export_main(["--checkpoint", str(g), "--config", str(cfg), "--variant", "r18", "--out",
                        str(tmp_path / "o.onnx")])
    err = capsys.readouterr().err
    assert code == 2 and "g.pth: not a readable PyTorch checkpoint" in err and "pickle that" not in err, err


# ------------------------------------------------------------------ messages naming the user's own things

def test_fidelity_error_names_the_spec_file_given_by_path(tmp_path):
    from common.config.specs import load_model
    from tiny_detr import build_tiny_detr, tiny_detr_spec
    spec = tiny_detr_spec(tmp_path / "t.yaml", build_tiny_detr(tmp_path / "tiny.onnx"))
    spec.write_text(spec.read_text().replace("    build:", "    fidelity: {min_cosin: 0.99}\n    build:"))
    with pytest.raises(ConfigError) as ei:
        load_model(str(spec)).variant().fidelity
    assert str(ei.value).startswith(f"{spec}: variants.tiny.fidelity.min_cosin: unknown key"), str(ei.value)
    assert "models/" not in str(ei.value)


def _tiny_run(tmp_path, onnx_path, **kw):
    from common.harness.runs import RunConfig
    from tiny_detector import write_tiny_spec
    if not (tmp_path / "coco").exists():
        make_synthetic_coco(tmp_path / "coco", n_images=kw.pop("n_images", 3), seed=0, size=(64, 80))
    kw.pop("n_images", None)
    return RunConfig(model=str(write_tiny_spec(tmp_path / "tiny.yaml")), onnx=str(onnx_path),
                     dataset_dir=str(tmp_path / "coco"), results_dir=str(tmp_path / "res"),
                     cache_dir=str(tmp_path / "cache"), workers=0, progress=False, threads=1, **kw)


def test_static_batch_message_names_the_asked_batch(tmp_path):
    from common.harness.runs import run_accuracy
    from tiny_detector import make_tiny_detector
    fixed = make_tiny_detector(tmp_path / "b1.onnx", batch=1)
    with pytest.raises(InputError) as ei:                  # --bs 4 on a dataset of 3 images
        run_accuracy(_tiny_run(tmp_path, fixed, batch_size=4, n_images=3))
    msg = str(ei.value)
    assert "--bs 4" in msg and "re-export the model for batch 4" in msg and "batch 3" not in msg, msg


def test_resumed_run_counts_only_its_own_images_per_second(tmp_path, monkeypatch):
    import common.harness.runs as runs
    from tiny_detector import make_tiny_detector
    onnx_path = make_tiny_detector(tmp_path / "m.onnx")
    cfg = _tiny_run(tmp_path, onnx_path, n_images=10, checkpoint_s=0.0, streams=1)
    real, calls = runs.infer, {"n": 0}

    def failing(runner, x, image_ids=None):
        calls["n"] += 1
        if calls["n"] > 6:
            raise RuntimeFailure("planted failure after 6 batches")
        return real(runner, x, image_ids)

    monkeypatch.setattr(runs, "infer", failing)
    with pytest.raises(RuntimeFailure):
        runs.run_accuracy(cfg)
    monkeypatch.setattr(runs, "infer", real)
    rec = runs.run_accuracy(cfg)
    resumed = rec["run"]["resumed_images"]
    assert 1 <= resumed < 10
    assert rec["run"]["images_per_s"] == pytest.approx((10 - resumed) / rec["run"]["wall_s"])
