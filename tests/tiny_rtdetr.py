"""A small randomly initialised RT-DETR (transformers' RTDetrForObjectDetection) exported to ONNX for tests.

The real architecture (ResNet-vd backbone, hybrid encoder with AIFI attention + CCFM, deformable-attention
decoder with query selection) at toy widths and depths, 64x64 input, so it exports and runs in seconds on a CPU.
The export wraps the model's logits / normalised cxcywh boxes into end2end outputs: dets [B, Q, 5] (x1, y1, x2,
y2, score in input pixels) and labels [B, Q], the convention the suite decodes.
"""
from __future__ import annotations

from pathlib import Path

SIZE, QUERIES, CLASSES = 64, 30, 3


def build_tiny_rtdetr(out: Path, seed: int = 0) -> Path:
    import torch
    from transformers import RTDetrConfig, RTDetrForObjectDetection, RTDetrResNetConfig

    from common.exporting import torch_export

    torch.manual_seed(seed)
    backbone = RTDetrResNetConfig(embedding_size=16, hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 1, 1],
                                  layer_type="basic", out_features=["stage2", "stage3", "stage4"])
    config = RTDetrConfig(backbone_config=backbone, encoder_in_channels=[32, 64, 128], encoder_hidden_dim=32,
                          decoder_in_channels=[32, 32, 32], encoder_ffn_dim=64, encoder_attention_heads=2, d_model=32, decoder_ffn_dim=64,
                          decoder_attention_heads=2, decoder_layers=2, num_queries=QUERIES, num_labels=CLASSES,
                          num_denoising=0, use_pretrained_backbone=False, decoder_n_points=2)
    model = RTDetrForObjectDetection(config).eval()

    class End2End(torch.nn.Module):
        def __init__(self, detr):
            super().__init__()
            self.detr = detr

        def forward(self, images):
            out = self.detr(pixel_values=images)
            prob = out.logits.sigmoid()
            score, labels = prob.max(-1)
            cx, cy, w, h = out.pred_boxes.unbind(-1)
            xyxy = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1) * SIZE
            return torch.cat([xyxy, score.unsqueeze(-1)], -1), labels

    torch_export(End2End(model), torch.zeros(1, 3, SIZE, SIZE), out, input_name="images",
                 output_names=["dets", "labels"])
    return out


def tiny_rtdetr_spec(path: Path, onnx_path: Path) -> Path:
    path.write_text(f"""schema: 1
name: tinyrtdetr
variants:
  tiny:
    onnx: {onnx_path}
    input: {{name: images, height: {SIZE}, width: {SIZE}}}
    preprocess: {{resize: stretch, color: rgb, mean: [0, 0, 0], std: [255, 255, 255]}}
    output: {{convention: end2end, dets: dets, labels: labels, score_threshold: 0.0}}
    labels: [1, 2, 3]
    evaluation: {{annotation: instances_val2017_person_subset350.json, categories: [1]}}
""")
    return path
