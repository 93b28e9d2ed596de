"""Real-weights proof of the suite's mmcv-free RTMDet network (models/rtmdet/network.py).

No mmdet checkpoint is reachable offline, but the shared end2end graph holds a trained RTMDet-nano person network
(BN folded into the convs by the exporter). Its 123 convolutions, in the graph's order, are loaded into the
suite's network built from models/rtmdet/configs/rtmdet_nano_320_person.py (each conv's folded bias goes into
an identity BN), and the network's raw head outputs must equal the graph's own raw head outputs on real images.
That checks the architecture (every conv's shape, the wiring of backbone, PAFPN and head, the channel attention,
SPP, the stride scaling of the distances) against a trained model, not against itself.
"""
import numpy as np
import onnx
import onnx.numpy_helper as nh
import onnxruntime as ort
import pytest
import torch

from common.data.coco import read_image
from common.harness.runs import RunConfig, run_accuracy
from common.data.preprocess import Preprocessor
from common.config.specs import load_model
from helpers import REPO, detections_ap
from models.rtmdet.build import build_network, read_config
from models.rtmdet.network import ConvBN

ANN = "instances_val2017_person_subset350.json"
CONFIG = REPO / "models" / "rtmdet" / "configs" / "rtmdet_nano_320_person.py"


def transplant(net: torch.nn.Module, graph: onnx.ModelProto):
    """Load the graph's Conv weights into `net`, matched by execution order and checked by shape."""
    order = []
    hooks = [m.register_forward_hook(lambda mod, i, o: order.append(mod))
             for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    with torch.no_grad():
        net(torch.zeros(1, 3, 320, 320))
    for h in hooks:
        h.remove()
    owner = {id(m.conv): m for m in net.modules() if isinstance(m, ConvBN)}
    tensors = {t.name: nh.to_array(t) for t in graph.graph.initializer}
    convs = [n for n in graph.graph.node if n.op_type == "Conv"]
    assert len(convs) == len(order), f"graph has {len(convs)} convs, the network runs {len(order)}"
    with torch.no_grad():
        for conv, node in zip(order, convs):
            weight, bias = tensors[node.input[1]], tensors[node.input[2]]
            assert tuple(weight.shape) == tuple(conv.weight.shape), (node.name, weight.shape, conv.weight.shape)
            conv.weight.copy_(torch.from_numpy(weight.copy()))
            if conv.bias is not None:
                conv.bias.copy_(torch.from_numpy(bias.copy()))
                continue
            bn = owner[id(conv)].bn             # folded conv: BN becomes "+ bias"
            bn.weight.fill_(1.0)
            bn.bias.copy_(torch.from_numpy(bias.copy()))
            bn.running_mean.zero_()
            bn.running_var.fill_(1.0 - bn.eps)
    return net.eval()


def test_network_reproduces_trained_graph(rtmdet_onnx, rtmdet_raw_onnx, shared_data, tmp_path):
    variant = load_model("rtmdet").variant("nano-person-raw")
    names = list(variant.output["cls"]) + list(variant.output["reg"])
    raw = rtmdet_raw_onnx
    net = transplant(build_network(read_config(CONFIG), CONFIG), onnx.load(str(rtmdet_onnx)))
    pre = Preprocessor(variant.preprocess, variant.height, variant.width)
    images = sorted((shared_data / "coco" / "val2017").glob("*.jpg"))[:6]
    batch = np.stack([pre(read_image(str(p)))[0] for p in images])
    want = ort.InferenceSession(str(raw), providers=["CPUExecutionProvider"]).run(names, {"input": batch})
    with torch.no_grad():
        got = [t.numpy() for t in net(torch.from_numpy(batch))]
    for name, g, w in zip(names, got, want):
        assert g.shape == w.shape, name
        diff = np.abs(g - w)
        print(f"{name}: max abs diff {diff.max():.2e} (values up to {np.abs(w).max():.1f})")
        np.testing.assert_allclose(g, w, rtol=1e-3, atol=1e-3, err_msg=name)
    # the comparison has teeth: trained outputs are far from constant
    assert np.ptp(want[0]) > 5 and np.ptp(want[3]) > 10


IMAGES = 150


@pytest.mark.slow
def test_checkpoint_flow_with_trained_weights(rtmdet_onnx, rtmdet_fp32_pass, coco_layout, tmp_path):
    """The transplanted trained weights saved as an mmdet checkpoint, run the way a user runs a .pth
    (--checkpoint/--config: export, onnxsim, FP16 engine, rtmdet_raw decoding), reach the person AP of the
    trained graph with its own NMS on the same shared images (the first IMAGES by id: FP16 on the CPU costs twice
    FP32, and the graph's side comes from the session's FP32 pass). The decode settings differ (the checkpoint
    variant uses mmdet's test_cfg, the graph score 0.05 / IoU 0.6 / 100 per image), hence the 0.02 margin."""
    net = transplant(build_network(read_config(CONFIG), CONFIG), onnx.load(str(rtmdet_onnx)))
    ckpt = tmp_path / "nano_trained.pth"
    torch.save({"meta": {"dataset_meta": {"classes": ("person",)}}, "state_dict": net.state_dict()}, ckpt)

    def ap(**kw):
        cfg = RunConfig(model="rtmdet", dataset_dir=str(coco_layout), annotation=ANN, progress=False, batch_size=8,
                        results_dir=str(tmp_path / "results"), cache_dir=str(tmp_path / "cache"), preflight=0,
                        **kw)   # the AP is compared; the pre-flight has its own tests
        return run_accuracy(cfg)["metrics"]

    assert rtmdet_fp32_pass.record["dataset"]["num_images"] == 350
    checkpoint = ap(variant="nano-person-obj365", checkpoint=str(ckpt), config=str(CONFIG), precision="fp16",
                    max_images=IMAGES)
    graph = detections_ap(rtmdet_fp32_pass.detections, coco_layout / "annotations" / ANN, IMAGES)  # same images
    print(f"person AP: trained end2end graph FP32 {graph['AP']:.4f} / AP50 {graph['AP50']:.4f}; "
          f"same weights from a checkpoint, exported, FP16, suite decoding {checkpoint['AP']:.4f} / "
          f"AP50 {checkpoint['AP50']:.4f}")
    assert graph["AP"] > 0.3
    assert checkpoint["AP"] >= graph["AP"] - 0.02 and checkpoint["AP50"] >= graph["AP50"] - 0.02
