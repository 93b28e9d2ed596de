"""`datasets/prepare.py`: COCO layout from a dir (linked) or from zips, then verified."""
import hashlib
import zipfile

import pytest

from common.errors import InputError
from prepare import main, prepare_from_dir, prepare_from_zips, verify
from synthetic_coco import make_synthetic_coco


def _zips(src, tmp_path):
    imgs, anns = tmp_path / "val2017.zip", tmp_path / "annotations.zip"
    with zipfile.ZipFile(imgs, "w") as zf:
        for p in sorted((src / "images" / "val2017").iterdir()):
            zf.write(p, f"val2017/{p.name}")
    with zipfile.ZipFile(anns, "w") as zf:
        zf.write(src / "annotations" / "instances_val2017.json", "annotations/instances_val2017.json")
    return imgs, anns


def test_prepare_from_dir_and_zips(tmp_path):
    make_synthetic_coco(tmp_path / "src", n_images=5, seed=2)
    s = verify(prepare_from_dir(tmp_path / "src", tmp_path / "linked"), check_images=True)
    assert s["images_listed"] == s["images_on_disk"] == 5
    imgs, anns = _zips(tmp_path / "src", tmp_path)
    sha = hashlib.sha256(imgs.read_bytes()).hexdigest()
    out = prepare_from_zips(str(imgs), str(anns), tmp_path / "unzipped", images_sha256=sha)
    assert verify(out, check_images=True)["images_listed"] == 5
    with pytest.raises(InputError, match=f"expected sha256 {'a' * 64}, got {sha}"):
        prepare_from_zips(str(imgs), str(anns), tmp_path / "x", images_sha256="a" * 64)


def test_prepare_reports_missing_images(tmp_path, capsys):
    make_synthetic_coco(tmp_path / "src", n_images=3, seed=2)
    (tmp_path / "src" / "images" / "val2017" / "000000000003.jpg").unlink()
    assert main(["--out", str(tmp_path / "o"), "--from-dir", str(tmp_path / "src")]) == 2
    assert "000000000003.jpg" in capsys.readouterr().err


def test_prepare_shared_data(shared_data, tmp_path, capsys):
    assert main(["--out", str(tmp_path / "c"), "--from-dir", str(shared_data / "coco"),
                 "--annotation", "instances_val2017_person_subset350.json"]) == 0
    assert "images_listed=350" in capsys.readouterr().out
