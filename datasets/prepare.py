"""Set up and verify the COCO layout the suite's scripts expect: <out>/images/val2017 and <out>/annotations/.

    python -m datasets.prepare --out data/coco --from-dir /work/shared/data/coco
    python -m datasets.prepare --out data/coco --images-zip val2017.zip --annotations-zip annotations.zip
    python -m datasets.prepare --out data/coco --images-zip URL --images-sha256 HEX --annotations-zip URL ...

Zips may be local files or http(s) URLs (downloaded resumably into <out>/downloads, sha256-checked when a hash
is given). Extraction never writes through a link: after --from-dir, <out>/annotations and <out>/images/val2017
are links to the user's own dataset, and extracting zips into the same --out is refused (exit 2) instead of
changing the user's files. Verification parses the annotation file and checks every listed image is present (and, with
--check-images, decodes each one). Exit codes as for the suite: 0 ok, 2 bad input, 3 download failed.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import runpy  # noqa: E402

runpy.run_path(str(Path(__file__).resolve().parents[1] / "scripts" / "ixuca_suite.py"))  # the one bootstrap

from common.data.archive import archive_is_complete, extract  # noqa: E402
from common.data.coco import image_items, read_annotations, read_image, resolve_dataset  # noqa: E402
from common.data.download import download  # noqa: E402
from common.engine_cache import file_sha256  # noqa: E402
from common.errors import InputError, SuiteError  # noqa: E402

DEFAULT_ANNOTATION = "instances_val2017.json"


def _fetch(source: str, out: Path, sha256: str | None) -> Path:
    if source.startswith(("http://", "https://")):
        if (out / "downloads").is_symlink():
            raise InputError("is a link: the suite never downloads through a link into a directory it did not "
                             "create; remove it or choose another --out", out / "downloads")
        # a server that sends no length and ignores Range: the archive's own structure tells a complete file
        return download(source, out / "downloads" / source.rstrip("/").rsplit("/", 1)[-1], sha256,
                        complete=archive_is_complete)
    path = Path(source)
    if not path.is_file():
        raise InputError("archive not found", path)
    if sha256 and (actual := file_sha256(path)) != sha256.lower():
        raise InputError(f"checksum mismatch: expected sha256 {sha256.lower()}, got {actual}", path)
    return path


def _link(src: Path, dst: Path) -> bool:
    """Link dst -> src; True when this call made the link (False: it was there already)."""
    if dst.is_symlink() and dst.resolve() == src.resolve():
        return False
    if dst.exists() or dst.is_symlink():
        raise InputError(f"already exists and is not a link to {src}; remove it or choose another --out", dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.symlink_to(src.resolve(), target_is_directory=True)
    return True


def prepare_from_dir(src: str | Path, out: str | Path, annotation: str = DEFAULT_ANNOTATION,
                     made: list | None = None) -> Path:
    """Link an existing COCO dir (images/val2017 or val2017, plus annotations/) into the expected layout; `made`
    collects the links this call made (the caller removes them when verification then fails). The file to verify
    is looked for first: a dir without it is refused, naming the files it has, before anything is linked."""
    src, out = Path(src), Path(out)
    images = next((c for c in (src / "images" / "val2017", src / "val2017") if c.is_dir()), None)
    if images is None:
        raise InputError("no images/val2017 or val2017 directory", src)
    if not (src / "annotations").is_dir():
        raise InputError("no annotations directory", src)
    if not (src / "annotations" / annotation).is_file():
        have = sorted(p.name for p in (src / "annotations").glob("*.json"))
        raise InputError(f"no annotation file {annotation}; it has {', '.join(have) or 'no .json file'}: pass "
                         "--annotation NAME to verify one of those", src / "annotations")
    for target, link in ((images, out / "images" / "val2017"), (src / "annotations", out / "annotations")):
        if _link(target, link) and made is not None:
            made.append(link)
    return out


def prepare_from_zips(images_zip: str, annotations_zip: str, out: str | Path, images_sha256: str | None = None,
                      annotations_sha256: str | None = None) -> Path:
    """Extract COCO's val2017.zip (holding val2017/) and annotations zip (holding annotations/)."""
    out = Path(out)
    extract(_fetch(images_zip, out, images_sha256), out / "images")
    extract(_fetch(annotations_zip, out, annotations_sha256), out)
    return out


def verify(out: str | Path, annotation: str = DEFAULT_ANNOTATION, check_images: bool = False) -> dict:
    images_dir, ann_file = resolve_dataset(str(out), annotation)
    ann = read_annotations(ann_file)
    items = image_items(ann, images_dir)
    if check_images:
        for it in items:
            img = read_image(it.path)
            if img.shape[:2] != (it.height, it.width):
                raise InputError(f"image is {img.shape[1]}x{img.shape[0]} but the annotation file says "
                                 f"{it.width}x{it.height}", it.path)
    on_disk = sum(1 for n in os.listdir(images_dir) if n.lower().endswith((".jpg", ".jpeg", ".png")))
    return {"images_dir": str(images_dir), "annotation": str(ann_file), "images_listed": len(items),
            "images_on_disk": on_disk, "annotations": len(ann["annotations"]), "categories": len(ann["categories"])}


def main(argv=None) -> int:
    from common.config.parser import SuiteParser  # no prefix matching, did-you-mean, --version
    p = SuiteParser(prog="prepare", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="dataset dir to create (pass it as --dataset-dir / DATASETS_DIR)")
    p.add_argument("--from-dir", help="existing COCO dir to link (nothing is copied)")
    p.add_argument("--images-zip", help="val2017.zip: a path or URL")
    p.add_argument("--images-sha256")
    p.add_argument("--annotations-zip", help="annotations zip: a path or URL")
    p.add_argument("--annotations-sha256")
    p.add_argument("--annotation", default=DEFAULT_ANNOTATION, help="annotation file to verify")
    p.add_argument("--check-images", action="store_true", help="decode every image while verifying")
    args = p.parse_args(argv)
    made: list[Path] = []
    try:
        if args.from_dir:
            prepare_from_dir(args.from_dir, args.out, args.annotation, made)
        elif args.images_zip and args.annotations_zip:
            prepare_from_zips(args.images_zip, args.annotations_zip, args.out, args.images_sha256,
                              args.annotations_sha256)
        elif args.images_zip or args.annotations_zip:
            p.error("--images-zip and --annotations-zip go together")
        summary = verify(args.out, args.annotation, args.check_images)
    except SuiteError as exc:
        for link in made:  # a failed --from-dir leaves nothing of its own behind
            link.unlink()
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    print(" ".join(f"{k}={v}" for k, v in summary.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
