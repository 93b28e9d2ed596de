"""Read models/<name>/model.yaml into a typed, validated spec.

Every mistake in a spec file is reported as a ConfigError naming the file and the field, so a typo in a
target never turns into a target that is silently skipped.
"""

from __future__ import annotations

import fnmatch
import hashlib
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from common import REPO_ROOT
from common.config.loadgen_spec import read_loadgen_section, target_fields
from common.data.preprocess import Preprocess  # noqa: F401  the spec's preprocessing section, re-exported
from common.decode.outputs import OUTPUT_KEYS, load_family_decoders
from common.errors import ConfigError, quote
from common.evaluate.metrics import STAT_NAMES
from common.metric_table import NAMES, PRECISIONS, TIMING_METRICS  # noqa: F401  re-exported for the spec's readers
from common.runtime.quantize import read_int8_section
from common.tolerances import Tolerance, parse_tolerance

MODELS_DIR = REPO_ROOT / "models"
# Every key a variant may hold, and the keys of each of its sections: anything else is a misspelling, reported
# with the file and the field at load (a silently ignored section would drop out of the CI matrix or fall back
# to default tolerances). The output section's keys depend on its convention (common/decode/registry.py).
VARIANT_SECTIONS: dict[str, set[str] | frozenset[str] | None] = {
    "description": None,
    "onnx": None,
    "labels": None,
    "targets": None,
    "reference": None,
    "input": {"name", "height", "width", "extra"},
    "preprocess": {"resize", "pad", "pad_value", "color", "mean", "std", "interpolation"},
    "output": None,
    "evaluation": {"annotation", "categories"},
    "build": {"fp16_block_ops", "fp16_block_nodes"},
    "export": {"opset", "config_overrides"},
    "checkpoint": {"url", "sha256", "sha256_prefix", "config", "upstream_config"},
    "matrix": {
        "backends",
        "precisions",
        "batch_sizes",
        "accuracy_batch_sizes",
        "annotation",
        "max_images",
        "onnx",
        "relative",
        "accuracy_noise",
        "reference_fraction",
        "loadgen_scenarios",
        "loadgen_batch_sizes",
    },
    "fidelity": None,  # typed by common/tolerances.py
    "int8": None,  # typed by common/runtime/quantize.py
    "loadgen": None,  # typed by common/config/loadgen_spec.py
}
# Every name a target may put a threshold on: the 12 COCO stats and the performance figures (common/metric_table.py;
# fps: the harness timing; fps_compute: the engine alone (what published figures are); fps_e2e: end to end)
METRICS = NAMES


@dataclass(frozen=True)
class Target:
    backend: str
    device: str
    precisions: tuple
    batch_sizes: tuple | None
    minimum: dict
    maximum: dict
    min_images: int | None = None  # fewer evaluated images: the target is reported "not judged" (full val2017)

    def as_dict(self) -> dict:
        """The target as a record lists it (JSON types)."""
        return {**target_fields(self), "min_images": self.min_images}

    def applies(self, backend: str, device: str, precision: str, batch_size: int) -> bool:
        return (
            fnmatch.fnmatch(backend, self.backend)
            and fnmatch.fnmatch(device, self.device)
            and precision in self.precisions
            and (self.batch_sizes is None or batch_size in self.batch_sizes)
        )


@dataclass(frozen=True)
class Variant:
    model: str
    name: str
    description: str
    onnx: str | None
    input_name: str
    height: int
    width: int
    preprocess: Preprocess
    output: dict
    label_map: tuple  # model label index -> COCO category id
    annotation: str  # default annotation file name inside <dataset>/annotations
    categories: tuple | None  # COCO category ids evaluated; None = all in the annotation file
    targets: tuple
    reference: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)
    # further graph inputs fed with the same values for every image, {name: (v, ...)} -> [N, len] float32
    # (e.g. PaddleDetection's im_shape / scale_factor)
    extra_inputs: dict = field(default_factory=dict)
    source: str = field(default="", compare=False, repr=False)  # the spec file, for messages about its fields
    source_sha256: str = field(default="", compare=False, repr=False)  # of the bytes parsed, for the record
    fidelity: Tolerance = field(default_factory=Tolerance)  # the `fidelity:` section

    @property
    def id(self) -> str:
        """ "model/variant": how records, cases and messages name it."""
        return f"{self.model}/{self.name}"

    @property
    def decode_cfg(self) -> dict:
        """The output section plus the network input size, which decoders of normalised boxes need."""
        return {"input_height": self.height, "input_width": self.width, **self.output}

    def targets_for(self, backend: str, device: str, precision: str, batch_size: int) -> list[Target]:
        """The spec's accuracy / speed targets that apply to a run of this backend, device, precision and batch size."""
        return [t for t in self.targets if t.applies(backend, device, precision, batch_size)]

    # The sections kept in `extra` (validated at load, VARIANT_SECTIONS), read through these typed accessors only.

    @property
    def build_options(self) -> dict:
        """The `build:` section (FP16 block lists), a copy: what every engine build of the variant gets."""
        return dict(self.extra.get("build") or {})

    @property
    def fp16_block_ops(self) -> tuple[str, ...]:
        """Operator types the FP16 conversion keeps in FP32 (`build.fp16_block_ops`)."""
        return tuple(self.build_options.get("fp16_block_ops", ()))

    @property
    def fp16_block_nodes(self) -> tuple[str, ...]:
        """Node names the FP16 conversion keeps in FP32 (`build.fp16_block_nodes`)."""
        return tuple(self.build_options.get("fp16_block_nodes", ()))

    def with_block_nodes(self, nodes) -> Variant:
        """This variant with `build.fp16_block_nodes` replaced by `nodes` (compare.py's fix, built and judged)."""
        extra = dict(self.extra)
        extra["build"] = {**self.build_options, "fp16_block_nodes": list(nodes)}
        return replace(self, extra=extra)

    def backend_section(self, backend: str) -> dict:
        """A backend's own section of the variant (declared by the backend's folder, its spec_section), a copy."""
        return dict(self.extra.get(backend) or {})

    @property
    def export_opset(self) -> int | None:
        """`export.opset`: the ONNX opset an export from a checkpoint uses (None: the exporter's default)."""
        return (self.extra.get("export") or {}).get("opset")

    @property
    def export_config_overrides(self) -> dict:
        """`export.config_overrides`: keys the exporter sets on the upstream model config, a copy."""
        return dict((self.extra.get("export") or {}).get("config_overrides") or {})

    @property
    def checkpoint_config(self) -> str | None:
        """`checkpoint.config`: the model config shipped for the checkpoint, relative to the repo root."""
        return (self.extra.get("checkpoint") or {}).get("config")

    @property
    def int8_section(self) -> dict | None:
        """The raw `int8:` section (typed by common/runtime/quantize.read_int8_section)."""
        return self.extra.get("int8")

    @property
    def loadgen_section(self) -> dict | None:
        """The raw `loadgen:` section (typed by common/config/loadgen_spec.read_loadgen_section)."""
        return self.extra.get("loadgen")

    @property
    def matrix(self) -> dict | None:
        """The raw `matrix:` section (typed by common/ci/matrix.matrix_section); None: not a CI matrix case."""
        return self.extra.get("matrix")

    @property
    def in_ci_matrix(self) -> bool:
        """Whether the variant declares a `matrix:` section (opt-in; an empty one takes every default)."""
        return "matrix" in self.extra


@dataclass(frozen=True)
class ModelSpec:
    name: str
    path: Path
    description: str
    default_variant: str
    variants: dict

    def variant(self, name: str | None = None) -> Variant:
        """The named variant (default: the spec's default_variant); an unknown name is a ConfigError with a
        did-you-mean and the known ones."""
        name = name or self.default_variant
        if name not in self.variants:
            from common.errors import did_you_mean

            raise ConfigError(
                f"unknown variant '{name}'{did_you_mean(name, self.variants)}; known: "
                f"{', '.join(sorted(self.variants))}",
                self.path,
            )
        return self.variants[name]


# COCO's 80 contiguous training labels -> the 91-id category ids of the annotation files.
COCO80_TO_91 = (
    1,
    2,
    3,
    4,
    5,
    6,
    7,
    8,
    9,
    10,
    11,
    13,
    14,
    15,
    16,
    17,
    18,
    19,
    20,
    21,
    22,
    23,
    24,
    25,
    27,
    28,
    31,
    32,
    33,
    34,
    35,
    36,
    37,
    38,
    39,
    40,
    41,
    42,
    43,
    44,
    46,
    47,
    48,
    49,
    50,
    51,
    52,
    53,
    54,
    55,
    56,
    57,
    58,
    59,
    60,
    61,
    62,
    63,
    64,
    65,
    67,
    70,
    72,
    73,
    74,
    75,
    76,
    77,
    78,
    79,
    80,
    81,
    82,
    84,
    85,
    86,
    87,
    88,
    89,
    90,
)
NAMED_LABEL_MAPS = {"coco80": COCO80_TO_91, "coco91": tuple(range(91)), "person": (1,)}


class _Reader:
    """Typed field access that names the file and the field path in every error."""

    def __init__(self, path: Path, sha256: str = ""):
        self.path, self.sha256 = path, sha256

    def fail(self, where: str, message: str):
        raise ConfigError(f"{where}: {message}", self.path)

    def get(self, obj: dict, key: str, where: str, kind, default: Any = ..., choices=None):
        if not isinstance(obj, dict):
            self.fail(where, f"expected a mapping, got {type(obj).__name__}")
        if key not in obj or obj[key] is None:
            if default is ...:
                self.fail(f"{where}.{key}", "missing")
            return default
        value = obj[key]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (kind in (int, float) and isinstance(value, bool)):
            self.fail(f"{where}.{key}", f"expected {getattr(kind, '__name__', kind)}, got {quote(value)}")
        if isinstance(value, float) and not math.isfinite(value):
            self.fail(f"{where}.{key}", f"expected a finite number, got {quote(value)}")  # YAML's .nan / .inf
        if choices is not None and value not in choices:
            self.fail(f"{where}.{key}", f"{quote(value)} is not one of {', '.join(map(str, choices))}")
        return value

    def numbers(self, obj: dict, key: str, where: str, length: int, default=...):
        value = self.get(obj, key, where, list, default)
        if value is default and not isinstance(value, list):
            return value
        if len(value) != length or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value
        ):
            self.fail(f"{where}.{key}", f"expected {length} finite numbers, got {quote(value)}")
        return tuple(float(v) for v in value)

    def thresholds(self, obj: dict, key: str, where: str) -> dict:
        value = self.get(obj, key, where, dict, {})
        for k, v in value.items():
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
                self.fail(f"{where}.{key}.{k}", f"expected a finite number, got {quote(v)}")
            if k not in METRICS:
                self.fail(f"{where}.{key}.{k}", f"unknown metric; known: {', '.join(METRICS)}")
        return {str(k): float(v) for k, v in value.items()}


def _read_target(r: _Reader, raw: dict, where: str) -> Target:
    precision = r.get(raw, "precision", where, (str, list))
    precisions = tuple([precision] if isinstance(precision, str) else precision)
    for p in precisions:
        if p not in PRECISIONS:
            r.fail(f"{where}.precision", f"{quote(p)} is not one of {', '.join(PRECISIONS)}")
    batch = r.get(raw, "batch_size", where, (int, list), None)
    minimum, maximum = r.thresholds(raw, "min", where), r.thresholds(raw, "max", where)
    if not minimum and not maximum:
        r.fail(where, "a target needs 'min' or 'max' thresholds")
    unknown = set(raw) - {"backend", "device", "precision", "batch_size", "min", "max", "note", "min_images"}
    if unknown:
        r.fail(where, f"unknown keys {sorted(unknown)}")
    return Target(
        backend=r.get(raw, "backend", where, str),
        device=r.get(raw, "device", where, str, "*"),
        precisions=precisions,
        batch_sizes=None if batch is None else tuple([batch] if isinstance(batch, int) else batch),
        minimum=minimum,
        maximum=maximum,
        min_images=_min_images(r, raw, where),
    )


def _min_images(r: _Reader, raw: dict, where: str) -> int | None:
    n = r.get(raw, "min_images", where, int, None)
    if n is not None and n < 1:
        r.fail(f"{where}.min_images", f"expected an integer >= 1, got {n}")
    return n


def _read_reference(r: _Reader, raw: dict, where: str) -> dict:
    """The published figures (`reference:`): a COCO statistic is a number in [0, 1] (a string or NaN there would
    be skipped or compare false by the published-reference rule); other keys (`source`, notes) are free text."""
    ref = r.get(raw, "reference", where, dict, {})
    for k, v in ref.items():
        if k in STAT_NAMES and (
            not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or not 0 <= v <= 1
        ):
            r.fail(f"{where}.reference.{k}", f"expected a number in [0, 1], got {v!r}")
    return ref


def _check_keys(r: _Reader, raw: dict, where: str):
    """Unknown keys of a variant and of its sections are errors naming the field."""
    if not isinstance(raw, dict):
        r.fail(where, f"expected a mapping, got {type(raw).__name__}")
    from common.runtime.backends import spec_sections

    sections = {**VARIANT_SECTIONS, **spec_sections()}  # a backend's own section, named after it
    for key, value in raw.items():
        if key not in sections:
            r.fail(f"{where}.{key}", f"unknown key; known: {', '.join(sorted(sections))}")
        known = sections[key]
        if key == "output" and isinstance(value, dict):
            known = OUTPUT_KEYS.get(str(value.get("convention")))
            if known is None:
                r.fail(
                    f"{where}.output.convention",
                    f"unknown output convention {quote(value.get('convention'))}; "
                    f"known: {', '.join(sorted(OUTPUT_KEYS))}",
                )
        if known is None or value is None:
            continue
        if not isinstance(value, dict):
            r.fail(f"{where}.{key}", f"expected a mapping, got {quote(value)}")
        for k in value:
            if k not in known:
                r.fail(f"{where}.{key}.{k}", f"unknown key; known: {', '.join(sorted(known))}")


def _read_variant(r: _Reader, model: str, name: str, raw: dict) -> Variant:
    where = f"variants.{name}"
    _check_keys(r, raw, where)
    inp = r.get(raw, "input", where, dict)
    pre = r.get(raw, "preprocess", where, dict)
    pw = f"{where}.preprocess"
    preprocess = Preprocess(
        resize=r.get(pre, "resize", pw, str, "letterbox", choices=("letterbox", "stretch")),
        pad=r.get(pre, "pad", pw, str, "bottom_right", choices=("bottom_right", "center")),
        pad_value=r.get(pre, "pad_value", pw, float, 114.0),
        color=r.get(pre, "color", pw, str, "bgr", choices=("bgr", "rgb")),
        mean=r.numbers(pre, "mean", pw, 3, (0.0, 0.0, 0.0)),
        std=r.numbers(pre, "std", pw, 3, (1.0, 1.0, 1.0)),
        interpolation=r.get(pre, "interpolation", pw, str, "linear", choices=("linear", "nearest", "cubic", "area")),
    )
    if any(s == 0 for s in preprocess.std):
        r.fail(f"{pw}.std", "must not contain 0")
    output = r.get(raw, "output", where, dict)
    r.get(output, "convention", f"{where}.output", str)
    labels = r.get(raw, "labels", where, (str, list))
    if isinstance(labels, str):
        if labels not in NAMED_LABEL_MAPS:
            r.fail(f"{where}.labels", f"unknown label map {labels!r}; known: {', '.join(NAMED_LABEL_MAPS)}")
        label_map = NAMED_LABEL_MAPS[labels]
    else:
        if not labels or not all(isinstance(v, int) and not isinstance(v, bool) for v in labels):
            r.fail(f"{where}.labels", "expected a non-empty list of COCO category ids")
        label_map = tuple(labels)
    ev = r.get(raw, "evaluation", where, dict)
    cats = r.get(ev, "categories", f"{where}.evaluation", list, None)
    targets = tuple(
        _read_target(r, t, f"{where}.targets[{i}]") for i, t in enumerate(r.get(raw, "targets", where, list, []))
    )
    height, width = r.get(inp, "height", f"{where}.input", int), r.get(inp, "width", f"{where}.input", int)
    if height <= 0 or width <= 0:
        r.fail(f"{where}.input", "height and width must be positive")
    extra_inputs = {}
    for k, v in r.get(inp, "extra", f"{where}.input", dict, {}).items():
        if (
            not isinstance(v, list)
            or not v
            or not all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in v)
        ):
            r.fail(f"{where}.input.extra.{k}", f"expected a non-empty list of numbers, got {quote(v)}")
        extra_inputs[str(k)] = tuple(float(x) for x in v)
    if raw.get("int8") is not None:  # typed and checked by its own reader (common/runtime/quantize.py)
        read_int8_section(raw["int8"], r.path, f"{where}.int8")
    if raw.get("loadgen") is not None:  # likewise (common/config/loadgen_spec.py); read again by the loadgen run
        read_loadgen_section(raw["loadgen"], r.path, f"{where}.loadgen")
    known = {"description", "onnx", "input", "preprocess", "output", "labels", "evaluation", "targets", "reference"}
    return Variant(
        model=model,
        name=name,
        description=r.get(raw, "description", where, str, ""),
        onnx=r.get(raw, "onnx", where, str, None),
        input_name=r.get(inp, "name", f"{where}.input", str, "input"),
        height=height,
        width=width,
        preprocess=preprocess,
        output=dict(output),
        label_map=label_map,
        annotation=r.get(ev, "annotation", f"{where}.evaluation", str),
        categories=None if cats is None else tuple(int(c) for c in cats),
        targets=targets,
        reference=_read_reference(r, raw, where),
        extra={k: v for k, v in raw.items() if k not in known},
        extra_inputs=extra_inputs,
        source=str(r.path),
        source_sha256=r.sha256,
        fidelity=parse_tolerance(raw.get("fidelity"), f"{where}.fidelity", r.path),
    )


# libyaml's loader reads a model file ~8x faster than the pure-Python one (~40 ms of every run's start-up)
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _read_yaml(path: Path, remember=None, digest: list | None = None):
    """The parsed file; `digest` (a list) receives the sha256 of the bytes parsed."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError("spec file not found", path) from None
    if digest is not None:
        digest.append(hashlib.sha256(data).hexdigest())

    def parse():
        try:
            return yaml.load(data.decode("utf-8"), Loader=_YAML_LOADER)
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            raise ConfigError(f"not valid YAML: {exc}".splitlines()[0], path) from None

    if remember is None:
        return parse()
    # even libyaml's parse is ~2 ms of every run's start for a model file; its remembered answer ~0.1 ms
    return remember.parsed("specs", data, parse, version=f"PyYAML {yaml.__version__} {_YAML_LOADER.__name__}")


# Values a spec may hold once its YAML aliases are expanded (the shipped specs hold under 1000): aliases share one
# object per anchor, so a few lines of nested aliases (an "alias bomb") stand for billions of values that any
# walk, copy or message over them would expand.
MAX_SPEC_VALUES = 100_000


def _check_expansion(r: _Reader, raw) -> None:
    """Refuse a spec whose aliases expand beyond MAX_SPEC_VALUES; counted over the shared objects (each
    counted once, by id), so the check itself never expands them."""
    sizes: dict = {}

    def size(obj) -> int:
        if not isinstance(obj, (dict, list)):
            return 1
        known = sizes.get(id(obj))
        if known is not None:
            return known
        sizes[id(obj)] = 1  # a recursive alias counts once here; a YAML loader does not build one
        children = obj.values() if isinstance(obj, dict) else obj
        total = 1 + sum(min(size(c), MAX_SPEC_VALUES + 1) for c in children)
        total = min(total, MAX_SPEC_VALUES + 1)
        sizes[id(obj)] = total
        return total

    try:
        total = size(raw)
    except RecursionError:
        r.fail("top level", "nested too deeply")
    if total > MAX_SPEC_VALUES:
        r.fail(
            "top level",
            f"its YAML anchors and aliases expand to more than {MAX_SPEC_VALUES} values (an alias "
            "bomb?): refused before any field is read",
        )


def load_spec(path: str | Path, remember=None) -> ModelSpec:
    """remember: an EngineCache where the parsed YAML is remembered by the file's bytes (EngineCache.parsed);
    every check below still runs on it."""
    path = Path(path)
    digest: list = []
    raw = _read_yaml(path, remember, digest)
    r = _Reader(path, digest[0])
    _check_expansion(r, raw)
    load_family_decoders(path.parent)  # the family's own output conventions, before the output sections are read
    if not isinstance(raw, dict):
        r.fail("top level", "expected a mapping")
    for key in raw:  # x-* keys hold YAML anchors shared by variants
        if key not in ("schema", "name", "description", "default_variant", "variants") and not str(key).startswith(
            "x-"
        ):
            r.fail(
                str(key),
                "unknown top-level key; known: schema, name, description, default_variant, variants (and x-* anchors)",
            )
    if r.get(raw, "schema", "top level", int) != 1:
        r.fail("schema", f"unsupported schema version {quote(raw.get('schema'))} (this suite reads 1)")
    name = r.get(raw, "name", "top level", str)
    variants_raw = r.get(raw, "variants", "top level", dict)
    if not variants_raw:
        r.fail("variants", "no variants")
    variants = {str(k): _read_variant(r, name, str(k), v) for k, v in variants_raw.items()}
    default = r.get(raw, "default_variant", "top level", str, next(iter(variants)))
    if default not in variants:
        r.fail("default_variant", f"{default!r} is not a variant")
    return ModelSpec(
        name=name,
        path=path,
        description=r.get(raw, "description", "top level", str, ""),
        default_variant=default,
        variants=variants,
    )


def load_model(name: str, remember=None) -> ModelSpec:
    """The spec of a model folder by name, or of an explicit .yaml path (remember: as in load_spec)."""
    if name.endswith((".yaml", ".yml")):
        return load_spec(name, remember)
    path = MODELS_DIR / name / "model.yaml"
    if not path.is_file():
        known = sorted(p.parent.name for p in MODELS_DIR.glob("*/model.yaml"))
        from common.errors import did_you_mean

        raise ConfigError(
            f"unknown model '{name}'{did_you_mean(name, known)}; known: {', '.join(known) or 'none'}", path
        )
    return load_spec(path, remember)
