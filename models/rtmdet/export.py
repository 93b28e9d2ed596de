"""mmdet RTMDet checkpoint + config -> ONNX ending at the head's raw outputs (decoded by the suite: rtmdet_raw).

    python models/rtmdet/export.py --checkpoint rtmdet_tiny.pth [--config CFG] [--variant tiny] --out tiny.onnx \
        [--opset 17] [--check --images DIR]

The network is the suite's own mmcv-free RTMDet (models/rtmdet/network.py) loaded key for key. The graph has one
input (the variant's input name, `input`) with a dynamic batch, and per stride a class-logit output and a
stride-scaled distance output named as the variant's `output.cls` / `output.reg` declare. It is simplified with
onnxsim with the batch kept dynamic. `--check` runs real images through ONNX Runtime and PyTorch and compares.

The scripts call export_onnx() through common/export/pipeline.py (`--checkpoint/--config`, exported once and cached).
"""
from __future__ import annotations

import runpy
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]

# the one bootstrap (scripts/ixuca_suite.py); run as a script, an export needs torch too (requirements-export.txt)
runpy.run_path(str(Path(__file__).resolve().parents[2] / "scripts" / "ixuca_suite.py"),
               init_globals={"EXTRA_NEEDS": ("torch",) if __name__ == "__main__" else ()})

from common.errors import ConfigError, InputError, SuiteError  # noqa: E402
from models.rtmdet.build import input_size, load_rtmdet  # noqa: E402

# --check: ONNX Runtime (FP32, CPU) against PyTorch on the same inputs; an element fails when
# |onnx - torch| > ATOL + RTOL * |torch| (class logits and distances in input pixels are both O(1..100))
ATOL, RTOL = 1e-3, 1e-3


def default_config(variant) -> Path:
    """The config shipped for a variant (model.yaml `checkpoint.config`), for users who have only the .pth."""
    rel = variant.checkpoint_config if variant is not None else None
    if not rel:
        raise ConfigError(f"variant {variant.id if variant else '?'} names no config: pass --config")
    return REPO_ROOT / rel


def output_names(variant, strides) -> list[str]:
    if variant is None:
        return [f"cls_{s}" for s in strides] + [f"reg_{s}" for s in strides]
    out = variant.output
    if out.get("convention") != "rtmdet_raw":
        raise ConfigError(f"variant {variant.id} has output convention {out.get('convention')!r}; exporting a "
                          "checkpoint gives raw head outputs: pick a variant with convention rtmdet_raw")
    if list(out.get("strides", [])) != list(strides) or len(out.get("cls", [])) != len(strides) \
            or len(out.get("reg", [])) != len(strides):
        raise ConfigError(f"variant {variant.id} declares strides {out.get('strides')} with outputs cls="
                          f"{out.get('cls')} reg={out.get('reg')}; the config's head has strides {list(strides)}")
    return list(out["cls"]) + list(out["reg"])


def _check_against_variant(net, cfg, variant, config):
    if variant is None:
        return
    if net.bbox_head.num_classes != len(variant.label_map):
        raise ConfigError(f"the config's head has {net.bbox_head.num_classes} classes, variant {variant.id} maps "
                          f"{len(variant.label_map)} labels", config)
    size = input_size(cfg)
    if size is not None and size != (variant.height, variant.width):
        raise ConfigError(f"the config's test pipeline resizes to {size[0]}x{size[1]} (HxW), variant {variant.id} "
                          f"takes {variant.height}x{variant.width}", config)


def prepare(checkpoint, config, variant=None):
    """(network, mmengine config, input name, (height, width), output names) for a checkpoint."""
    config = Path(config) if config else default_config(variant)
    net, cfg = load_rtmdet(checkpoint, config, variant)
    _check_against_variant(net, cfg, variant, config)
    if variant is not None:
        name, size = variant.input_name, (variant.height, variant.width)
    else:
        name, size = "input", input_size(cfg)
        if size is None:
            raise ConfigError("the config has no test_pipeline Resize scale: pass --variant", config)
    return net, cfg, name, size, output_names(variant, net.strides)


def export_onnx(checkpoint, config, out, *, variant, opset):
    """Raw (unsimplified) ONNX with a dynamic batch; the interface of common/export/pipeline.py."""
    import torch

    from common.export.pipeline import torch_export
    net, _, name, (h, w), names = prepare(checkpoint, config, variant)
    torch_export(net, torch.zeros(1, 3, h, w), Path(out), input_name=name, output_names=names, opset=opset)


def check(onnx_path: Path, net, input_name: str, names: list, images: list[Path], preprocess, size) -> dict:
    """ONNX Runtime vs PyTorch on the given images, one batch, through the suite's comparator: per output max abs /
    rel difference against |diff| <= ATOL + RTOL * |torch|."""
    import numpy as np
    import onnxruntime as ort
    import torch

    from common.compare.comparator import FunctionRunner, allclose, compare, run_all
    from common.data.coco import read_image
    from common.data.preprocess import Preprocessor
    pre = Preprocessor(preprocess, *size)
    batch = np.stack([pre(read_image(str(p)))[0] for p in images])
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])

    def torch_forward(x):
        with torch.no_grad():
            return [t.numpy() for t in net(torch.from_numpy(x))]

    results = run_all({"pytorch": FunctionRunner(torch_forward, names),
                       "onnxruntime": FunctionRunner(lambda x: sess.run(names, {input_name: x}), names)}, [batch])
    verdict = compare(results, allclose(ATOL, RTOL))["onnxruntime"]
    return {"outputs": verdict.details, "ok": verdict.ok, "images": len(images)}


def _preprocess_from_config(cfg):
    from common.config.specs import Preprocess
    dp = cfg["model"].get("data_preprocessor") or {}
    return Preprocess(resize="letterbox", pad="bottom_right", pad_value=114.0,
                      color="rgb" if dp.get("bgr_to_rgb") else "bgr",
                      mean=tuple(dp.get("mean", (0.0, 0.0, 0.0))), std=tuple(dp.get("std", (1.0, 1.0, 1.0))))


def main(argv=None) -> int:
    import argparse

    from common.export.pipeline import DEFAULT_OPSET, simplify
    from common.config.parser import SuiteParser  # no prefix matching, did-you-mean, --version
    ap = SuiteParser(description="mmdet RTMDet checkpoint -> raw-head ONNX (dynamic batch, onnxsim)")
    ap.add_argument("--checkpoint", required=True, help="mmdet .pth (read with torch.load weights_only=True)")
    ap.add_argument("--config", help="mmdet config .py (default: the variant's shipped config)")
    ap.add_argument("--variant", help="variant in models/rtmdet/model.yaml: input size, output names, "
                                      "preprocessing for --check (default: from the config, outputs cls_<stride>, "
                                      "reg_<stride>)")
    ap.add_argument("--out", required=True, help="ONNX file to write")
    ap.add_argument("--opset", type=int, default=DEFAULT_OPSET)
    ap.add_argument("--check", action="store_true", help="compare ONNX Runtime with PyTorch on --images")
    ap.add_argument("--images", help="directory of images for --check")
    ap.add_argument("--num-images", type=int, default=4, help="images used by --check (default 4)")
    args = ap.parse_args(argv)
    try:
        from common.engine_cache import atomic_write_bytes
        from common.config.specs import load_model
        variant = load_model("rtmdet").variant(args.variant) if args.variant else None
        if args.check and not args.images:
            raise ConfigError("--check needs --images DIR")
        images = []
        if args.check:
            folder = Path(args.images)
            if not folder.is_dir():
                raise InputError("image directory not found", folder)
            images = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
            images = images[: args.num_images]
            if not images:
                raise InputError("no .jpg/.png images", folder)
        net, cfg, name, size, names = prepare(args.checkpoint, args.config, variant)
        out = Path(args.out)
        raw, simplified = out.with_suffix(".raw.tmp.onnx"), out.with_suffix(".sim.tmp.onnx")
        try:
            import torch

            from common.export.pipeline import torch_export
            torch_export(net, torch.zeros(1, 3, *size), raw, input_name=name, output_names=names, opset=args.opset)
            simplify(raw, simplified, name)
            atomic_write_bytes(out, simplified.read_bytes())
        finally:
            raw.unlink(missing_ok=True)
            simplified.unlink(missing_ok=True)
        print(f"wrote {out}: input {name} [batch, 3, {size[0]}, {size[1]}], outputs {', '.join(names)}, "
              f"opset {args.opset}, onnxsim")
        if args.check:
            preprocess = variant.preprocess if variant is not None else _preprocess_from_config(cfg)
            result = check(out, net, name, names, images, preprocess, size)
            print(f"check: ONNX Runtime vs PyTorch on {result['images']} images (batch {result['images']}), "
                  f"tolerance |diff| <= {ATOL} + {RTOL} * |torch|")
            for n, r in result["outputs"].items():
                print(f"  {n}: max abs diff {r['max_abs']:.3e}, max rel diff {r['max_rel']:.3e} "
                      f"{'ok' if r['ok'] else 'OVER TOLERANCE'}")
            if not result["ok"]:
                print("check FAILED: ONNX Runtime differs from PyTorch beyond the tolerance", file=sys.stderr)
                return 1
            print("check passed")
        return 0
    except SuiteError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
