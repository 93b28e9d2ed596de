"""Where does an FP16 graph go wrong, and which nodes must stay FP32 to make it sound? (docs/fidelity.md)

One round scans every tensor of the FP16 graph against the FP32 tensor it holds (common/compare/fp16_range.py), the
float16 copies that blocked nodes hand to unblocked readers included, and reports the *origins* only:

- a range finding (overflow / underflow of a float16 tensor, NaN / Inf) whose producing node reads no tensor
  with a range finding: the first tensor of a region FP16 cannot hold;
- a tolerance finding (cosine below node_min_cosine) whose node reads only tensors within tolerance and has no
  range finding upstream: once an overflow is upstream, what follows it is judged in the next round.

The block list of a round is complete for the range findings at once: a float16 tensor the FP32 values say
cannot hold its value needs its producer computed in FP32 and every reader reading it in FP32 (whatever else
is computed in between). Range findings come from the FP32 reference's values, not from what the CPU's FP16 run
shows, so they are the same on any device. A tolerance origin only needs its own node in FP32. The rounds repeat
with the grown list until the FP16 graph built with it has no finding at all.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from common.compare.fp16_range import RANGE_REASONS, load_fp16_graph, range_findings, scan_fp16, summarise

# readers that only look at a tensor's shape: blocking them changes nothing
_SHAPE_ONLY = {"Shape", "Size"}


@dataclass
class NodeFinding:
    name: str  # the FP32 graph's node to blame (the producer; for a weight, its reader)
    op_type: str
    tensor: str  # the FP16 graph's tensor that goes bad (a float16 copy of a blocked node's output too)
    reason: str  # overflow | underflow | nonfinite | tolerance
    cosine: float  # the FP16 graph's value against the FP32 one (0 with NaN / Inf)
    norm_err: float | None
    ref_max_abs: float
    count: int = 0

    def line(self) -> str:
        """The finding in one printed line: node, tensor, why, and how far from the FP32 value."""
        extra = f", {self.count} values" if self.count else ""
        err = f", max err {self.norm_err:.4f} of range" if self.norm_err is not None else ""
        return (
            f"{self.name} ({self.op_type}) -> {self.tensor}: {self.reason}; |ref| max {self.ref_max_abs:.4g}, "
            f"cosine {self.cosine:.6f}{err}{extra}"
        )


def _graph_index(model32):
    nodes = {n.name: n for n in model32.graph.node if n.name}
    producer = {o: n for n in model32.graph.node for o in n.output}
    readers: dict = {}
    for n in model32.graph.node:
        for i in n.input:
            readers.setdefault(i, []).append(n)
    return nodes, producer, readers


def origins(scan) -> list:
    """The checks that start a problem (module docstring), in the FP16 graph's order."""
    bad, ranged, after_range = set(), set(), set()
    found = []
    for c in scan.checks:
        reads = c.inputs
        if any(i in ranged or i in after_range for i in reads):
            after_range.add(c.tensor)
        if c.reason is None:
            continue
        if c.reason in RANGE_REASONS:
            if not any(i in ranged for i in reads):
                found.append(c)
            ranged.add(c.tensor)
        elif not any(i in bad for i in reads) and c.tensor not in after_range:
            found.append(c)
        bad.add(c.tensor)
    return found


def find_fp16_culprits(
    onnx_path: Path,
    x: np.ndarray,
    input_name: str,
    tol,
    block_ops=(),
    block_nodes=(),
    chunk: int = 1500,
    workdir: Path | None = None,
    ref_cache: dict | None = None,
    extra_inputs=None,
) -> dict:
    """One round: the FP16 conversion with `block_nodes` kept FP32, scanned on the images `x`.
    Returns the origins (`findings`), the nodes to add to the block list (`to_block`) and the range check."""
    from onnxruntime.transformers import float16

    from common.runtime.backends.onnxruntime_backend import FP16_ALWAYS_FP32

    model32, model16 = load_fp16_graph(onnx_path, None, block_ops, block_nodes, workdir)
    scan = scan_fp16(model32, model16, x, input_name, tol, ref_cache=ref_cache, chunk=chunk, extra_inputs=extra_inputs)
    nodes, producer, readers = _graph_index(model32)
    op_blocked = set(block_ops) | set(FP16_ALWAYS_FP32) | set(float16.DEFAULT_OP_BLOCK_LIST)

    def blame(c) -> onnx.NodeProto | None:
        """The FP32 node a finding is about: its producer, or for a weight / graph input its first reader."""
        node = nodes.get(c.node) if c.node else None
        if node is None:
            node = producer.get(c.source)
        if node is None:
            node = next(iter(readers.get(c.source, [])), None)
        return node

    findings = []
    for c in origins(scan):
        node = blame(c)
        if node is not None:
            findings.append(
                NodeFinding(node.name, node.op_type, c.tensor, c.reason, c.cosine, c.norm_err, c.ref_max_abs, c.count)
            )
    to_block = []
    for c in range_findings(scan):
        if c.reason == "nonfinite":
            continue  # computed from a good value, its node is an origin below; else it follows a range finding
        p = producer.get(c.source)
        to_block += ([p] if p is not None else []) + [
            r for r in readers.get(c.source, []) if r.op_type not in _SHAPE_ONLY
        ]
    for f in findings:
        if f.reason in ("nonfinite", "tolerance") and f.name in nodes:
            to_block.append(nodes[f.name])
    names = [n.name for n in to_block if n.name and n.op_type not in op_blocked]
    return {
        "watched": scan.watched,
        "scanned": scan.scanned,
        "unmapped": scan.unmapped,
        "diverged": scan.diverged,
        "findings": findings,
        "to_block": list(dict.fromkeys(names)),
        "range": summarise(scan),
        "clean": not any(c.reason for c in scan.checks),
    }


def localise(
    onnx_path: Path,
    x: np.ndarray,
    input_name: str,
    tol,
    block_ops=(),
    block_nodes=(),
    max_rounds: int = 6,
    workdir: Path | None = None,
    log=print,
    extra_inputs=None,
) -> dict:
    """Rounds of find_fp16_culprits, each blocking what the last one found, until the FP16 graph built with the
    list has no finding (range check passed, every tensor within the node tolerance). The FP32 values are
    computed once for all rounds. Returns the first round's origins and the block list."""
    blocked = list(block_nodes)
    rounds = []
    ref_cache: dict = {}
    res = None
    for k in range(max_rounds):
        res = find_fp16_culprits(
            onnx_path,
            x,
            input_name,
            tol,
            block_ops,
            blocked,
            workdir=workdir,
            ref_cache=ref_cache,
            extra_inputs=extra_inputs,
        )
        rounds.append(
            {
                "blocked_before": list(blocked),
                "scanned": res["scanned"],
                "watched": res["watched"],
                "findings": [dataclasses.asdict(f) for f in res["findings"]],
                "range": res["range"],
                "clean": res["clean"],
            }
        )
        for f in res["findings"]:
            log(f"  round {k + 1}: {f.line()}")
        new = [n for n in res["to_block"] if n not in blocked]
        if res["clean"] or not new:
            break
        log(f"  round {k + 1}: {len(new)} node(s) to keep in FP32: {', '.join(new)}")
        blocked += new
    return {
        "first_nodes": rounds[0]["findings"],
        "rounds": rounds,
        "block_nodes": blocked,
        "added": blocked[len(block_nodes) :],
        "clean": bool(res and res["clean"]),
        "range": res["range"] if res else None,
    }
