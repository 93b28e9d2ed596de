"""The regression matrix: which (model, variant, backend, precision, batch size, kind) cases a CI run covers.

The cases come from each variant's optional `matrix:` section in models/<name>/model.yaml (read from
Variant.matrix), narrowed by command-line filters, and are sliced deterministically for `--shard k/n`:

    matrix:
      backends: [onnxruntime]          # default: [onnxruntime]
      precisions: [fp32, fp16]         # default: fp32 plus every precision a target names
      batch_sizes: [1, 8, 32]          # performance runs (default [1])
      accuracy_batch_sizes: [1]        # accuracy runs (default [1]); [] = no accuracy case
      annotation: instances_val2017_person_subset350.json   # dataset hint for accuracy runs
      max_images: 200                  # optional cap on accuracy images
      onnx: {int8: path/to/qdq.onnx}   # optional precision-specific ONNX (else --onnx / the variant's)
      relative: {AP: 0.2, AP50: 0.2}   # max drop in AP *points* against FP32 on the same backend
      accuracy_noise: 2.5              # per-image noise scale of AP (common/ci/acc_tolerance.py)
      reference_fraction: 0.99         # of the variant's published `reference:` figures (full set only)
      loadgen_scenarios: [Offline, SingleStream]   # LoadGen cases, short CI mode (docs/loadgen.md); default none
      loadgen_batch_sizes: [8]         # their batch sizes (default [1])

A variant is in the matrix only when the run has a model for it: the spec's own `onnx`, the section's
precision-specific `onnx`, or an entry of the run's model map (ModelMap: `--onnx MODEL[/VARIANT]=PATH`,
`--models-manifest FILE`). The others are listed as skipped, never run against a wrong or missing model.
"""

from __future__ import annotations

import fnmatch
import math
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from common.ci.acc_tolerance import DEFAULT_NOISE
from common.config.specs import MODELS_DIR, PRECISIONS, VARIANT_SECTIONS, ModelSpec, Variant, load_model
from common.errors import ConfigError

KINDS = ("accuracy", "performance", "loadgen")
DEFAULT_RELATIVE = {"AP": 0.2, "AP50": 0.2}  # points (0-100 scale), as the recipes quote AP
MATRIX_KEYS: set[str] | frozenset[str] = VARIANT_SECTIONS["matrix"] or set()


@dataclass(frozen=True)
class Case:
    model: str  # model name (the spec's `name`)
    variant: str
    backend: str
    precision: str
    batch_size: int
    kind: str  # accuracy | performance
    spec: str  # what --model gets: a folder name under models/ or a .yaml path
    annotation: str | None = None
    max_images: int | None = None
    onnx: str | None = None
    checkpoint: str | None = None
    config: str | None = None
    image_shard: str | None = None  # "J/M": an accuracy case split by images over nodes (merged by `merge`)
    scenario: str | None = None  # kind loadgen: the LoadGen scenario

    @property
    def base_id(self) -> str:
        kind = f"loadgen-{self.scenario}" if self.kind == "loadgen" else self.kind
        return f"{self.model}/{self.variant}/{self.backend}/{self.precision}/bs{self.batch_size}/{kind}"

    @property
    def id(self) -> str:
        """The case's unique name (base_id, plus its image shard): file names, shards and baselines key on it."""
        if self.image_shard:
            j, m = self.image_shard.split("/")
            return f"{self.base_id}/images-{j}-of-{m}"
        return self.base_id

    @property
    def order(self) -> tuple:
        """Sort key: numeric batch sizes, precisions in the suite's order (fp32 first)."""
        return (
            self.model,
            self.variant,
            self.backend,
            PRECISIONS.index(self.precision),
            self.kind,
            self.scenario or "",
            self.batch_size,
        )

    @property
    def slug(self) -> str:
        return re.sub(r"[^A-Za-z0-9.+-]+", "_", self.id)

    def as_dict(self) -> dict:
        """The case's fields and its id, as outcomes and run.json store them."""
        return {**asdict(self), "id": self.id}


@dataclass
class Filters:
    """Comma-separated glob lists from the command line; None = no filter."""

    models: str | None = None
    variants: str | None = None
    precisions: str | None = None
    batch_sizes: str | None = None
    backends: str | None = None
    kinds: str | None = None

    @staticmethod
    def _match(value, patterns: str | None) -> bool:
        if not patterns:
            return True
        return any(fnmatch.fnmatch(str(value), p.strip()) for p in patterns.split(",") if p.strip())

    def accepts(self, case: Case) -> bool:
        return (
            self._match(case.model, self.models)
            and self._match(case.variant, self.variants)
            and self._match(case.precision, self.precisions)
            and self._match(case.batch_size, self.batch_sizes)
            and self._match(case.backend, self.backends)
            and self._match(case.kind, self.kinds)
        )


def _int_list(section: dict, key: str, default: list, where: str, path) -> list:
    value = section.get(key, default)
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value):
        raise ConfigError(f"{where}.{key}: expected a list of positive integers, got {value!r}", path)
    return value


def matrix_section(spec: ModelSpec, variant: Variant) -> dict:
    """The variant's `matrix:` section, validated and with defaults filled in."""
    where = f"variants.{variant.name}.matrix"
    raw = variant.matrix or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping", spec.path)
    unknown = set(raw) - MATRIX_KEYS
    if unknown:
        raise ConfigError(
            f"{where}: unknown keys {sorted(unknown)}; known: {', '.join(sorted(MATRIX_KEYS))}", spec.path
        )
    target_precisions = {p for t in variant.targets for p in t.precisions}
    precisions = raw.get("precisions", ["fp32"] + [p for p in PRECISIONS if p in target_precisions - {"fp32"}])
    if isinstance(precisions, str):
        precisions = [precisions]
    bad = [p for p in precisions if p not in PRECISIONS]
    if bad or not isinstance(precisions, list):
        raise ConfigError(f"{where}.precisions: {bad or precisions!r} not in {', '.join(PRECISIONS)}", spec.path)
    backends = raw.get("backends", ["onnxruntime"])
    if isinstance(backends, str):
        backends = [backends]
    relative = raw.get("relative", DEFAULT_RELATIVE)
    if not isinstance(relative, dict) or not all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0
        for v in relative.values()
    ):
        raise ConfigError(
            f"{where}.relative: expected {{metric: max drop in points >= 0}}, got {relative!r}", spec.path
        )
    onnx = raw.get("onnx", {})
    if not isinstance(onnx, dict) or not set(onnx) <= set(PRECISIONS):
        raise ConfigError(f"{where}.onnx: expected {{precision: path}}, got {onnx!r}", spec.path)
    for key in ("accuracy_noise", "reference_fraction"):
        val = raw.get(key)
        if val is not None and (
            not isinstance(val, (int, float))
            or isinstance(val, bool)
            or not math.isfinite(val)
            or val <= 0
            or (key == "reference_fraction" and val > 1)
        ):
            raise ConfigError(
                f"{where}.{key}: expected a number > 0{' and <= 1' if 'fraction' in key else ''}, got {val!r}",
                spec.path,
            )
    from common.config.loadgen_spec import SCENARIOS

    scenarios = raw.get("loadgen_scenarios", [])
    if isinstance(scenarios, str):
        scenarios = [scenarios]
    if not isinstance(scenarios, list) or not all(s in SCENARIOS for s in scenarios):
        raise ConfigError(
            f"{where}.loadgen_scenarios: expected a list of {', '.join(SCENARIOS)}, got {scenarios!r}", spec.path
        )
    max_images = raw.get("max_images")
    if max_images is not None and (not isinstance(max_images, int) or max_images < 1):
        raise ConfigError(f"{where}.max_images: expected a positive integer, got {max_images!r}", spec.path)
    return {
        "backends": list(backends),
        "precisions": list(precisions),
        "batch_sizes": _int_list(raw, "batch_sizes", [1], where, spec.path),
        "accuracy_batch_sizes": _int_list(raw, "accuracy_batch_sizes", [1], where, spec.path),
        "loadgen_scenarios": list(scenarios),
        "loadgen_batch_sizes": _int_list(raw, "loadgen_batch_sizes", [1], where, spec.path),
        "annotation": raw.get("annotation"),
        "max_images": max_images,
        "onnx": dict(onnx),
        "relative": {str(k): float(v) for k, v in relative.items()},
        "accuracy_noise": float(raw.get("accuracy_noise", DEFAULT_NOISE)),
        "reference_fraction": float(raw.get("reference_fraction", 0.99)),
    }


def _spec_arg(spec: ModelSpec, given: str) -> str:
    """Folder name for specs under models/, the absolute path otherwise (the subprocess gets it as --model)."""
    try:
        if spec.path.resolve() == (MODELS_DIR / spec.name / "model.yaml").resolve():
            return spec.name
    except OSError:
        pass
    return str(Path(given).resolve()) if given.endswith((".yaml", ".yml")) else given


def all_model_names() -> list[str]:
    """The models of models/ (each folder with a model.yaml), sorted: the matrix when none is named."""
    return sorted(p.parent.name for p in MODELS_DIR.glob("*/model.yaml"))


def enumerate_cases(
    models: list[str], filters: Filters | None = None, model_map: ModelMap | None = None, skipped: list | None = None
) -> list[Case]:
    """Every case of the given models (names or .yaml paths) that passes the filters, in matrix order
    (model, variant, backend, precision, kind, batch size). With a model map, a variant with no model (no spec
    `onnx`, no precision-specific one, no map entry) is left out and named in `skipped` when given."""
    filters = filters or Filters()
    cases = []
    for given in models:
        spec = load_model(given)
        for variant in spec.variants.values():
            if not variant.in_ci_matrix:
                continue  # opt-in: a variant that needs its own checkpoint or ONNX is no case by default
            m = matrix_section(spec, variant)
            entry = (model_map or ModelMap()).get(spec, variant.name)
            for backend in m["backends"]:
                for precision in m["precisions"]:
                    onnx = m["onnx"].get(precision) or entry.get("onnx")
                    if model_map is not None and not (onnx or entry.get("checkpoint") or variant.onnx):
                        if skipped is not None:
                            skipped.append(f"{spec.name}/{variant.name}/{precision}")
                        continue
                    common = dict(
                        model=spec.name,
                        variant=variant.name,
                        backend=backend,
                        precision=precision,
                        spec=_spec_arg(spec, given),
                        onnx=onnx,
                        checkpoint=entry.get("checkpoint"),
                        config=entry.get("config"),
                    )
                    for bs in m["accuracy_batch_sizes"]:
                        cases.append(
                            Case(
                                batch_size=bs,
                                kind="accuracy",
                                annotation=m["annotation"],
                                max_images=m["max_images"],
                                **common,
                            )
                        )
                    for bs in m["batch_sizes"]:
                        cases.append(Case(batch_size=bs, kind="performance", annotation=m["annotation"], **common))
                    for scenario in m["loadgen_scenarios"]:
                        for bs in m["loadgen_batch_sizes"]:
                            cases.append(
                                Case(
                                    batch_size=bs,
                                    kind="loadgen",
                                    scenario=scenario,
                                    annotation=m["annotation"],
                                    max_images=m["max_images"],
                                    **common,
                                )
                            )
    if skipped is not None:
        skipped[:] = sorted(dict.fromkeys(skipped))
    return sorted({c.id: c for c in cases if filters.accepts(c)}.values(), key=lambda c: c.order)


class ModelMap:
    """Which model file each variant runs: `--onnx MODEL=PATH` (the model's default variant only: one file is
    one network), `--onnx MODEL/VARIANT=PATH`, and a YAML manifest {MODEL/VARIANT: PATH | {onnx: PATH} |
    {checkpoint: PATH, config: PATH}}. Relative paths are resolved against the caller's working directory
    (command line) or the manifest's folder, so cases, which run from the repo root, get absolute paths."""

    def __init__(self, entries: dict | None = None):
        self.entries = dict(entries or {})  # "model" or "model/variant" -> {"onnx"|"checkpoint"|"config": path}

    @classmethod
    def parse(cls, items: list[str] | None, manifest: str | None = None, cwd: Path | None = None) -> ModelMap:
        """The map from a manifest file and --onnx MODEL[/VARIANT]=PATH items (these win), paths made absolute against
        `cwd`; a malformed item is a ConfigError."""
        cwd = Path(cwd or Path.cwd())
        entries: dict = {}
        if manifest:
            entries.update(cls._manifest(Path(cwd, manifest)))
        for item in items or []:
            key, sep, path = item.partition("=")
            if not sep or not key or not path or key.count("/") > 1:
                raise ConfigError(f"--onnx expects MODEL=PATH or MODEL/VARIANT=PATH, got {item!r}")
            entries[key] = {"onnx": str((cwd / path).resolve())}
        return cls(entries)

    @staticmethod
    def _manifest(path: Path) -> dict:
        import yaml

        try:
            raw = yaml.safe_load(path.read_text())
        except OSError as exc:
            raise ConfigError(f"cannot read the models manifest ({exc.strerror})", path) from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"models manifest is not valid YAML ({exc})", path) from None
        if not isinstance(raw, dict):
            raise ConfigError("models manifest: expected a mapping MODEL/VARIANT -> path", path)
        out = {}
        for key, val in raw.items():
            if isinstance(val, str):
                val = {"onnx": val}
            if (
                not isinstance(key, str)
                or key.count("/") > 1
                or not isinstance(val, dict)
                or not val
                or set(val) - {"onnx", "checkpoint", "config"}
                or not all(isinstance(x, str) for x in val.values())
            ):
                raise ConfigError(
                    f"models manifest entry {key!r}: expected PATH or {{onnx|checkpoint|config: PATH}}, got {val!r}",
                    path,
                )
            out[key] = {k: str((path.parent / x).resolve()) for k, x in val.items()}
        return out

    def get(self, spec: ModelSpec, variant: str) -> dict:
        """The model files mapped to this variant: its own entry, else the model's entry (default variant only)."""
        exact = self.entries.get(f"{spec.name}/{variant}")
        if exact is not None:
            return exact
        return self.entries.get(spec.name, {}) if variant == spec.default_variant else {}

    def unknown_keys(self, specs: list[ModelSpec]) -> list[str]:
        """The map's keys that name no model or variant of `specs`: a typo would otherwise map nothing, silently."""
        known = {s.name for s in specs} | {f"{s.name}/{v}" for s in specs for v in s.variants}
        return sorted(k for k in self.entries if k not in known)


def parse_shard(text: str) -> tuple[int, int]:
    """ "k/n" -> (k, n) with 1 <= k <= n: the node's slice of the matrix; anything else is a ConfigError."""
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text or "")
    if not m or not 1 <= int(m.group(1)) <= int(m.group(2)):
        raise ConfigError(f"--shard expects k/n with 1 <= k <= n, got {text!r}")
    return int(m.group(1)), int(m.group(2))


# Expected cost of a case in rough seconds of a 2-core CPU (docs/scale-out.md): only the ratios matter, to balance
# the nodes. An accuracy case: its images x the model's input pixels (RTMDet-nano at 320x320: ~15 ms an image);
# a performance case: its repeats of warm-up + minimum duration + a process start.
ACCURACY_S_PER_IMAGE_AT_320 = 0.015
PERFORMANCE_START_S = 3.0


def expected_cost(
    case: Case, images: int, repeats: int = 3, warmup_s: float = 1.0, min_duration_s: float = 5.0
) -> float:
    if case.kind == "loadgen":  # one short-mode LoadGen run (docs/loadgen.md)
        return warmup_s + min_duration_s + PERFORMANCE_START_S
    if case.kind != "accuracy":
        return repeats * (warmup_s + min_duration_s + PERFORMANCE_START_S)
    v = load_model(case.spec).variant(case.variant)
    share = 1.0
    if case.image_shard:
        j, m = map(int, case.image_shard.split("/"))
        share = ((images * j) // m - (images * (j - 1)) // m) / max(images, 1)
    return images * share * ACCURACY_S_PER_IMAGE_AT_320 * (v.height * v.width) / (320 * 320)


def plan_nodes(cases: list[Case], n: int, cost) -> list[list[Case]]:
    """The cases of each of n nodes: when there are fewer cases than nodes, accuracy cases are split by images
    (image shards J/M, each the one whose pieces cost most split once more) until every node can have one; then
    the pieces go, most expensive first, to the node with the least expected cost so far (ties: the lowest node,
    then matrix order), never round-robin. `cost(case) -> seconds`. Deterministic for any order of `cases`."""
    ordered = sorted(cases, key=lambda c: c.order)
    pieces = {c.id: 1 for c in ordered}
    while sum(pieces.values()) < n:
        splittable = [c for c in ordered if c.kind == "accuracy"]
        if not splittable:
            break
        widest = max(splittable, key=lambda c: (cost(c) / pieces[c.id], -ordered.index(c)))
        pieces[widest.id] += 1
    items = []
    for c in ordered:
        m = pieces[c.id]
        items += [c] if m == 1 else [Case(**{**asdict(c), "image_shard": f"{j}/{m}"}) for j in range(1, m + 1)]
    load = [0.0] * n
    nodes: list[list[Case]] = [[] for _ in range(n)]
    for item in sorted(items, key=lambda c: (-cost(c), c.order, c.image_shard or "")):
        k = min(range(n), key=lambda i: (load[i], i))
        load[k] += cost(item)
        nodes[k].append(item)
    return [sorted(node, key=lambda c: (c.order, c.image_shard or "")) for node in nodes]


def shard(cases: list[Case], k: int, n: int, cost=None) -> list[Case]:
    """The k-th of n deterministic slices (1-based), balanced by expected cost (plan_nodes); `cost` defaults to
    expected_cost with each case's own image cap (else 5000 images). The union of all slices is the whole matrix,
    each case (or each of its image shards) once."""
    return plan_nodes(cases, n, cost or (lambda c: expected_cost(c, c.max_images or 5000)))[k - 1]


def relative_rules(case_model_spec: str, variant: str) -> dict:
    """The relative-accuracy rule ({metric: max drop in points}) of a model variant."""
    return case_rules(case_model_spec, variant)["relative"]


def case_rules(case_model_spec: str, variant: str) -> dict:
    """What the verdicts need from a variant's spec: the relative rule, the accuracy noise scale, the published
    reference figures with their fraction, and the spec's evaluation annotation (where the reference holds)."""
    spec = load_model(case_model_spec)
    v = spec.variant(variant)
    m = matrix_section(spec, v)
    return {
        "relative": m["relative"],
        "accuracy_noise": m["accuracy_noise"],
        "reference": dict(v.reference),
        "reference_fraction": m["reference_fraction"],
        "evaluation_annotation": v.annotation,
    }
