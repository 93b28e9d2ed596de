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

import math
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

    from export import build_config, new_network

    torch.manual_seed(seed)
    net = new_network(build_config(tiny_config_dict(model_type, **overrides)))
    with torch.no_grad():
        # transformers' init zeroes or shrinks several layers (box heads, attention weights...), which collapses a
        # random network's decoder features to float noise; draw every weight afresh at a unit-preserving scale
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
            head.weight.mul_(4.0)
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
    build: {{fp16_block_ops: [LayerNormalization, GridSample, Log, ReduceMax]}}
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
