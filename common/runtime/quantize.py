"""INT8: a quantised ONNX built with ONNX Runtime's static quantisation from calibration images.

The same quantised ONNX serves two backends: ONNX Runtime runs it as it is, and the IGIE backend compiles it with
precision="int8" as Iluvatar's public recipes do (they quantise with ONNX Runtime, not relay.quantize).

Settings come from an `int8:` section of a model variant (read_int8_section; every field has a default):

    int8:
      format: qdq              # qdq | qoperator
      per_channel: true        # per-output-channel weight scales (QDQ needs opset >= 13: the graph is converted)
      activation_type: quint8  # quint8 | qint8
      weight_type: qint8       # qint8 | quint8
      method: minmax           # minmax | percentile | entropy
      percentile: 99.999       # percentile method only
      calib_images: 32         # calibration images used (--calib-images overrides)
      op_types: [Conv]         # op types quantised ([] = every type ONNX Runtime can quantise)
      keep_fp32: []            # node names left in FP32 (scripts/int8_sensitivity.py proposes them)
      float_outputs: [Conv]    # op types whose outputs stay float (the following activation reads them)
      fidelity: {}             # the accuracy pre-flight's INT8 tolerance (defaults: Int8Settings.fidelity)
      target: onnxruntime      # the INT8 engine the graph is for (int8_structure.TARGETS; default: the backend)
      rule: true               # keep the Convs the target's scale granularity cannot hold (int8_structure)
      quantizer: onnxruntime   # onnxruntime (quantize_static) | nncf (NNCF post-training quantisation of the ONNX)

The post-processing subgraph (decode, score activation, TopK, NMS, gathers; found from the graph by
int8_structure.split_network) is never quantised and never calibrated: calibration runs on the network alone.

Calibration runs at batch 1 (as the vendor's recipes do) on images that are never evaluation images
(common/data/calibration.py refuses them). Its tensor ranges are cached by the float graph, the calibration set and
the calibration settings, so rebuilding with another keep_fp32 list does not calibrate again.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from common.errors import ConfigError, InputError, RuntimeFailure
from common.tolerances import Tolerance

FORMATS = ("qdq", "qoperator")
QUANT_TYPES = ("quint8", "qint8")
METHODS = ("minmax", "percentile", "entropy")
QUANTIZERS = ("onnxruntime", "nncf")
# ONNX names of the OpenVINO op types a target leaves float (int8_structure.Target.float_ops)
_ONNX_OP = {"Interpolate": "Resize"}
DEFAULT_CALIB_IMAGES = 32
# what the quantised graph is made of beyond the quantiser's own output (in the engine key): 2 = nodes left
# float read float inputs even where they share a tensor with a quantised node (int8_structure.float_inputs_for)
QDQ_GRAPH_VERSION = 2
# per-channel DequantizeLinear (its `axis` attribute) exists from opset 13
PER_CHANNEL_MIN_OPSET = 13


@dataclass(frozen=True)
class Int8Settings:
    format: str = "qdq"
    per_channel: bool = True
    activation_type: str = "quint8"
    weight_type: str = "qint8"
    method: str = "minmax"
    percentile: float = 99.999
    calib_images: int = DEFAULT_CALIB_IMAGES
    op_types: tuple = ("Conv",)
    keep_fp32: tuple = ()
    # op types whose outputs are not quantised: the activation after a Conv (SiLU here) then reads the float
    # output, as fused Conv+activation INT8 kernels do; quantising the pre-activation (ranges of +-200 for
    # values of mean magnitude ~4) costs most of RTMDet-nano's accuracy
    float_outputs: tuple = ("Conv",)
    # the accuracy pre-flight's tolerance for INT8 (common.tolerances.Tolerance fields): FP16's is too tight for
    # an engine that is meant to differ by a few score points; it still stops an INT8 engine that lost its accuracy
    fidelity: tuple = (
        ("min_cosine", 0.99),
        ("max_score_diff", 0.05),
        ("max_ap_diff", 0.05),
        ("min_mean_iou", 0.85),
        ("min_matched", 0.9),
    )
    # the INT8 engine the QDQ graph is for (common.runtime.int8_structure.TARGETS); "" = the building backend's own
    target: str = ""
    # keep in FP32 the Convs whose input the target's activation scale granularity cannot hold (keep_by_rule)
    rule: bool = True
    # who writes the QDQ graph: ONNX Runtime's quantize_static, or NNCF (optional layer requirements-openvino.txt)
    quantizer: str = "onnxruntime"
    # fold the mean shift that rounding each INT8 Conv's weights causes back into its bias (from the calibration
    # images' per-channel input means; int8_structure.correct_biases); ONNX Runtime's quantiser only
    bias_correction: bool = False

    def calibration_key(self) -> dict:
        """What changes the calibration ranges (not the quantiser options applied after them)."""
        from common.runtime.int8_structure import RULE_VERSION

        return {
            "method": self.method,
            "percentile": self.percentile if self.method == "percentile" else None,
            "op_types": sorted(self.op_types),
            "opset": self.target_opset(0),
            "network_only": RULE_VERSION,
        }

    def key(self) -> dict:
        """Every setting that changes the engine, for the cache key."""
        d = asdict(self)
        d.pop("fidelity")
        d["graph"] = QDQ_GRAPH_VERSION
        if self.rule:
            from common.runtime.int8_structure import RULE_VERSION

            d["rule"] = RULE_VERSION
        for k in ("op_types", "keep_fp32", "float_outputs"):
            d[k] = sorted(d[k])
        return d

    def target_opset(self, opset: int) -> int:
        return max(opset, PER_CHANNEL_MIN_OPSET) if self.per_channel and self.format == "qdq" else opset


_FIELDS = {
    "format",
    "per_channel",
    "activation_type",
    "weight_type",
    "method",
    "percentile",
    "calib_images",
    "op_types",
    "keep_fp32",
    "float_outputs",
    "fidelity",
    "target",
    "rule",
    "quantizer",
    "bias_correction",
}


def read_int8_section(raw, path=None, where: str = "int8") -> Int8Settings:
    """The typed int8 settings of a variant's `int8:` mapping (None = all defaults); a ConfigError naming the
    file and the field for anything else."""
    if raw is None:
        return Int8Settings()

    def fail(key: str, message: str):
        raise ConfigError(f"{where}.{key}: {message}" if key else f"{where}: {message}", path)

    if not isinstance(raw, dict):
        fail("", f"expected a mapping, got {type(raw).__name__}")
    unknown = sorted(set(map(str, raw)) - _FIELDS)
    if unknown:
        fail(unknown[0], f"unknown setting; known: {', '.join(sorted(_FIELDS))}")
    d = Int8Settings()
    values = {}
    for key in ("format", "activation_type", "weight_type", "method"):
        if raw.get(key) is not None:
            choices = {"format": FORMATS, "method": METHODS}.get(key, QUANT_TYPES)
            v = raw[key]
            if not isinstance(v, str) or v.lower() not in choices:
                fail(key, f"{v!r} is not one of {', '.join(choices)}")
            values[key] = v.lower()
    for key in ("per_channel", "rule", "bias_correction"):
        if raw.get(key) is not None:
            if not isinstance(raw[key], bool):
                fail(key, f"expected true or false, got {raw[key]!r}")
            values[key] = raw[key]
    if raw.get("quantizer") is not None:
        if raw["quantizer"] not in QUANTIZERS:
            fail("quantizer", f"{raw['quantizer']!r} is not one of {', '.join(QUANTIZERS)}")
        values["quantizer"] = raw["quantizer"]
    if raw.get("target") is not None:
        from common.runtime.int8_structure import TARGETS

        if raw["target"] not in TARGETS:
            fail("target", f"{raw['target']!r} is not one of {', '.join(TARGETS)}")
        values["target"] = raw["target"]
    if raw.get("percentile") is not None:
        v = raw["percentile"]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 50 < v <= 100:
            fail("percentile", f"expected a number in (50, 100], got {v!r}")
        values["percentile"] = float(v)
    if raw.get("calib_images") is not None:
        v = raw["calib_images"]
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            fail("calib_images", f"expected a positive integer, got {v!r}")
        values["calib_images"] = v
    for key in ("op_types", "keep_fp32", "float_outputs"):
        if raw.get(key) is not None:
            v = raw[key]
            if not isinstance(v, list) or not all(isinstance(s, str) and s for s in v):
                fail(key, f"expected a list of names, got {v!r}")
            values[key] = tuple(v)
    if raw.get("fidelity") is not None:
        v, known = raw["fidelity"], {f for f in Tolerance.__dataclass_fields__ if f != "outputs"}
        if not isinstance(v, dict):
            fail("fidelity", f"expected a mapping, got {v!r}")
        for k, x in v.items():
            if k not in known:
                fail(f"fidelity.{k}", f"unknown; known: {', '.join(sorted(known))}")
            if isinstance(x, bool) or not isinstance(x, (int, float)) or x < 0:
                fail(f"fidelity.{k}", f"expected a number >= 0, got {x!r}")
        values["fidelity"] = tuple(sorted({**dict(d.fidelity), **{k: float(x) for k, x in v.items()}}.items()))
    return replace(d, **values)


def preflight_tolerance(variant, tol):
    """The accuracy pre-flight's tolerance for an INT8 run: the variant's, loosened by its int8.fidelity."""
    return replace(tol, **dict(settings_for(variant).fidelity))


def settings_for(variant, calib_images: int | None = None) -> Int8Settings:
    """The variant's int8 settings; an explicit calib_images (the --calib-images flag) wins over the spec's."""
    s = read_int8_section(
        variant.int8_section,
        variant.source or f"models/{variant.model}/model.yaml",
        f"variants.{variant.name}.int8",
    )
    return replace(s, calib_images=calib_images) if calib_images else s


# ---------------------------------------------------------------- calibration data


def _calibration_reader(batches: list, input_name: str, extra_inputs: dict):
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        """One preprocessed calibration image per call (batch 1, as the vendor's recipes calibrate)."""

        def __init__(self):
            self._it = iter(batches)

        def get_next(self):
            x = next(self._it, None)
            if x is None:
                return None
            return {input_name: x, **{k: np.asarray(v, np.float32)[None] for k, v in extra_inputs.items()}}

        def rewind(self):
            self._it = iter(batches)

        def __len__(self):
            return len(batches)

    return Reader()


# ---------------------------------------------------------------- the float graph quantisation starts from


def _opset(model) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def prepare_float_model(onnx_path: Path, settings: Int8Settings, out_path: Path) -> Path:
    """The float graph at the opset the settings need (per-channel QDQ: >= 13, onnx.version_converter)."""
    import onnx

    try:
        model = onnx.load(str(onnx_path))
    except Exception as exc:  # noqa: BLE001 - onnx raises DecodeError / ValueError / OSError variants
        raise InputError(f"cannot load ONNX model ({type(exc).__name__}: {exc})", onnx_path) from None
    have = _opset(model)
    want = settings.target_opset(have)
    if want != have:
        from onnx import version_converter

        try:
            model = version_converter.convert_version(model, want)
        except Exception as exc:  # noqa: BLE001 - the converter raises plain RuntimeErrors per op adapter
            raise RuntimeFailure(
                f"per-channel QDQ needs opset >= {want}, and converting this opset-{have} "
                f"graph failed ({str(exc).splitlines()[0]}); use per_channel: false",
                onnx_path,
            ) from None
        # the converter leaves ir_version as it was; opset 13 needs IR >= 7
        model.ir_version = max(model.ir_version, 7)
    # nodes are excluded from quantisation by name: the converter's own nodes have none
    taken = {n.name for n in model.graph.node}
    for k, n in enumerate(model.graph.node):
        if not n.name:
            n.name = next(c for c in (f"{n.op_type}__{k}", f"{n.op_type}__{k}_{len(taken)}") if c not in taken)
            taken.add(n.name)
    onnx.save(model, str(out_path))
    return out_path


# ---------------------------------------------------------------- quantisation


def _quant_args(settings: Int8Settings):
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType

    types = {"quint8": QuantType.QUInt8, "qint8": QuantType.QInt8}
    methods = {
        "minmax": CalibrationMethod.MinMax,
        "percentile": CalibrationMethod.Percentile,
        "entropy": CalibrationMethod.Entropy,
    }
    return {
        "quant_format": QuantFormat.QDQ if settings.format == "qdq" else QuantFormat.QOperator,
        "per_channel": settings.per_channel,
        "activation_type": types[settings.activation_type],
        "weight_type": types[settings.weight_type],
        "calibrate_method": methods[settings.method],
        "op_types_to_quantize": list(settings.op_types) or None,
        "extra_options": {
            **({"CalibPercentile": settings.percentile} if settings.method == "percentile" else {}),
            "OpTypesToExcludeOutputQuantization": list(settings.float_outputs),
        },
    }


def calibration_cache_path(cache_root: Path, float_sha256: str, calib_sha256: str, settings: Int8Settings) -> Path:
    payload = json.dumps(
        {"float": float_sha256, "calibration": calib_sha256, **settings.calibration_key()}, sort_keys=True
    )
    return Path(cache_root) / "calibration" / f"{hashlib.sha256(payload.encode()).hexdigest()[:32]}.json"


def resolve_target(settings: Int8Settings, backend: str = "onnxruntime", path=None):
    """The INT8 target of a build (the spec's int8.target, else the building backend's own), refusing settings it
    cannot run (ConfigError before anything is built)."""
    from common.runtime.int8_structure import TARGETS, check_settings

    name = settings.target or backend
    if name not in TARGETS:
        raise ConfigError(f"no INT8 target '{name}'; known: {', '.join(TARGETS)} (set int8.target)", path)
    tgt = TARGETS[name]
    why = check_settings(tgt, settings)
    if why:
        raise ConfigError(f"INT8 target {name} cannot run this QDQ graph: {'; '.join(why)}", path)
    return tgt


def conv_stats_cached(
    float_path: Path, float_sha: str, calib, input_name: str, extra_inputs: dict, cache_root: Path
) -> list:
    """Per-channel Conv input statistics (int8_structure.conv_input_stats) on the calibration images, cached by
    the float graph and the calibration set."""
    import onnx

    from common.engine_cache import atomic_write_bytes
    from common.runtime.int8_structure import RULE_VERSION, ConvInput, conv_input_stats

    key = hashlib.sha256(
        json.dumps({"float": float_sha, "calibration": calib.sha256, "v": RULE_VERSION}, sort_keys=True).encode()
    ).hexdigest()[:32]
    path = Path(cache_root) / "conv-stats" / f"{key}.json"
    try:
        rows = json.loads(path.read_text())
        return [
            ConvInput(
                r["node"],
                r["tensor"],
                r["group"],
                r["channels"],
                np.array(r["cmin"]),
                np.array(r["cmax"]),
                np.array(r["csq"]),
                r["count"],
                np.array(r["out_ms"]),
                np.array(r["wsq"]),
                np.array(r["csum"]),
            )
            for r in rows
        ]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    stats = conv_input_stats(onnx.load(str(float_path)), calib.batches(1), input_name, extra_inputs)
    rows = [
        {
            "node": c.node,
            "tensor": c.tensor,
            "group": c.group,
            "channels": c.channels,
            "cmin": c.cmin.tolist(),
            "cmax": c.cmax.tolist(),
            "csq": c.csq.tolist(),
            "count": c.count,
            "out_ms": c.out_ms.tolist(),
            "wsq": c.wsq.tolist(),
            "csum": c.csum.tolist() if c.csum is not None else None,
        }
        for c in stats
    ]
    try:
        atomic_write_bytes(path, json.dumps(rows).encode(), durable=False)
    except OSError:
        pass
    return stats


def quantize_onnx(
    onnx_path: Path,
    out_path: Path,
    calib,
    settings: Int8Settings,
    input_name: str,
    cache_root: Path,
    extra_inputs: dict | None = None,
    work_dir: Path | None = None,
    backend: str = "onnxruntime",
) -> dict:
    """Write the quantised ONNX to out_path; calib is a common.data.calibration.CalibrationSet (or anything with
    .sha256 and .batches(1)). The post-processing subgraph is left float and uncalibrated; with settings.rule the
    Convs the target cannot hold stay FP32 (`kept_by_rule`: [(node, reason)]). Returns what was done (opsets,
    calibration cache hit, nodes quantised, kept nodes and why)."""
    import tempfile

    import onnx
    from onnxruntime.quantization import quantize_static

    from common.engine_cache import atomic_write_bytes, file_sha256
    from common.runtime.int8_structure import (
        check_qdq_graph,
        float_inputs_for,
        keep_by_rule,
        network_model,
        split_network,
    )

    tgt = resolve_target(settings, backend, onnx_path)
    with tempfile.TemporaryDirectory(prefix="int8.", dir=work_dir) as tmp:
        float_path = prepare_float_model(onnx_path, settings, Path(tmp) / "float.onnx")
        float_sha = file_sha256(float_path)
        fmodel = onnx.load(str(float_path))
        try:
            split = split_network(fmodel)
        except ValueError as exc:
            raise InputError(f"cannot quantise: {exc}", onnx_path) from None
        kept, stats, corrected = [], [], []
        if settings.rule or settings.bias_correction:
            stats = conv_stats_cached(float_path, float_sha, calib, input_name, extra_inputs or {}, cache_root)
        if settings.rule:
            kept = [(n, why) for n, why in keep_by_rule(stats, tgt) if n not in settings.keep_fp32]
        cache_file = calibration_cache_path(cache_root, float_sha, calib.sha256, settings)
        hit = cache_file.is_file()
        # ONNX Runtime writes the ranges it computed to the cache path: write them to a temporary name first so a
        # killed build never leaves half a calibration behind
        ranges = Path(tmp) / "ranges.json"
        if hit:
            ranges.write_bytes(cache_file.read_bytes())
        exclude = list(settings.keep_fp32) + [n for n, _ in kept] + list(split.postprocess)
        quantised_graph = float_path
        if settings.bias_correction and settings.quantizer == "onnxruntime":
            from common.runtime.int8_structure import correct_biases

            # calibration ranges stay those of the float graph (cached by its hash); the biases move by less than
            # a rounding step of their Conv's output
            conv_int8 = not settings.op_types or "Conv" in settings.op_types
            int8_nodes = {n.name for n in fmodel.graph.node if n.op_type == "Conv" and conv_int8} - set(exclude)
            corrected_model = onnx.ModelProto()
            corrected_model.CopyFrom(fmodel)
            corrected = correct_biases(corrected_model, stats, int8_nodes, settings.weight_type, settings.per_channel)
            quantised_graph = Path(tmp) / "float_bias_corrected.onnx"
            onnx.save(corrected_model, str(quantised_graph))
        if settings.quantizer == "nncf":
            _quantize_nncf(
                fmodel,
                out_path,
                calib,
                input_name,
                extra_inputs or {},
                exclude,
                [_ONNX_OP.get(t, t) for t in tgt.float_ops],
                onnx_path,
            )
            hit = True  # NNCF calibrates itself; ONNX Runtime's range cache is not used
        quiet = logging.getLogger().level
        logging.getLogger().setLevel(logging.ERROR)  # ORT warns about pre-processing on every call
        try:
            # the histogram calibrators print progress to stdout, which is the JSON of `build_engine.py --json`
            with contextlib.redirect_stdout(io.StringIO()):
                if settings.quantizer == "nncf":
                    pass
                elif not hit:
                    # calibrate the network alone: post-processing tensors (variable-size after NMS) never are
                    net = Path(tmp) / "network.onnx"
                    onnx.save(network_model(fmodel, split), str(net))
                    reader = _calibration_reader(list(calib.batches(1)), input_name, extra_inputs or {})
                    quantize_static(
                        str(net),
                        str(Path(tmp) / "network_q.onnx"),
                        reader,
                        calibration_cache_path=str(ranges),
                        **_quant_args(settings),
                    )
                if settings.quantizer != "nncf":
                    quantize_static(
                        str(quantised_graph),
                        str(out_path),
                        None,
                        nodes_to_exclude=exclude,
                        calibration_cache_path=str(ranges),
                        **_quant_args(settings),
                    )
        except (InputError, RuntimeFailure):
            raise
        except Exception as exc:  # noqa: BLE001 - ORT's quantiser raises assorted exception types
            raise RuntimeFailure(
                f"INT8 quantisation failed ({type(exc).__name__}: {(str(exc).strip() or '?').splitlines()[0]})",
                onnx_path,
            ) from None
        finally:
            logging.getLogger().setLevel(quiet)
        if not hit and ranges.is_file():
            atomic_write_bytes(cache_file, ranges.read_bytes(), durable=False)
        model = onnx.load(str(out_path), load_external_data=False)
        if float_inputs_for(model, exclude):
            onnx.save(model, str(out_path))
    q_ops = {"QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger"}
    n_q = sum(1 for n in model.graph.node if n.op_type in q_ops)
    if n_q == 0:
        raise RuntimeFailure(
            "INT8 quantisation quantised nothing (no op of the types "
            f"{list(settings.op_types) or 'any'} outside keep_fp32): refusing to run FP32 as INT8",
            onnx_path,
        )
    why = check_qdq_graph(model, tgt)
    if why:
        raise ConfigError(
            f"INT8 target {tgt.name} cannot run the quantised graph: {'; '.join(why[:3])}"
            f"{f' (and {len(why) - 3} more)' if len(why) > 3 else ''}",
            onnx_path,
        )
    return {
        "opset": [_opset(onnx.load(str(onnx_path), load_external_data=False)), _opset(model)],
        "calibration_cache": "hit" if hit else "miss",
        "quant_nodes": n_q,
        "target": tgt.name,
        "kept_by_rule": kept,
        "bias_corrected": len(corrected),
        "postprocess_nodes": len(split.postprocess),
        "int8_convs": int8_convs(model),
    }


def _quantize_nncf(
    fmodel,
    out_path: Path,
    calib,
    input_name: str,
    extra_inputs: dict,
    exclude: list,
    float_types: list,
    onnx_path: Path,
):
    """The QDQ ONNX written by NNCF's post-training quantisation (batch-1 calibration images), with the same
    exclusions as ONNX Runtime's (post-processing, rule, keep_fp32) and the target's float op types ignored."""
    try:
        import nncf
    except ImportError as exc:
        raise ConfigError(
            f"int8.quantizer nncf needs nncf ({exc}); install it with: .venv/bin/python -m pip "
            "install -r requirements-openvino.txt"
        ) from None
    import onnx

    batches = list(calib.batches(1))
    extra = {k: np.asarray(v, np.float32)[None] for k, v in extra_inputs.items()}
    level = logging.getLogger("nncf").level
    logging.getLogger("nncf").setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # NNCF's progress bars; stdout is build_engine's --json
            q = nncf.quantize(
                fmodel,
                nncf.Dataset(batches, lambda x: {input_name: x, **extra}),
                subset_size=len(batches),
                target_device=nncf.TargetDevice.CPU,
                ignored_scope=nncf.IgnoredScope(names=exclude, types=float_types, validate=False),
            )
    except Exception as exc:  # noqa: BLE001 - NNCF raises assorted exception types
        raise RuntimeFailure(
            f"NNCF quantisation failed ({type(exc).__name__}: {(str(exc).strip() or '?').splitlines()[0]})", onnx_path
        ) from None
    finally:
        logging.getLogger("nncf").setLevel(level)
    onnx.save(q, str(out_path))


def int8_convs(model) -> int:
    """Conv nodes of a QDQ graph that read a dequantised activation and a dequantised weight (run in INT8)."""
    producer = {o: n for n in model.graph.node for o in n.output}
    return sum(
        1
        for n in model.graph.node
        if n.op_type == "Conv"
        and len(n.input) > 1
        and all(producer.get(i) is not None and producer[i].op_type == "DequantizeLinear" for i in n.input[:2])
    )


def quantisable_nodes(onnx_path: Path, settings: Int8Settings) -> list:
    """(name, op_type) of the nodes the settings quantise, in graph order."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    types = set(settings.op_types)
    return [(n.name, n.op_type) for n in model.graph.node if not types or n.op_type in types]


def spec_snippet(variant_name: str, settings: Int8Settings, keep: list) -> str:
    """The `int8:` section that reproduces a build, for models/<name>/model.yaml."""
    lines = [
        f"  {variant_name}:",
        "    int8:",
        f"      format: {settings.format}",
        f"      per_channel: {'true' if settings.per_channel else 'false'}",
        f"      activation_type: {settings.activation_type}",
        f"      weight_type: {settings.weight_type}",
        f"      method: {settings.method}",
    ]
    if settings.method == "percentile":
        lines.append(f"      percentile: {settings.percentile}")
    lines += [
        f"      calib_images: {settings.calib_images}",
        f"      op_types: [{', '.join(settings.op_types)}]",
        f"      float_outputs: [{', '.join(settings.float_outputs)}]",
    ]
    if settings.target:
        lines.append(f"      target: {settings.target}")
    lines += [f"      rule: {'true' if settings.rule else 'false'}", "      keep_fp32:"]
    lines += [f"        - {json.dumps(n)}" for n in keep] if keep else ["        []"]
    if not keep:
        lines[-2:] = ["      keep_fp32: []"]
    return "\n".join(lines)


__all__ = [
    "Int8Settings",
    "read_int8_section",
    "settings_for",
    "quantize_onnx",
    "quantisable_nodes",
    "spec_snippet",
    "prepare_float_model",
    "calibration_cache_path",
    "resolve_target",
    "int8_convs",
]


# ---------------------------------------------------------------- engine builds (ONNX Runtime and IGIE)


def build_int8(
    backend: str,
    runtime: str,
    req,
    suffix: str,
    finish,
    key_extra: dict | None = None,
    describe_extra: dict | None = None,
):
    """(engine, cache hit) of an INT8 build: the ONNX quantised from req.options["calibration"] with
    req.options["int8"] settings, then finish(quantised_onnx_path, tmp_engine_path) writes the engine (ONNX
    Runtime: the quantised ONNX itself; IGIE: its compiled library). The cache key holds the calibration set's
    content hash and every setting."""
    from common.engine_cache import cache_key

    calib = req.options.get("calibration")
    if calib is None:
        raise ConfigError(
            f"{backend} int8 needs calibration images: pass --calib-dir DIR (images that are not the evaluation set)"
        )
    settings = req.options.get("int8") or Int8Settings()
    resolve_target(settings, backend, req.onnx_path)  # refused before anything is built
    key = cache_key(
        req.onnx_sha256,
        backend=backend,
        precision="int8",
        runtime=runtime,
        calibration=calib.sha256,
        int8=settings.key(),
        quantizer=_quantizer_version(settings.quantizer),
        recipe=2,
        **(key_extra or {}),
    )
    cache_root = req.cache.root

    def build(tmp: Path):
        import tempfile

        with tempfile.TemporaryDirectory(prefix="int8.", dir=cache_root) as work:
            q = Path(work) / "quantised.onnx"
            quantize_onnx(
                req.onnx_path,
                q,
                calib,
                settings,
                req.input_name,
                cache_root,
                dict(req.extra_inputs),
                Path(work),
                backend=backend,
            )
            finish(q, tmp)

    describe = {
        "backend": backend,
        "precision": "int8",
        "onnx": str(req.onnx_path),
        "onnx_sha256": req.onnx_sha256,
        "runtime": runtime,
        "calibration": calib.describe(),
        "int8": settings.key(),
        **(describe_extra or {}),
    }
    return req.cache.get_or_build(key, suffix, build, describe)


def _quantizer_version(quantizer: str = "onnxruntime") -> str:
    if quantizer == "nncf":
        try:
            import nncf
        except ImportError as exc:
            raise ConfigError(
                f"int8.quantizer nncf needs nncf ({exc}); install it with: .venv/bin/python -m pip "
                "install -r requirements-openvino.txt"
            ) from None
        return f"nncf-{nncf.__version__}"
    import onnxruntime

    return f"onnxruntime-{onnxruntime.__version__}"
