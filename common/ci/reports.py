"""What a matrix run leaves for people and CI systems: JUnit XML, a Markdown summary, the results table in each
model's README, and PNG plots (FPS vs batch size per precision; a metric's history across runs)."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from common.ci.verdicts import ERROR, FAILED, PASS, UNSUPPORTED, WARN
from common.engine_cache import atomic_write_bytes
from common.metric_table import BY_NAME, PRECISIONS, metric, verdict_properties
from common.record.history import metric_series

README_METRICS = ("fps", "AP50", "AP")  # the README results table's columns, in this order

README_START = "<!-- regress:results:start -->"
README_END = "<!-- regress:results:end -->"
ICON = {PASS: "✅ pass", WARN: "⚠️ warn", FAILED: "❌ fail", ERROR: "💥 error", UNSUPPORTED: "⏭️ unsupported"}


def counts(verdicts: list[dict]) -> Counter:
    """How many verdicts have each status: the summary line of every report."""
    return Counter(v["status"] for v in verdicts)


def _value_text(v: dict) -> str:
    vals = v["values"]
    if v["case"]["kind"] == "accuracy" and "AP" in vals:
        return f"AP {metric('AP').text(vals['AP'])}, AP50 {metric('AP50').text(vals['AP50'])} ({vals['images']} img)"
    if v["case"]["kind"] == "loadgen" and vals.get("value") is not None:
        return f"LoadGen {vals['scenario']} {vals['metric']} {vals['value']:.3f}" + (
            "" if vals["valid"] else " INVALID"
        )
    if "fps" in vals:
        # `fps`: the harness figure (batch / mean runner.infer time), the one baselines judge (not fps_compute)
        return (
            f"{metric('fps').text(vals['fps'])} FPS harness `fps` (n={vals['repeats']}, CoV {vals['cov'] * 100:.1f}%)"
        )
    return ""


# XML 1.0 allows tab, newline and carriage return below 0x20, no surrogates and not U+FFFE/U+FFFF: anything else
# (an ANSI colour escape in a path or an SDK log line) makes the whole report unparseable for the CI system.
_XML_INVALID = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def xml_text(text) -> str:
    return _XML_INVALID.sub("", str(text))


def _properties(v: dict, environment: dict) -> list[tuple[str, str]]:
    vals = v.get("values") or {}
    props = [
        ("status", v["status"]),
        ("device", v.get("device") or environment.get("device")),
        ("runtime", v.get("sdk") or environment.get("runtime")),
        ("git_commit", v.get("git_commit") or environment.get("git_commit")),
    ]
    for key in verdict_properties():
        if isinstance(vals.get(key), (int, float)):
            props.append((key, f"{vals[key]:.6g}"))
    if vals.get("accuracy_rule"):
        props.append(("accuracy_rule", vals["accuracy_rule"]))
    if v.get("baseline_file"):
        props.append(("baseline_file", v["baseline_file"]))
    return [(k, val) for k, val in props if val is not None]


def junit_xml(
    verdicts: list[dict],
    name: str = "regress",
    environment: dict | None = None,
    incomplete: Sequence[str] = (),
    strict: bool = False,
) -> bytes:
    """One <testsuite> per model/variant, one <testcase> per case; regressions are <failure>, crashes <error>,
    warnings and unsupported cells <skipped> with their message; each case carries FPS / AP / device / runtime /
    commit as <properties>. Missing outcomes of an incomplete run are <error> cases of their own suite."""
    environment = environment or {}
    root = ET.Element("testsuites", name=xml_text(name))
    props = ET.SubElement(root, "properties")
    for key, val in sorted(environment.items()):
        ET.SubElement(props, "property", name=key, value=xml_text(val))
    suites: dict = {}
    for v in verdicts:
        c = v["case"]
        key = xml_text(f"{c['model']}.{c['variant']}")
        if key not in suites:
            suites[key] = ET.SubElement(root, "testsuite", name=key)
        tc = ET.SubElement(
            suites[key],
            "testcase",
            classname=key,
            name=xml_text(f"{c['backend']}.{c['precision']}.bs{c['batch_size']}.{c['kind']}"),
            time=f"{v.get('duration_s', 0.0):.3f}",
        )
        tprops = ET.SubElement(tc, "properties")
        for k, val in _properties(v, environment):
            ET.SubElement(tprops, "property", name=k, value=xml_text(val))
        notes = [xml_text(n) for n in v["notes"]]
        text = "\n".join(notes)
        if v["status"] == FAILED:
            ET.SubElement(
                tc,
                "failure",
                message=next(
                    (n for n in notes if "regression" in n or "target:" in n or "jump" in n or "noisy" in n),
                    notes[0] if notes else "failed",
                )[:500],
                type="regression",
            ).text = text
        elif v["status"] == ERROR:
            ET.SubElement(tc, "error", message=(notes or ["error"])[0][:500], type="case-error").text = text
        elif v["status"] in (WARN, UNSUPPORTED):
            gaps = v.get("gaps") or []
            lead = f"strict: fails the run ({', '.join(gaps)}): " if strict and gaps else f"{v['status']}: "
            interesting = [n for n in notes if not n.startswith("targets held") and n != "no absolute target applies"]
            ET.SubElement(tc, "skipped", message=(lead + "; ".join(interesting or notes))[:500])
        ET.SubElement(tc, "system-out").text = xml_text(f"{_value_text(v)}\n{text}")
    if incomplete:
        suite = ET.SubElement(root, "testsuite", name="incomplete")
        for i, gap in enumerate(incomplete, 1):
            tc = ET.SubElement(suite, "testcase", classname="incomplete", name=f"gap{i}", time="0.000")
            ET.SubElement(tc, "error", message=xml_text(gap)[:500], type="incomplete-run").text = xml_text(gap)
        suites["incomplete"] = suite
    for suite in suites.values():
        cases = suite.findall("testcase")
        suite.set("tests", str(len(cases)))
        suite.set("failures", str(sum(tc.find("failure") is not None for tc in cases)))
        suite.set("errors", str(sum(tc.find("error") is not None for tc in cases)))
        suite.set("skipped", str(sum(tc.find("skipped") is not None for tc in cases)))
        suite.set("time", f"{sum(float(tc.get('time')) for tc in cases):.3f}")
    ET.indent(root)
    return ET.tostring(root, encoding="utf-8", xml_declaration=True)


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def summary_table(verdicts: list[dict]) -> str:
    lines = ["| case | status | value | detail |", "| --- | --- | --- | --- |"]
    for v in verdicts:
        lines.append(f"| `{v['id']}` | {ICON[v['status']]} | {_value_text(v)} | {_md_escape('; '.join(v['notes']))} |")
    return "\n".join(lines)


def markdown_summary(
    verdicts: list[dict],
    run_id: str,
    plots: Sequence[str] = (),
    last_good: dict | None = None,
    incomplete: Sequence[str] = (),
    strict: bool = False,
    code: int | None = None,
) -> str:
    n = counts(verdicts)
    gaps = strict and any(v.get("gaps") for v in verdicts)
    verdict = "FAILED" if n[FAILED] or n[ERROR] else "INCOMPLETE" if incomplete or gaps else "PASSED"
    out = [
        f"## Regression run `{run_id}`: {verdict}" + (f" (exit {code})" if code is not None else ""),
        "",
        f"{len(verdicts)} cases: {n[PASS]} pass, {n[WARN]} warn, {n[FAILED]} fail, {n[ERROR]} error, "
        f"{n[UNSUPPORTED]} unsupported" + (" (strict)" if strict else ""),
        "",
    ]
    if incomplete:
        out += ["**Incomplete run:**", ""] + [f"- {_md_escape(g)}" for g in incomplete] + [""]
    out.append(summary_table(verdicts))
    if last_good:
        out += ["", "### Last good run of the failing cases", ""]
        for case_id, row in last_good.items():
            out.append(
                f"- `{case_id}`: "
                + (
                    f"run `{row['run_id']}` at {row['time']} ({row.get('status')}), "
                    f"commit `{(row.get('environment') or {}).get('git_commit')}`"
                    if row
                    else "none in the history"
                )
            )
    if plots:
        out += ["", "Plots: " + ", ".join(f"`{p}`" for p in plots)]
    return "\n".join(out) + "\n"


def text_table(verdicts: list[dict]) -> str:
    """The console summary: fixed-width, one line per case."""
    width = max((len(v["id"]) for v in verdicts), default=4)
    lines = [f"{'case':<{width}}  {'status':<6}  value / detail"]
    for v in verdicts:
        detail = "; ".join(
            n for n in v["notes"] if not n.startswith("targets held") and n != "no absolute target applies"
        )
        lines.append(f"{v['id']:<{width}}  {v['status']:<6}  {_value_text(v)}  {detail}")
    n = counts(verdicts)
    lines.append(
        f"{len(verdicts)} cases: {n[PASS]} pass, {n[WARN]} warn, {n[FAILED]} fail, {n[ERROR]} error, "
        f"{n[UNSUPPORTED]} unsupported"
    )
    return "\n".join(lines)


def results_rows(verdicts: list[dict]) -> dict:
    """{(model, variant, backend, device): {(precision, batch): {fps, AP50, AP}}} from a run's verdicts."""
    table: dict = {}
    for v in verdicts:
        if v["status"] in (ERROR, UNSUPPORTED) or not v.get("values") or v["case"]["kind"] == "loadgen":
            continue  # LoadGen figures are in the summary and the verdicts, not the FPS / AP table
        c = v["case"]
        row = table.setdefault((c["model"], c["variant"], c["backend"], v.get("device", "?")), {}).setdefault(
            (c["precision"], c["batch_size"]), {}
        )
        if c["kind"] == "performance":
            row["fps"] = v["values"]["fps"]
        else:
            row["AP50"], row["AP"] = v["values"]["AP50"], v["values"]["AP"]
            row["images"] = v["values"].get("images")
    return table


def readme_table(model: str, groups: dict, run_id: str) -> str:
    out = [README_START, f"<!-- generated by scripts/regress.py report from run {run_id}; do not edit by hand -->"]
    for (m, variant, backend, device), rows in sorted(groups.items()):
        if m != model:
            continue
        out += [
            "",
            f"**{variant}** on {backend} / {device}; FPS is `fps`, the harness figure (batch / mean time of "
            "one inference call with its copies), not the compute-only `fps_compute`; AP over the images "
            "named",
            "",
            "| Model | Batch Size | Precision | " + " | ".join(metric(m).label for m in README_METRICS) + " | images |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        for (precision, bs), r in sorted(rows.items(), key=lambda kv: (PRECISIONS.index(kv[0][0]), kv[0][1])):
            cells = [_readme_cell(m, r) for m in README_METRICS] + [str(r["images"]) if r.get("images") else "-"]
            out.append(f"| {model}-{variant} | {bs} | {precision.upper()} | {' | '.join(cells)} |")
    out.append(README_END)
    return "\n".join(out)


def _readme_cell(name: str, row: dict) -> str:
    """One decimal in the README table: points for AP, images/s for FPS."""
    if name not in row:
        return "-"
    m = metric(name)
    return f"{row[name] * 100:.1f}" if m.unit == "fraction" else f"{row[name]:.1f}"


def update_readme(readme: Path, block: str, title: str, seed: Path | None = None) -> None:
    """Replace the text between the markers (appending a Results section with them when absent). A README not
    there yet starts as a copy of `seed` (the model's own README), else as a title."""
    source = readme if readme.is_file() else seed if seed is not None and seed.is_file() else None
    text = source.read_text(encoding="utf-8") if source is not None else f"# {title}\n"
    readme.parent.mkdir(parents=True, exist_ok=True)
    pattern = re.compile(re.escape(README_START) + r".*?" + re.escape(README_END), re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _: block, text, count=1)
    else:
        text = text.rstrip("\n") + "\n\n## Results\n\n" + block + "\n"
    atomic_write_bytes(readme, text.encode("utf-8"))


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # CI nodes have no display
    import matplotlib.pyplot as plt

    return plt


def plot_fps_vs_batch(groups: dict, out_dir: Path) -> list[Path]:
    """One PNG per model/variant/backend/device: FPS against batch size, one line per precision."""
    plt = _pyplot()
    paths = []
    for (model, variant, backend, device), rows in sorted(groups.items()):
        series: dict = {}
        for (precision, bs), r in rows.items():
            if "fps" in r:
                series.setdefault(precision, []).append((bs, r["fps"]))
        if not series:
            continue
        fig, ax = plt.subplots(figsize=(6, 4))
        for precision, pts in sorted(series.items()):
            pts.sort()
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=precision.upper())
        ax.set_xscale("log", base=2)
        sizes = sorted({bs for pts in series.values() for bs, _ in pts})
        ax.set_xticks(sizes, [str(b) for b in sizes])
        ax.minorticks_off()
        ax.set_xlabel("batch size")
        ax.set_ylabel("FPS (images/s)")
        ax.set_title(f"{model}/{variant} on {backend} / {device}")
        ax.grid(True, alpha=0.3)
        ax.legend()
        path = out_dir / f"fps_vs_batch_{model}_{variant}_{backend}_{device}.png".replace("/", "-")
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
        paths.append(path)
    return paths


def plot_history(rows: list[dict], case_ids: list[str], metric: str, out_path: Path) -> Path | None:
    """A metric across runs, one line per case (runs in history order)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    drawn = 0
    for case_id in case_ids:
        series = metric_series(rows, case_id, metric)
        if series:
            ax.plot(range(1, len(series) + 1), [s[2] for s in series], marker="o", label=case_id)
            drawn += 1
    if not drawn:
        plt.close(fig)
        return None
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("run (history order)")
    m = BY_NAME.get(metric)
    ax.set_ylabel(f"{m.label} ({m.unit}, {m.direction} is better)" if m else metric)
    ax.set_title(f"{metric} across runs")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=6)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out_path, dpi=100)
    plt.close(fig)
    return out_path
