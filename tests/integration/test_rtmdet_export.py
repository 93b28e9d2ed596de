"""RTMDet from mmdet checkpoints: the suite's mmcv-free network, key-for-key loading, export.py, and the FP16
scripts driven with --checkpoint/--config.

Checkpoints are written by the tests in mmdet's layout ({'meta': {'dataset_meta': ...}, 'state_dict': ...}) with
random weights and random BN statistics (so every layer changes the outputs); random weights give ~0 AP, so the
script tests check that the run completes, decodes and records, and that the variant's targets are applied.
"""
from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from common.errors import ConfigError, InputError
from common.export.pipeline import DEFAULT_OPSET, batch_is_dynamic, export_cached
from common.harness.runs import RunConfig, run_accuracy
from common.config.specs import load_model
from models.rtmdet import export as rtm_export
from models.rtmdet.build import build_network, load_rtmdet, read_config
from rtmdet_checkpoints import randomize, write_checkpoint
from synthetic_coco import make_synthetic_coco
from helpers import REPO, run_script

CONFIGS = REPO / "models" / "rtmdet" / "configs"
FP16_ACC = "models/rtmdet/scripts/infer_rtmdet_fp16_accuracy.sh"
FP16_PERF = "models/rtmdet/scripts/infer_rtmdet_fp16_performance.sh"

# A config written the way mmdet writes them (python dicts, mmdet type names), self-contained: the nano person
# detector at 320, with a test_cfg of its own so the test can see it is the file that was read.
NANO_CONFIG = """
norm_cfg = dict(type='SyncBN')
act_cfg = dict(type='SiLU', inplace=True)
model = dict(
    type='RTMDet',
    data_preprocessor=dict(type='DetDataPreprocessor', mean=[103.53, 116.28, 123.675],
                           std=[57.375, 57.12, 58.395], bgr_to_rgb=False, batch_augments=None),
    backbone=dict(type='CSPNeXt', arch='P5', expand_ratio=0.5, deepen_factor=0.33, widen_factor=0.25,
                  use_depthwise=True, channel_attention=True, norm_cfg=norm_cfg, act_cfg=act_cfg),
    neck=dict(type='CSPNeXtPAFPN', in_channels=[64, 128, 256], out_channels=64, num_csp_blocks=1,
              use_depthwise=True, expand_ratio=0.5, norm_cfg=norm_cfg, act_cfg=act_cfg),
    bbox_head=dict(type='RTMDetSepBNHead', num_classes=1, in_channels=64, stacked_convs=2, feat_channels=64,
                   anchor_generator=dict(type='MlvlPointGenerator', offset=0, strides=[8, 16, 32]),
                   bbox_coder=dict(type='DistancePointBBoxCoder'),
                   loss_cls=dict(type='QualityFocalLoss', use_sigmoid=True, beta=2.0, loss_weight=1.0),
                   loss_bbox=dict(type='GIoULoss', loss_weight=2.0), with_objectness=False, exp_on_reg=False,
                   share_conv=False, use_depthwise=True, pred_kernel_size=1, norm_cfg=norm_cfg, act_cfg=act_cfg),
    train_cfg=dict(assigner=dict(type='DynamicSoftLabelAssigner', topk=13), allowed_border=-1, pos_weight=-1),
    test_cfg=dict(nms_pre=1000, min_bbox_size=0, score_thr=0.05, nms=dict(type='nms', iou_threshold=0.6),
                  max_per_img=100))
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(320, 320), keep_ratio=True),
    dict(type='Pad', size=(320, 320), pad_val=dict(img=(114, 114, 114))),
    dict(type='PackDetInputs'),
]
"""

# Key names of mmdet's RTMDet modules (mmcv ConvModule conv/bn, DepthwiseSeparableConvModule, CSPLayer, SPP,
# ChannelAttention, PAFPN lists, separated-BN head), as they appear in mmdet checkpoints.
NANO_KEYS = [
    "backbone.stem.0.conv.weight", "backbone.stem.2.bn.running_var",
    "backbone.stage1.0.depthwise_conv.conv.weight", "backbone.stage1.0.pointwise_conv.bn.bias",
    "backbone.stage1.1.main_conv.conv.weight", "backbone.stage1.1.short_conv.bn.weight",
    "backbone.stage1.1.blocks.0.conv1.depthwise_conv.conv.weight",
    "backbone.stage1.1.blocks.0.conv2.pointwise_conv.bn.running_mean", "backbone.stage1.1.attention.fc.bias",
    "backbone.stage4.1.conv1.conv.weight", "backbone.stage4.1.conv2.bn.weight",
    "backbone.stage4.2.final_conv.conv.weight",
    "neck.reduce_layers.1.conv.weight", "neck.top_down_blocks.0.blocks.0.conv2.depthwise_conv.conv.weight",
    "neck.downsamples.1.depthwise_conv.conv.weight", "neck.bottom_up_blocks.1.final_conv.bn.num_batches_tracked",
    "neck.out_convs.2.pointwise_conv.conv.weight", "bbox_head.cls_convs.2.1.depthwise_conv.conv.weight",
    "bbox_head.reg_convs.0.0.pointwise_conv.bn.running_var", "bbox_head.rtm_cls.0.weight", "bbox_head.rtm_reg.2.bias",
]


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    root = tmp_path_factory.mktemp("rtmdet_ckpt")
    config = root / "rtmdet_nano_person.py"
    config.write_text(NANO_CONFIG)
    nano = write_checkpoint(root / "nano.pth", config, seed=1, classes=["person"])
    tiny = write_checkpoint(root / "tiny.pth", CONFIGS / "rtmdet_tiny_coco.py", seed=2)
    coco = root / "coco"
    make_synthetic_coco(coco, n_images=4, seed=3)
    return {"root": root, "config": config, "nano": nano, "tiny": tiny, "coco": coco}


# ---- network and loading ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, published_m", [("tiny", 4.8), ("s", 8.89), ("m", 24.71), ("l", 52.3), ("x", 94.86)])
def test_network_size_matches_published(name, published_m):
    """Parameter counts of the suite's network built from each shipped config match mmdet's published
    Params(M) (configs/rtmdet/README.md): widths, depths and head sharing are right."""
    path = CONFIGS / f"rtmdet_{name}_coco.py"
    net = build_network(read_config(path), path)
    unique = {id(p): p.numel() for p in net.parameters()}     # shared head convs counted once, as mmdet does
    assert sum(unique.values()) / 1e6 == pytest.approx(published_m, rel=0.025)


def test_checkpoint_keys_are_mmdets(work):
    state = torch.load(work["nano"], weights_only=True)["state_dict"]
    missing = [k for k in NANO_KEYS if k not in state]
    assert not missing, f"mmdet key names not produced: {missing}"


def test_shared_head_convs_are_one_tensor_per_stride():
    path = CONFIGS / "rtmdet_tiny_coco.py"
    head = build_network(read_config(path), path).bbox_head
    assert head.cls_convs[2][1].conv.weight is head.cls_convs[0][1].conv.weight
    assert head.cls_convs[2][1].bn is not head.cls_convs[0][1].bn


def test_load_is_key_for_key_and_reproducible(work):
    net, cfg = load_rtmdet(work["nano"], work["config"])
    ref = randomize(build_network(read_config(work["config"]), work["config"]), seed=1).eval()
    x = torch.randn(2, 3, 320, 320, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for a, b in zip(net(x), ref(x)):
            assert torch.equal(a, b)
    assert cfg["model"]["test_cfg"]["score_thr"] == 0.05


@pytest.mark.parametrize("edit, words", [
    (lambda s: s.pop("neck.out_convs.1.pointwise_conv.bn.running_mean"), "missing keys: neck.out_convs.1"),
    (lambda s: s.__setitem__("bbox_head.rtm_obj.0.weight", torch.zeros(1, 64, 1, 1)),
     "unexpected keys: bbox_head.rtm_obj.0.weight"),
])
def test_missing_or_extra_key_is_a_clear_input_error(work, edit, words):
    bad = write_checkpoint(work["root"] / "bad.pth", work["config"], edit=edit)
    with pytest.raises(InputError) as err:
        load_rtmdet(bad, work["config"])
    assert words in str(err.value) and str(bad) in str(err.value)


def test_wrong_config_for_checkpoint(work):
    with pytest.raises(InputError, match="wrong config for this checkpoint"):
        load_rtmdet(work["tiny"], work["config"])


def test_class_count_in_meta_must_match_head(work):
    bad = write_checkpoint(work["root"] / "classes.pth", work["config"], classes=["person", "car"])
    with pytest.raises(InputError, match="meta lists 2 classes"):
        load_rtmdet(bad, work["config"])


def test_config_problems_are_config_errors(tmp_path, work):
    inherits = tmp_path / "inherits.py"
    inherits.write_text("_base_ = 'mmdet::rtmdet/rtmdet_l_8xb32-300e_coco.py'\n")
    with pytest.raises(ConfigError, match="mmdet"):
        read_config(inherits)
    objectness = tmp_path / "objectness.py"
    objectness.write_text(NANO_CONFIG.replace("with_objectness=False", "with_objectness=True"))
    with pytest.raises(ConfigError, match="with_objectness"):
        build_network(read_config(objectness), objectness)
    unknown = tmp_path / "unknown.py"
    unknown.write_text(NANO_CONFIG.replace("num_csp_blocks=1,", "num_csp_blocks=1, use_fancy_block=True,"))
    with pytest.raises(ConfigError, match="use_fancy_block"):
        build_network(read_config(unknown), unknown)
    with pytest.raises(ConfigError, match="variant rtmdet/tiny"):          # wrong config for the variant
        rtm_export.prepare(work["nano"], work["config"], load_model("rtmdet").variant("tiny"))


def test_mmdet_network_gives_the_same_outputs(work):
    """Where mmdet (and so mmcv) is importable, its RTMDet and the suite's agree on the same checkpoint."""
    try:
        from mmdet.registry import MODELS
        from mmdet.utils import register_all_modules
    except Exception as exc:  # noqa: BLE001 - ImportError, or mmcv's missing compiled ops raising at import
        pytest.skip(f"mmdet is not importable here ({type(exc).__name__}: {exc}); it needs mmcv, whose compiled "
                    "ops have no wheel for this platform")
    register_all_modules()
    cfg = read_config(work["config"])
    theirs = MODELS.build(cfg.model)
    theirs.load_state_dict(torch.load(work["nano"], weights_only=True)["state_dict"], strict=True)
    theirs.eval()
    ours, _ = load_rtmdet(work["nano"], work["config"])
    x = torch.randn(2, 3, 320, 320, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        cls, reg = theirs.bbox_head(theirs.neck(theirs.backbone(x)))
        for a, b in zip(ours(x), [*cls, *reg]):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


# ---- export --------------------------------------------------------------------------------------------------

def test_export_onnx_dynamic_batch_and_opset(work, tmp_path):
    variant = load_model("rtmdet").variant("nano-person-obj365")
    out = export_cached(variant, work["nano"], work["config"], tmp_path / "exports", opset=13)
    model = onnx.load(str(out))
    assert model.opset_import[0].version == 13
    assert batch_is_dynamic(model, "input")
    assert [o.name for o in model.graph.output] == ["cls_8", "cls_16", "cls_32", "reg_8", "reg_16", "reg_32"]
    net, _ = load_rtmdet(work["nano"], work["config"])
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    for batch in (3,):                # exported with batch 1
        x = np.random.default_rng(batch).standard_normal((batch, 3, 320, 320)).astype(np.float32)
        got = sess.run(None, {"input": x})
        with torch.no_grad():
            want = [t.numpy() for t in net(torch.from_numpy(x))]
        for g, w in zip(got, want):
            assert g.shape == w.shape and g.shape[0] == batch
            np.testing.assert_allclose(g, w, rtol=1e-3, atol=1e-3)
    again = export_cached(variant, work["nano"], work["config"], tmp_path / "exports", opset=13)
    assert again == out and len(list((tmp_path / "exports").rglob("*.onnx"))) == 1     # cached


def test_export_cli_check_on_images(work, tmp_path):
    out = tmp_path / "nano.onnx"
    rc = rtm_export.main(["--checkpoint", str(work["nano"]), "--config", str(work["config"]), "--out", str(out),
                          "--variant", "nano-person-obj365", "--check", "--num-images", "2", "--images",
                          str(work["coco"] / "images" / "val2017")])
    assert rc == 0 and out.is_file()
    # the exported raw-head ONNX runs as --onnx of its variant
    cfg = RunConfig(model="rtmdet", variant="nano-person-obj365", onnx=str(out), dataset_dir=str(work["coco"]),
                    annotation="instances_val2017.json", max_images=2, results_dir=str(tmp_path / "results"),
                    cache_dir=str(tmp_path / "cache"), progress=False)
    record = run_accuracy(cfg)
    assert record["dataset"]["num_images"] == 2 and record["metrics"]["AP"] < 0.05


def test_export_cli_bad_checkpoint_exit_code(work, tmp_path, capsys):
    bad = write_checkpoint(work["root"] / "bad_cli.pth", work["config"],
                           edit=lambda s: s.pop("bbox_head.rtm_reg.0.bias"))
    rc = rtm_export.main(["--checkpoint", str(bad), "--config", str(work["config"]), "--out", str(tmp_path / "x.onnx")])
    assert rc == 2
    assert "missing keys: bbox_head.rtm_reg.0.bias" in capsys.readouterr().err
    assert not (tmp_path / "x.onnx").exists()


# ---- the FP16 scripts from a checkpoint --------------------------------------------------------------------------

def _accuracy(work, tmp_path, variant, checkpoint, *extra):
    return run_script(FP16_ACC, "--variant", variant, "--checkpoint", checkpoint, *extra,
                      "--dataset-dir", work["coco"], "--ann", "instances_val2017.json", "--max-images", 4,
                      "--results-dir", tmp_path / "results", "--cache-dir", tmp_path / "cache", "--no-progress",
                      "--bs", 2, "--preflight", 0, timeout=300)  # random weights: FP16 flips near-tied boxes,
    # which the pre-flight rightly flags (tests/test_fidelity.py); here the subject is the checkpoint flow


def _check_accuracy_record(proc, tmp_path, variant):
    # random weights: ~0 AP, so the variant's AP target fails (exit 1), after a complete, recorded run
    assert proc.returncode == 1, proc.stderr + proc.stdout
    records = list((tmp_path / "results").rglob("*.json"))
    record = json.loads(next(r for r in records if "accuracy" in r.read_text()).read_text())
    assert record["variant"] == variant and record["precision"] == "fp16"
    assert record["dataset"]["num_images"] == 4
    assert record["verdict"] == "fail" and any(c["metric"] == "AP" and c["status"] == "fail" for c in record["checks"])
    assert 0.0 <= record["metrics"]["AP"] < 0.05


@pytest.mark.slow
def test_scripts_nano_from_checkpoint_and_config(work, tmp_path):
    proc = _accuracy(work, tmp_path, "nano-person-obj365", work["nano"], "--config", work["config"])
    _check_accuracy_record(proc, tmp_path, "nano-person-obj365")
    perf = run_script(FP16_PERF, "--variant", "nano-person-obj365", "--checkpoint", work["nano"],
                      "--config", work["config"], "--bs", 2, "--warmup", 0.1, "--min-duration", 0.3,
                      "--min-iters", 5, "--results-dir", tmp_path / "results", "--cache-dir", tmp_path / "cache",
                      timeout=300)
    assert perf.returncode == 0, perf.stderr + perf.stdout
    assert "fps" in perf.stdout.lower()
    # one export (at the default opset), reused by the performance run
    exports = list((tmp_path / "cache" / "exports").rglob("*.onnx"))
    assert len(exports) == 1 and onnx.load(str(exports[0])).opset_import[0].version == DEFAULT_OPSET


@pytest.mark.slow
def test_scripts_tiny_640_multiclass_from_checkpoint_only(work, tmp_path):
    """A COCO-80 640 variant with only the .pth: the shipped config is used; 80-class decoding runs."""
    proc = _accuracy(work, tmp_path, "tiny", work["tiny"])
    _check_accuracy_record(proc, tmp_path, "tiny")


def test_script_bad_checkpoint_is_exit_2(work, tmp_path):
    bad = write_checkpoint(work["root"] / "bad_script.pth", work["config"],
                           edit=lambda s: s.pop("backbone.stem.0.conv.weight"))
    proc = _accuracy(work, tmp_path, "nano-person-obj365", bad, "--config", work["config"])
    assert proc.returncode == 2
    assert "missing keys: backbone.stem.0.conv.weight" in proc.stderr and str(bad) in proc.stderr



def test_fp16_conversion_with_a_shared_resize_scales_constant(tmp_path):
    """Two Resize nodes reading one `scales` Constant (as in every exported PAFPN) convert to an FP16 graph
    ONNX Runtime loads and that matches FP32."""
    from onnx import TensorProto, helper

    from common.runtime.backends.onnxruntime_backend import convert_fp16
    scales = helper.make_node("Constant", [], ["scales"], value=helper.make_tensor("s", TensorProto.FLOAT, [4],
                                                                                    [1, 1, 2, 2]))
    w = helper.make_tensor("w", TensorProto.FLOAT, [2, 2, 1, 1], [0.5, 0.25, -0.5, 1.0])
    nodes = [scales, helper.make_node("Conv", ["x", "w"], ["c"]),
             helper.make_node("Resize", ["c", "", "scales"], ["up1"], mode="nearest"),
             helper.make_node("Resize", ["up1", "", "scales"], ["y"], mode="nearest")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 3, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 12, 12])], [w])
    src, dst = tmp_path / "fp32.onnx", tmp_path / "fp16.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(src))
    convert_fp16(src, dst)
    x = np.random.default_rng(0).standard_normal((1, 2, 3, 3)).astype(np.float32)
    want = ort.InferenceSession(str(src), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    got = ort.InferenceSession(str(dst), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, want, rtol=1e-2, atol=1e-2)
