"""Random-weight RTMDet checkpoints in mmdet's layout ({'meta': {'dataset_meta': ...}, 'state_dict': ...}), for
the tests that need a checkpoint where no trained one can be downloaded (tests/integration/test_rtmdet_export.py,
the docs walk)."""
from __future__ import annotations

import torch

from models.rtmdet.build import build_network, read_config


def randomize(net: torch.nn.Module, seed: int):
    """Random weights and BN statistics, so a wrong wiring anywhere shows in the outputs."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in net.state_dict().items():
            if not t.is_floating_point():
                continue
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g) * 0.5 + 0.75)
            elif name.endswith("bn.weight"):
                t.copy_(torch.rand(t.shape, generator=g) * 0.5 + 0.75)
            elif name.endswith(("running_mean", "bias")):
                t.copy_(torch.randn(t.shape, generator=g) * 0.05)
            else:
                fan_in = t[0].numel() if t.ndim > 1 else 1
                t.copy_(torch.randn(t.shape, generator=g) * (1.0 / fan_in) ** 0.5)
    return net


def write_checkpoint(path, config, seed=0, classes=None, edit=None):
    """A random-weight checkpoint in mmdet's layout for the network `config` describes."""
    net = randomize(build_network(read_config(config), config), seed)
    state = net.state_dict()
    if edit:
        edit(state)
    meta = {"dataset_meta": {"classes": tuple(classes or [f"class{i}" for i in range(net.bbox_head.num_classes)])},
            "epoch": 100, "mmengine_version": "0.10.7"}
    torch.save({"meta": meta, "state_dict": state}, path)
    return path
