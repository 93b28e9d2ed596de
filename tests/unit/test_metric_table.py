"""The one metric table (common/metric_table.py): the names targets accept, the evaluator's stats, the record types,
the README table, the JUnit properties and the precisions all come from it, and no second list of them is left."""
from __future__ import annotations

import re

from common import REPO_ROOT
from common import metric_table as mt
from common.ci.reports import readme_table
from common.config import options, specs
from common.evaluate import metrics
from common.record.types import AccuracyMetrics, PerformanceMetrics


def test_every_reader_takes_the_table():
    assert specs.METRICS == mt.NAMES and metrics.STAT_NAMES == mt.COCO_STATS
    assert options.PRECISIONS is mt.PRECISIONS is specs.PRECISIONS
    assert set(AccuracyMetrics.__optional_keys__) == set(mt.COCO_STATS)
    assert set(PerformanceMetrics.__required_keys__) == set(mt.TIMING_METRICS)
    assert metrics.STAT_LABELS[0] == "AP @[IoU=0.50:0.95 | area=all | maxDets=100]"
    assert [m.direction for m in map(mt.metric, ("AP", "fps", "latency_p99_ms"))] == ["higher", "higher", "lower"]
    assert {mt.metric(n).fps_kind for n in mt.FPS_DEFINITIONS} == {"harness", "compute", "end_to_end"}


def test_readme_table_labels_come_from_the_table():
    groups = {("m", "v", "onnxruntime", "cpu"): {("fp16", 1): {"fps": 12.34, "AP": 0.4012, "AP50": 0.6},
                                                 ("fp32", 8): {"fps": 50.0}}}
    text = readme_table("m", groups, "r1")
    assert "| Model | Batch Size | Precision | FPS (`fps`) | AP50 | AP50:95 | images |" in text
    rows = [ln for ln in text.splitlines() if ln.startswith("| m-v")]
    assert rows == ["| m-v | 8 | FP32 | 50.0 | - | - | - |", "| m-v | 1 | FP16 | 12.3 | 60.0 | 40.1 | - |"]   # fp32 first


def test_no_second_list_of_precisions_or_coco_stats_in_common():
    precisions = re.compile(r"\(\s*\"fp32\",\s*\"fp16\",\s*\"int8\"\s*\)")
    stats = re.compile(r"\"AP\",\s*\"AP50\",\s*\"AP75\"")
    found = {"precisions": [], "stats": []}
    for path in sorted((REPO_ROOT / "common").rglob("*.py")):
        if path.name == "metric_table.py" or "backends" in path.parts:   # a backend lists what it supports
            continue
        text = path.read_text()
        found["precisions"] += [path.name] if precisions.search(text) else []
        found["stats"] += [path.name] if stats.search(text) else []
    assert found == {"precisions": [], "stats": []}
