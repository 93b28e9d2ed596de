"""The authors' RT-DETR / RT-DETRv2 .pth layout (models/rtdetr/rtdetr_original_keys.py): a random transformers
network is written under the authors' key names (the inverse map), loaded back through the forward map by
export.py, and must compute the same outputs; then exported and checked at the detection level."""
from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("transformers")

from tiny_rtdetr import SIZE, tiny_network, tiny_rtdetr_spec  # noqa: E402

import export as rtdetr_export  # noqa: E402
from rtdetr_original_keys import to_original, to_transformers  # noqa: E402

from common.errors import InputError  # noqa: E402

# names as the authors' modules spell them (PResNet vd, HybridEncoder, RTDETRTransformerv2)
AUTHORS_KEYS = ["backbone.conv1.conv1_1.conv.weight", "backbone.conv1.conv1_3.norm.running_var",
                "backbone.res_layers.0.blocks.0.branch2a.conv.weight", "backbone.res_layers.1.blocks.0.short.conv.conv.weight",
                "backbone.res_layers.0.blocks.0.short.norm.weight", "encoder.input_proj.0.conv.weight",
                "encoder.encoder.0.layers.0.self_attn.in_proj_weight", "encoder.encoder.0.layers.0.linear1.weight",
                "encoder.fpn_blocks.0.bottlenecks.0.conv1.conv.weight", "decoder.input_proj.2.norm.bias",
                "decoder.enc_output.proj.weight", "decoder.enc_score_head.weight", "decoder.denoising_class_embed.weight",
                "decoder.decoder.layers.1.cross_attn.sampling_offsets.weight", "decoder.decoder.layers.0.norm3.weight",
                "decoder.dec_score_head.1.bias", "decoder.dec_bbox_head.0.layers.2.weight"]


def _save_authors_pth(net, path, extra_layer: bool = False):
    state = to_original(net.state_dict())
    # what a release carries besides: precomputed anchors, and (eval_idx < last) a decoder layer never run
    state["decoder.anchors"] = torch.zeros(1, 84, 4)
    state["decoder.valid_mask"] = torch.ones(1, 84, 1, dtype=torch.bool)
    if extra_layer:
        for k in [k for k in state if k.startswith(("decoder.decoder.layers.1.", "decoder.dec_score_head.1."))]:
            state[k.replace(".1.", ".2.", 1)] = state[k].clone()
    torch.save({"ema": {"module": state}, "last_epoch": 71}, str(path))
    return state


@pytest.mark.parametrize("model_type,layer_type", [("rt_detr", "basic"), ("rt_detr_v2", "basic"),
                                                   ("rt_detr", "bottleneck")])
def test_authors_layout_loads_to_the_same_network(tmp_path, model_type, layer_type):
    net = tiny_network(model_type, seed=4, num_denoising=10, layer_type=layer_type)
    state = _save_authors_pth(net, tmp_path / "release.pth", extra_layer=True)
    assert set(AUTHORS_KEYS) <= set(state), sorted(set(AUTHORS_KEYS) - set(state))
    if layer_type == "bottleneck":
        assert "backbone.res_layers.3.blocks.0.branch2c.norm.running_mean" in state
    assert not any(k.startswith("model.") for k in state)
    net.config.to_json_file(str(tmp_path / "config.json"))
    loaded = rtdetr_export.load_network(tmp_path / "release.pth", tmp_path / "config.json")
    x = torch.rand(2, 3, SIZE, SIZE)
    with torch.no_grad():
        a, b = net(pixel_values=x), loaded(pixel_values=x)
    assert torch.equal(a.logits, b.logits) and torch.equal(a.pred_boxes, b.pred_boxes)


def test_unknown_keys_and_missing_weights_are_input_errors(tmp_path):
    net = tiny_network("rt_detr", seed=5)
    state = to_original(net.state_dict())
    with pytest.raises(InputError, match="not RT-DETR keys"):
        to_transformers({"model": {**state, "head.fc.weight": torch.zeros(1)}})
    del state["decoder.enc_score_head.weight"]
    torch.save({"model": state}, str(tmp_path / "broken.pth"))
    net.config.to_json_file(str(tmp_path / "config.json"))
    with pytest.raises(InputError, match="1 missing"):
        rtdetr_export.load_network(tmp_path / "broken.pth", tmp_path / "config.json")
    with pytest.raises(InputError, match="needs --config"):
        rtdetr_export.load_network(tmp_path / "broken.pth", None)


def test_authors_pth_exports_and_checks(tmp_path, capsys):
    net = tiny_network("rt_detr", seed=6)
    _save_authors_pth(net, tmp_path / "r18.pth")
    net.config.to_json_file(str(tmp_path / "config.json"))
    spec = tiny_rtdetr_spec(tmp_path / "model.yaml")
    rc = rtdetr_export.main(["--checkpoint", str(tmp_path / "r18.pth"), "--config", str(tmp_path / "config.json"),
                             "--model", str(spec), "--out", str(tmp_path / "r18.onnx"), "--check"])
    captured = capsys.readouterr()
    assert rc == 0, captured.out + captured.err
    res = json.loads(captured.out[captured.out.index("{"):captured.out.rindex("}") + 1])
    assert res["agreement"] >= 0.98 and res["torch_detections"] > 0
