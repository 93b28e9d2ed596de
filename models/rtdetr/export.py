"""RT-DETR / RT-DETRv2 checkpoint -> ONNX (input `images` [N, 3, H, W], outputs `logits` and `pred_boxes`).

Every line is exported through one network, the transformers implementation (RTDetrForObjectDetection /
RTDetrV2ForObjectDetection), so the graph and its output convention ("detr" in common/decode/detr.py) are the same
whatever form the weights came in:

- a transformers checkpoint directory (config.json + model.safetensors, e.g. PekingU/rtdetr_r18vd as downloaded);
- the authors' original .pth (RT-DETR / RT-DETRv2 releases) with `--config` naming a transformers config.json of
  the same architecture; its state dict is renamed onto the transformers network by rtdetr_original_keys.py.

The variant's `export.config_overrides` are applied to the transformers config before the network is built
(e.g. `decoder_method: discrete` for RT-DETRv2's discrete sampling, which avoids GridSample).

Command line (the suite's scripts call export_onnx through common/export/pipeline.py instead):

    python models/rtdetr/export.py --checkpoint DIR_OR_PTH [--config config.json] --variant r18 --out r18.onnx --check
"""
from __future__ import annotations

import argparse
import json
import runpy
import sys
from pathlib import Path

# the one bootstrap (scripts/ixuca_suite.py); run as a script, an export needs torch too (requirements-export.txt)
runpy.run_path(str(Path(__file__).resolve().parents[2] / "scripts" / "ixuca_suite.py"),
               init_globals={"EXTRA_NEEDS": ("torch",) if __name__ == "__main__" else ()})

import numpy as np  # noqa: E402  (after the bootstrap: an interpreter without numpy re-runs under .venv first)
from common.export.checkpoints import check_safetensors, load_torch_checkpoint  # noqa: E402
from common.errors import ConfigError, InputError, SuiteError, first_line  # noqa: E402
from common.export.pipeline import DEFAULT_OPSET, simplify, torch_export  # noqa: E402

OUTPUT_NAMES = ["logits", "pred_boxes"]
MODEL_TYPES = ("rt_detr", "rt_detr_v2")


def _read_config(path: Path) -> dict:
    try:
        cfg = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError("transformers config not found", path) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"not valid JSON: {exc}", path) from None
    if not isinstance(cfg, dict) or cfg.get("model_type") not in MODEL_TYPES:
        raise InputError(f"not a transformers RT-DETR config (model_type must be one of {', '.join(MODEL_TYPES)}, "
                         f"got {cfg.get('model_type') if isinstance(cfg, dict) else cfg!r})", path)
    return cfg


def build_config(cfg: dict, overrides: dict | None = None):
    """A transformers RT-DETR / RT-DETRv2 config object from a config.json dict (+ overrides)."""
    from transformers import RTDetrConfig, RTDetrV2Config

    cls = RTDetrConfig if cfg["model_type"] == "rt_detr" else RTDetrV2Config
    unknown = set(overrides or {}) - set(cls().to_dict())
    if unknown:
        raise ConfigError(f"export.config_overrides: {sorted(unknown)} are not {cls.__name__} fields")
    if cfg["model_type"] == "rt_detr_v2" and (overrides or {}).get("decoder_method", "default") not in \
            ("default", "discrete"):
        raise ConfigError("export.config_overrides.decoder_method must be default or discrete")
    return cls.from_dict({**cfg, **(overrides or {})})


def network_class(config):
    from transformers import RTDetrForObjectDetection, RTDetrV2ForObjectDetection

    return RTDetrForObjectDetection if config.model_type == "rt_detr" else RTDetrV2ForObjectDetection


def new_network(config):
    return network_class(config)(config)


def redraw_weights(net, class_gain: float = 4.0):
    """Draw every weight of a freshly initialised network afresh at a unit-preserving scale, in place. transformers'
    init zeroes or shrinks several layers (the encoder's score head among them: every anchor then scores the same,
    so which queries the decoder gets is the top-k's tie-break, which PyTorch and ONNX Runtime break differently,
    and the box heads, which collapse the decoder's features to float noise); random weights stand in for trained
    ones only when no output is such a tie."""
    import math

    import torch

    with torch.no_grad():
        for name, p in net.named_parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 1.0 / math.sqrt(p[0].numel()))
            elif name.endswith("weight"):
                p.uniform_(0.5, 1.5)
            else:
                p.normal_(0.0, 0.1)
        for name, b in net.named_buffers():
            if name.endswith("running_var"):
                b.uniform_(0.5, 1.5)
            elif name.endswith("running_mean"):
                b.normal_(0.0, 0.1)
        for head in net.model.decoder.class_embed:
            head.weight.mul_(class_gain)
    return net


def _overrides(variant) -> dict:
    return variant.export_config_overrides if variant is not None else {}


def load_network(checkpoint: Path, config: Path | None, variant=None):
    """The transformers network with the checkpoint's weights, in eval mode."""
    checkpoint = Path(checkpoint)
    if checkpoint.is_dir():
        cfg_path = Path(config) if config else checkpoint / "config.json"
        config_obj = build_config(_read_config(cfg_path), _overrides(variant))
        weights = sorted(checkpoint.glob("*.safetensors"))
        if not weights:
            raise InputError("no *.safetensors weights in the checkpoint directory", checkpoint)
        for path in weights:    # the suite's checks first: a truncated file is bad input (2), named, not a crash
            check_safetensors(path)
        # from_pretrained, not a plain load_state_dict: it applies transformers' own renaming of older key layouts
        try:
            net, info = network_class(config_obj).from_pretrained(str(checkpoint), config=config_obj,
                                                                   output_loading_info=True)
        except Exception as exc:  # noqa: BLE001 - safetensors' own error type is no OSError / ValueError
            if not (isinstance(exc, (OSError, ValueError, RuntimeError)) or type(exc).__name__ == "SafetensorError"):
                raise
            raise InputError(f"transformers cannot load it ({type(exc).__name__}: {first_line(exc)})",
                             checkpoint) from None
        _check_loading(info.get("missing_keys", []), info.get("unexpected_keys", []), checkpoint)
    elif checkpoint.is_file():
        if config is None:
            raise ConfigError("an original RT-DETR .pth needs --config: a transformers config.json of the same "
                              "architecture (e.g. the config.json of the matching PekingU/rtdetr_* checkpoint)",
                              checkpoint)
        from models.rtdetr.rtdetr_original_keys import to_transformers
        net = new_network(build_config(_read_config(Path(config)), _overrides(variant)))
        raw = load_torch_checkpoint(checkpoint)     # weights_only; garbage / code pickles refused with the reason
        _load_state(net, to_transformers(raw, checkpoint, net.config.decoder_layers), checkpoint)
    else:
        raise InputError("checkpoint not found", checkpoint)
    return net.eval()


def _check_loading(missing, unexpected, source: Path):
    missing, unexpected = sorted(missing), sorted(unexpected)
    if missing or unexpected:
        raise InputError(f"weights do not fit the network: {len(missing)} missing (e.g. {missing[:3]}), "
                         f"{len(unexpected)} unexpected (e.g. {unexpected[:3]})", source)


def _load_state(net, state: dict, source: Path):
    result = net.load_state_dict(state, strict=False)
    # RT-DETRv2's top-level class_embed / bbox_embed are the decoder's heads under a second name (tied)
    missing = [k for k in result.missing_keys if not k.startswith(("class_embed.", "bbox_embed."))]
    _check_loading(missing, result.unexpected_keys, source)


class DetrOutputs:
    """Wraps the transformers model so the graph has plain outputs: logits [B, Q, C], pred_boxes [B, Q, 4]."""

    def __new__(cls, net):
        import torch

        class _Wrapped(torch.nn.Module):
            def __init__(self, inner):
                super().__init__()
                self.inner = inner

            def forward(self, images):
                out = self.inner(pixel_values=images)
                return out.logits, out.pred_boxes

        return _Wrapped(net).eval()


def input_size(variant) -> tuple[int, int]:
    return (variant.height, variant.width) if variant is not None else (640, 640)


def export_onnx(checkpoint: Path, config: Path | None, out: Path, *, variant, opset: int = DEFAULT_OPSET):
    import torch

    if opset < 16:
        raise ConfigError(f"RT-DETR needs opset >= 16 (GridSample), got {opset}")
    net = load_network(checkpoint, config, variant)
    h, w = input_size(variant)
    example = torch.rand(2, 3, h, w)
    torch_export(DetrOutputs(net), example, Path(out), input_name=variant.input_name if variant else "images",
                 output_names=OUTPUT_NAMES, opset=opset)


# ---- --check: detections from PyTorch and from ONNX Runtime must agree ------------------------------------------

def _detections(outputs: dict, h: int, w: int, k: int, floor: float) -> list:
    from common.decode.outputs import get_decoder

    n = outputs["logits"].shape[0]
    meta = np.tile(np.array([1.0, 1.0, 0, 0, w, h]), (n, 1))
    cfg = {"convention": "detr", "input_height": h, "input_width": w, "max_per_img": k, "score_threshold": floor}
    bi, b, s, lab = get_decoder(cfg)(outputs, meta, cfg)
    return [(b[bi == i], s[bi == i], lab[bi == i]) for i in range(n)]


def check_onnx(net, onnx_path: Path, inputs: np.ndarray, *, k: int = 100, floor: float = 0.05,
               iou_min: float = 0.9, score_tol: float = 0.02) -> dict:
    """Run PyTorch and ONNX Runtime on the same inputs (the suite's comparator) and compare the top-k detections of
    each image (score above `floor`): one to one, same label, IoU >= iou_min, |score diff| <= score_tol.
    Agreement = matched / max(n_torch, n_onnx) over all images."""
    import onnxruntime as ort
    import torch

    from common.compare.comparator import FunctionRunner, compare, detections_agree, run_all

    def torch_forward(x):
        with torch.no_grad():
            return [t.numpy() for t in DetrOutputs(net)(torch.from_numpy(x))]

    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    names = ["logits", "pred_boxes"]
    results = run_all({"pytorch": FunctionRunner(torch_forward, names),
                       "onnxruntime": FunctionRunner(lambda x: sess.run(OUTPUT_NAMES, {sess.get_inputs()[0].name: x}),
                                                     names)}, [inputs])
    h, w = inputs.shape[2:]
    metric = f"top-{k} detections above {floor}: same label, IoU >= {iou_min}, |score diff| <= {score_tol}"
    d = compare(results, detections_agree(lambda out: _detections(out, h, w, k, floor), iou_min, score_tol,
                                          describe=metric))["onnxruntime"].details
    return {"matched": d["matched"], "torch_detections": d["reference_detections"],
            "onnx_detections": d["candidate_detections"], "agreement": d["agreement"], "metric": metric,
            "max_abs_logit_diff": float(np.abs(results["pytorch"][0]["logits"]
                                               - results["onnxruntime"][0]["logits"]).max())}


def check_inputs(images: list[Path], variant, n: int, seed: int = 0) -> np.ndarray:
    """Preprocessed images (the spec's preprocessing) when given, else seeded random images in [0, 1]."""
    h, w = input_size(variant)
    if images:
        from common.data.coco import read_image
        from common.data.preprocess import Preprocessor
        pre = Preprocessor(variant.preprocess, h, w)
        return np.stack([pre(read_image(p))[0] for p in images[:n]])
    return np.random.default_rng(seed).random((n, 3, h, w), np.float32)


def main(argv=None) -> int:
    from common.config.specs import load_model

    from common.config.parser import SuiteParser  # no prefix matching, did-you-mean, --version

    ap = SuiteParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", required=True, help="transformers dir (config.json + safetensors) or original .pth")
    ap.add_argument("--config", help="transformers config.json (required for a .pth)")
    ap.add_argument("--model", default="rtdetr", help="model name or model.yaml path (default rtdetr)")
    ap.add_argument("--variant", help="variant of the spec (input size, config overrides)")
    ap.add_argument("--out", required=True, help="simplified ONNX to write")
    ap.add_argument("--opset", type=int, default=None)
    ap.add_argument("--check", action="store_true", help="compare detections of PyTorch and ONNX Runtime")
    ap.add_argument("--check-images", nargs="*", default=[], help="images for --check (default: random)")
    ap.add_argument("--check-batch", type=int, default=2)
    ap.add_argument("--min-agreement", type=float, default=0.98)
    args = ap.parse_args(argv)
    try:
        variant = load_model(args.model).variant(args.variant)
        opset = args.opset or variant.export_opset or DEFAULT_OPSET
        out = Path(args.out)
        raw = out.with_suffix(".raw.onnx")
        try:
            export_onnx(Path(args.checkpoint), Path(args.config) if args.config else None, raw, variant=variant,
                        opset=opset)
            simplify(raw, out, variant.input_name)
        finally:
            raw.unlink(missing_ok=True)
        print(f"wrote {out}")
        if args.check:
            net = load_network(Path(args.checkpoint), Path(args.config) if args.config else None, variant)
            res = check_onnx(net, out, check_inputs([Path(p) for p in args.check_images], variant, args.check_batch))
            print(json.dumps(res, indent=1))
            if res["agreement"] < args.min_agreement:
                print(f"CHECK FAILED: agreement {res['agreement']:.3f} < {args.min_agreement}")
                return 1
            print("check passed")
    except SuiteError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
