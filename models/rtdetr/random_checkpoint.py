#!/usr/bin/env python3
"""Write a randomly initialised RT-DETR checkpoint directory (config.json + model.safetensors, transformers'
layout) of any transformers-line variant of models/rtdetr/model.yaml: what the docs' RT-DETR commands take as
--checkpoint where no trained weights can be had. The architecture is the published checkpoint's (backbone
depth and widths, encoder width and expansion, decoder layers); the weights are random, so the AP is ~0 and only
the plumbing, the export and the speed mean anything.

    python models/rtdetr/random_checkpoint.py --variant r18 --out /tmp/rtdetr_r18_random [--seed 0]

Exit codes as for the suite: 0 written, 2 bad input (an unknown variant, or one of the ONNX-only lines).
"""
from __future__ import annotations

import runpy
import sys
from pathlib import Path

runpy.run_path(str(Path(__file__).resolve().parents[2] / "scripts" / "ixuca_suite.py"),
               init_globals={"EXTRA_NEEDS": ("torch", "transformers") if __name__ == "__main__" else ()})

from common.errors import ConfigError, SuiteError, did_you_mean  # noqa: E402


def _resnet(layer_type: str, depths: list, enc_hidden: int = 256, expansion: float = 1.0, decoder_layers: int = 6,
            ffn: int = 1024) -> dict:
    basic = layer_type == "basic"
    hidden = [64, 128, 256, 512] if basic else [256, 512, 1024, 2048]
    return {"num_labels": 80, "num_queries": 300, "d_model": 256, "encoder_hidden_dim": enc_hidden,
            "encoder_in_channels": hidden[1:], "hidden_expansion": expansion, "encoder_ffn_dim": ffn,
            "decoder_ffn_dim": 1024, "decoder_layers": decoder_layers, "decoder_in_channels": [enc_hidden] * 3,
            "use_pretrained_backbone": False,
            "backbone_config": {"model_type": "rt_detr_resnet", "layer_type": layer_type, "depths": depths,
                                "hidden_sizes": hidden, "embedding_size": 64,
                                "out_features": ["stage2", "stage3", "stage4"]}}


# The published architectures (the RT-DETR / RT-DETRv2 papers' tables; transformers' PekingU configs)
_R18 = _resnet("basic", [2, 2, 2, 2], expansion=0.5, decoder_layers=3)
_R34 = _resnet("basic", [3, 4, 6, 3], expansion=0.5, decoder_layers=4)
_R50 = _resnet("bottleneck", [3, 4, 6, 3])
_R50_M = _resnet("bottleneck", [3, 4, 6, 3], expansion=0.5)
_R101 = _resnet("bottleneck", [3, 4, 23, 3], enc_hidden=384, ffn=2048)
ARCHITECTURES = {
    "r18": ("rt_detr", _R18), "r34": ("rt_detr", _R34), "r50": ("rt_detr", _R50), "r101": ("rt_detr", _R101),
    "v2-s": ("rt_detr_v2", _R18), "v2-mstar": ("rt_detr_v2", _R34), "v2-m": ("rt_detr_v2", _R50_M),
    "v2-l": ("rt_detr_v2", _R50), "v2-x": ("rt_detr_v2", _R101),
    "v2-s-discrete": ("rt_detr_v2", _R18), "v2-l-discrete": ("rt_detr_v2", _R50),
}


def config_dict(variant: str) -> dict:
    """The config.json of a variant's architecture (ConfigError for a variant this script cannot build)."""
    if variant not in ARCHITECTURES:
        from common.config.specs import load_model
        known = load_model("rtdetr").variants
        why = ("is an ONNX-only line (Ultralytics / Paddle): bring its ONNX with --onnx" if variant in known
               else f"is not a variant of models/rtdetr/model.yaml{did_you_mean(variant, ARCHITECTURES)}")
        raise ConfigError(f"variant '{variant}' {why}; random checkpoints: {', '.join(ARCHITECTURES)}")
    model_type, arch = ARCHITECTURES[variant]
    return {"model_type": model_type, **arch}


def write_random_checkpoint(variant: str, out: Path, seed: int = 0) -> int:
    """Write the checkpoint dir; returns the network's parameter count."""
    import torch

    from models.rtdetr.export import build_config, new_network, redraw_weights
    torch.manual_seed(seed)
    net = redraw_weights(new_network(build_config(config_dict(variant))))
    out.mkdir(parents=True, exist_ok=True)
    net.save_pretrained(str(out), safe_serialization=True)
    return sum(p.numel() for p in net.parameters())


def main(argv=None) -> int:
    from common.config.parser import SuiteParser
    p = SuiteParser(prog="random_checkpoint.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--variant", required=True, help=f"one of {', '.join(ARCHITECTURES)}")
    p.add_argument("--out", required=True, type=Path, help="checkpoint dir to write (pass it as --checkpoint)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    try:
        config_dict(args.variant)   # refused before torch is imported
        n = write_random_checkpoint(args.variant, args.out, args.seed)
    except SuiteError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    print(f"random {args.variant} checkpoint ({n / 1e6:.1f} M parameters, seed {args.seed}): "
          f"{args.out.resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
