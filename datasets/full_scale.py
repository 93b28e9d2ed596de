"""A val2017-sized COCO set built from real images: the source set's images repeated under new ids and file names.

    python datasets/full_scale.py --out /tmp/fullscale                  # 5000 images, person annotations
    python datasets/full_scale.py --out /tmp/fullscale-80 --annotation instances_val2017_subset150.json

Speed and memory figures must be measured at the scale users run (full val2017: 5000 images), while the real data
here holds a few hundred images. Image i of the new set is source image i mod n (in the source file's order) under
id 10_000_001 + i, with every ground-truth record of that image copied under new annotation ids, so a run over
the new set does exactly the per-image work of val2017 and its AP equals the source set's AP. Images are hard links
where the file system allows it, else copies. Writes <out>/images/val2017/ and <out>/annotations/<annotation>;
the annotation file is written last and atomically, so a set with its annotation file present is complete.
Exit codes: 0 ok, 2 bad input.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

FIRST_ID = 10_000_001


def build_full_scale(out: str | Path, source: str | Path, annotation: str, n_images: int = 5000) -> Path:
    """Write the repeated set under `out` and return its annotation file (reused when already complete)."""
    out, source = Path(out), Path(source)
    ann_src = Path(annotation) if Path(annotation).is_absolute() else source / "annotations" / annotation
    images_src = source / "images" / "val2017"
    if not images_src.is_dir():
        images_src = source / "val2017"
    ann_out = out / "annotations" / ann_src.name
    if ann_out.is_file():
        done = json.loads(ann_out.read_text())
        if len(done.get("images", [])) == n_images:
            return ann_out
    try:
        data = json.loads(ann_src.read_text())
    except (OSError, ValueError) as e:
        raise SystemExit(f"full_scale: {ann_src}: cannot read the annotation file ({e})") from None
    src_images = data.get("images") or []
    if not src_images:
        raise SystemExit(f"full_scale: {ann_src}: no images listed")
    by_image: dict[int, list[dict]] = {}
    for a in data.get("annotations", []):
        by_image.setdefault(a["image_id"], []).append(a)
    images_out = out / "images" / "val2017"
    images_out.mkdir(parents=True, exist_ok=True)
    (out / "annotations").mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for i in range(n_images):
        src = src_images[i % len(src_images)]
        new_id = FIRST_ID + i
        name = f"{new_id:012d}.jpg"
        src_file, dst_file = images_src / src["file_name"], images_out / name
        if not src_file.is_file():
            raise SystemExit(f"full_scale: {src_file}: image listed in {ann_src} is missing")
        if not dst_file.exists():
            try:
                os.link(src_file, dst_file)
            except OSError:
                shutil.copyfile(src_file, dst_file)
        images.append({**src, "id": new_id, "file_name": name})
        for a in by_image.get(src["id"], []):
            annotations.append({**a, "id": len(annotations) + 1, "image_id": new_id})
    result = {**data, "images": images, "annotations": annotations}
    tmp = ann_out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result))
    os.replace(tmp, ann_out)
    return ann_out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                 allow_abbrev=False)
    ap.add_argument("--out", required=True, help="directory of the new set")
    shared = os.environ.get("SUITE_SHARED_DATA") or Path(__file__).resolve().parent.parent.parent / "shared/data"
    ap.add_argument("--source", default=str(Path(shared) / "coco"),
                    help="COCO directory of the real images (default: $SUITE_SHARED_DATA/coco, else "
                         "../shared/data/coco beside the repo)")
    ap.add_argument("--annotation", default="instances_val2017_person_subset350.json",
                    help="annotation file: a name under <source>/annotations or an absolute path")
    ap.add_argument("--images", type=int, default=5000, help="images in the new set (default 5000, val2017's size)")
    args = ap.parse_args(argv)
    if args.images < 1:
        print("full_scale: --images must be at least 1", file=sys.stderr)
        return 2
    try:
        ann = build_full_scale(args.out, args.source, args.annotation, args.images)
    except SystemExit as e:
        print(e, file=sys.stderr)
        return 2
    print(f"full_scale: {args.images} images in {Path(args.out).resolve() / 'images/val2017'}, annotations {ann.resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
