"""Small randomly initialised RT-DETR networks (transformers) and a test spec for them.

The networks keep every part of the real architecture (ResNet backbone, hybrid encoder with AIFI + CCFF, query
selection, deformable decoder with box refinement) at toy widths on a 64x64 input. Two choices make their
detections well separated, so a detection-level comparison of PyTorch and ONNX Runtime measures the export and
not float noise on near-ties:
- num_queries equals the number of encoder tokens (8x8 + 4x4 + 2x2 = 84), so the encoder's top-k query selection
  selects every token: which tokens are picked cannot flip (only their order can, and the decoder does not care);
- every weight is drawn afresh at a unit-preserving scale (transformers' own init zeroes the box heads and shrinks
  others, which leaves a random decoder's features at float-noise level) and the final class heads are scaled up,
  so sigmoid scores spread over (0, 1) instead of all sitting near 0.5.
"""
from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "models" / "rtdetr"))

SIZE, TOKENS, CLASSES = 64, 84, 3
CATEGORIES = (1, 3, 18)          # datasets/synthetic_coco.py's default categories


def tiny_config_dict(model_type: str = "rt_detr", layer_type: str = "basic", **overrides) -> dict:
    """basic blocks: the R18 / R34 backbone family; bottleneck: R50 / R101."""
    # bottleneck stages widen 4x like ResNet-50 (so the first block has a projection shortcut, as the authors' has)
    sizes = [8, 16, 32, 64] if layer_type == "basic" else [32, 32, 64, 64]
    backbone = {"model_type": "rt_detr_resnet", "embedding_size": 8, "hidden_sizes": sizes,
                "depths": [1, 2, 1, 1], "layer_type": layer_type, "out_features": ["stage2", "stage3", "stage4"]}
    cfg = {"model_type": model_type, "backbone_config": backbone, "encoder_in_channels": sizes[1:],
           "encoder_hidden_dim": 16, "d_model": 16, "encoder_ffn_dim": 32, "decoder_ffn_dim": 32,
           "encoder_attention_heads": 2, "decoder_attention_heads": 2, "decoder_layers": 2,
           "decoder_in_channels": [16, 16, 16], "num_queries": TOKENS, "num_labels": CLASSES, "num_denoising": 0,
           "hidden_expansion": 0.5, "use_pretrained_backbone": False}
    cfg.update(overrides)
    return cfg


def tiny_network(model_type: str = "rt_detr", seed: int = 0, **overrides):
    import torch

    from export import build_config, new_network, redraw_weights

    torch.manual_seed(seed)
    net = new_network(build_config(tiny_config_dict(model_type, **overrides)))
    redraw_weights(net)
    return net.eval()


def save_hf_dir(net, path: Path) -> Path:
    """A transformers checkpoint directory (config.json + model.safetensors), as downloaded from the hub."""
    net.save_pretrained(str(path))
    return path


def tiny_rtdetr_spec(path: Path, name: str = "rtdetr") -> Path:
    """A model.yaml named rtdetr (so --checkpoint exports through models/rtdetr/export.py) for 64x64 networks."""
    common = f"""    input: {{name: images, height: {SIZE}, width: {SIZE}}}
    preprocess: {{resize: stretch, color: rgb, mean: [0, 0, 0], std: [255, 255, 255]}}
    output: {{convention: detr, logits: logits, boxes: pred_boxes, max_per_img: 50, score_threshold: 0.05}}
    labels: {list(CATEGORIES)}
    evaluation: {{annotation: instances_val2017.json}}
    build: {{fp16_block_ops: [LayerNormalization, GridSample, Log, Clip, ReduceMax]}}
    fidelity: {{outputs: []}}
"""
    path.write_text(f"""schema: 1
name: {name}
default_variant: tiny
variants:
  tiny:
{common}  tiny-v2-discrete:
{common}    export: {{opset: 17, config_overrides: {{decoder_method: discrete}}}}
""")
    return path


def build_tiny_rtdetr_end2end(out: Path, seed: int = 0) -> Path:
    """tiny_network exported with its logits / normalised cxcywh boxes wrapped into end2end outputs: dets [B, Q, 5]
    (x1, y1, x2, y2, score in input pixels) and labels [B, Q]. Used by the FP16 fidelity tests."""
    import torch

    from common.export.pipeline import torch_export

    class End2End(torch.nn.Module):
        def __init__(self, detr):
            super().__init__()
            self.detr = detr

        def forward(self, images):
            out = self.detr(pixel_values=images)
            score, labels = out.logits.sigmoid().max(-1)
            cx, cy, w, h = out.pred_boxes.unbind(-1)
            xyxy = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1) * SIZE
            return torch.cat([xyxy, score.unsqueeze(-1)], -1), labels

    torch_export(End2End(tiny_network(seed=seed)), torch.zeros(1, 3, SIZE, SIZE), out, input_name="images",
                 output_names=["dets", "labels"])
    return out


def tiny_end2end_spec(path: Path, onnx_path: Path) -> Path:
    path.write_text(f"""schema: 1
name: tinyrtdetr
variants:
  tiny:
    onnx: {onnx_path}
    input: {{name: images, height: {SIZE}, width: {SIZE}}}
    preprocess: {{resize: stretch, color: rgb, mean: [0, 0, 0], std: [255, 255, 255]}}
    output: {{convention: end2end, dets: dets, labels: labels, score_threshold: 0.0}}
    labels: {list(CATEGORIES)}
    evaluation: {{annotation: instances_val2017_person_subset350.json, categories: [1]}}
""")
    return path
