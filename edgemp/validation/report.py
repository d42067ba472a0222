"""The conversion report: one dict with stable keys, rendered as JSON, Markdown or a terminal table."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1


class Report:
    """Wraps the report dict. Keys are stable (schema_version bumps when they change)."""

    def __init__(self, data: dict[str, Any]) -> None:
        self._data = {"schema_version": SCHEMA_VERSION} | data

    @property
    def passed(self) -> bool:
        return bool(self._data.get("passed"))

    @property
    def failures(self) -> list[str]:
        return [f"{c['name']}: {c['detail']}" for c in self._data.get("checks", []) if not c["passed"]]

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def to_dict(self) -> dict[str, Any]:
        return copy.deepcopy(self._data)

    def to_json(self, path: str | Path | None = None) -> str:
        text = json.dumps(_jsonable(self._data), indent=2, sort_keys=False) + "\n"
        if path is not None:
            from edgemp._io import write_atomic

            write_atomic(Path(path), text)
        return text

    def to_markdown(self) -> str:
        d = self._data
        lines = [f"# edgemp report: {d['model']['name']} -> {d['precision']}", "",
                 f"**Result: {'PASSED' if self.passed else 'FAILED'}**", ""]
        if not self.passed:
            lines += [f"- {f}" for f in self.failures] + [""]
        lines += ["## Artifacts", "", "| target | file | bytes | ratio to fp32 | sha256 |", "|---|---|---|---|---|"]
        for a in d["artifacts"]:
            lines.append(f"| {a['target']} | `{Path(a['path']).name}` | {a['bytes']:,} | {_f(a['ratio_to_fp32'], 3)} | "
                         f"`{a['sha256'][:16]}` |")
        lines += ["", f"Precision `{d['precision']}`: {d['precision_meaning']}. I/O dtype: `{d['io_dtype']}`.", ""]
        c = d.get("census")
        if c:  # the .tflite's census (null when only other targets were asked for)
            lines += ["## Op census (.tflite)", "", f"- ops by compute type: {c['compute_counts']}",
                      f"- op types: {c['op_counts']}", f"- weight dtypes: {c['weight_dtypes']}, {c['per_channel_weights']}",
                      f"- TRANSPOSE ops: {c['transpose_count']}", ""]
            lines += ["| I/O | name | shape | dtype | scale | zero point |", "|---|---|---|---|---|---|"]
            for kind, specs in (("input", c["inputs"]), ("output", c["outputs"])):
                for s in specs:
                    lines.append(f"| {kind} | {s['name']} | {s['shape']} | {s['dtype']} | {_f(s['scale'], 6)} | "
                                 f"{'' if s['zero_point'] is None else s['zero_point']} |")
        lines += _validation_markdown(d.get("validation"), "## Validation on the host")
        lines += _mixed_markdown(d.get("mixed"))
        lines += _coreml_markdown(d.get("coreml"))
        lines += _onnx_markdown(d.get("onnx"))
        cal = d.get("calibration")
        if cal:
            lines += ["", "## Calibration", "", f"{cal['num_samples']} samples from {cal['source']}, seed {cal['seed']}, "
                      f"{cal['num_files_skipped']} file(s) skipped, sha256 `{cal['sha256'][:16]}`"]
            if cal.get("preprocessing"):
                lines.append(f"Preprocessing: `{json.dumps(cal['preprocessing'])}`")
            lines += [f"- note: {n}" for n in cal.get("notes") or []]
            lines += [f"- **warning:** {w}" for w in cal.get("warnings") or []]
        lines += ["", "## Checks", "", "| check | result | detail |", "|---|---|---|"]
        for ch in d["checks"]:
            lines.append(f"| {ch['name']} | {'pass' if ch['passed'] else '**FAIL**'} | {ch['detail']} |")
        lines += ["", "## Stage times (s)", "", ", ".join(f"{k} {v:.2f}" for k, v in d["timings_s"].items()),
                  "", "## Versions", "", ", ".join(f"{k} {v}" for k, v in d["versions"].items()), ""]
        return "\n".join(lines)

    def render(self, console: Any = None) -> None:
        """A readable terminal summary (rich)."""
        from rich.console import Console
        from rich.table import Table

        console = console or Console()
        d = self._data
        ok = self.passed
        console.print(f"[bold]{d['model']['name']}[/] -> [bold]{d['precision']}[/] ({d['precision_meaning']}): "
                      + ("[green bold]PASSED[/]" if ok else "[red bold]FAILED[/]"))
        t = Table(title="Artifacts")
        for col in ("file", "bytes", "ratio to fp32", "ops by compute type"):
            t.add_column(col)
        for a in d["artifacts"]:
            compute = (d.get("census") or {}).get("compute_counts") if a["target"] == "tflite" else \
                ((d.get(a["target"]) or {}).get("census") or {}).get("compute_counts")
            t.add_row(Path(a["path"]).name, f"{a['bytes']:,}", _f(a["ratio_to_fp32"], 3), str(compute))
        console.print(t)
        v = d.get("validation")
        if v:
            t = Table(title=f"Validation on the host — {v['data']['source']} ({v['data']['num_samples']} samples)")
            for col in ("output", "task", "max abs err", "RMSE", "cosine", "SQNR dB", "top-1 agree"):
                t.add_column(col, justify="right")
            for o in v["outputs"]:
                t.add_row(o["name"], _task(o), _f(o.get("max_abs_error"), 5), _f(o.get("rmse"), 5),
                          _f(o.get("cosine"), 6), _f(o.get("sqnr_db"), 2), _f(o.get("top1_agreement"), 4))
            console.print(t)
            a = v.get("accuracy")
            if a:
                console.print(accuracy_line(a))
            for w in v.get("warnings") or []:
                console.print(f"[yellow]warning[/] {w}")
            lat = v["latency"]
            console.print(f"latency: {_f(lat['median_ms'], 4)} ms median ({lat['threads']} thread(s))"
                          + (f", fp32 {_f(lat['fp32_median_ms'], 4)} ms" if "fp32_median_ms" in lat else ""))
        m = d.get("mixed")
        if m:
            t = Table(title=f"Mixed-precision search — budget: {m['budget']['description']}")
            for col in ("step", "action", "float layers", "boundaries", m.get("metric") or "accuracy", "SQNR dB", "bytes",
                        "ms", "met"):
                t.add_column(col)
            for st in m["steps"]:
                sc = st["score"]
                t.add_row(str(st["step"]), st["action"], str(len(st["float_layers"])), str(st["boundaries"]),
                          _f(sc.get("accuracy"), 4), _f(sc["sqnr_db"], 1), f"{st['bytes']:,}" if st.get("bytes") else "",
                          _f(st.get("latency_ms"), 4), "yes" if st["met"] else "")
            console.print(t)
            console.print(f"kept in float: {', '.join(m['float_layers']) or 'none'} ({m['boundaries']} boundaries)")
        cm = d.get("coreml")
        if cm:
            nv = cm["numeric_validation"]
            console.print(f"Core ML {cm['precision']}: {Path(cm['path']).name}, {cm['census']['size_bytes']:,} bytes "
                          f"({_f(cm['ratio_to_fp32'], 3)} x fp32), compute {cm['census']['compute_counts']}, weights "
                          f"{cm['census']['weight_dtypes']}; numeric validation "
                          + ("run" if nv.get("run") else f"[yellow]not run[/] ({nv['reason'].split(';')[0]})"))
        for ch in d["checks"]:
            if not ch["passed"]:
                console.print(f"[red]FAIL[/] {ch['name']}: {ch['detail']}")


def _task(o: dict[str, Any]) -> str:
    if o.get("task") == "classification":
        return f"classification ({o.get('num_classes')} classes)"
    return str(o.get("task", ""))


def accuracy_line(a: dict[str, Any]) -> str:
    """One line for validation.accuracy, whatever judged it (top-1, mIoU or the user's metric)."""
    budget = a.get("max_accuracy_drop")
    if a.get("task") == "metric":
        return (f"metric {a['metric']}: float {_f(a.get('float'), 4)} -> artifact {_f(a['artifact'], 4)}, drop "
                f"{_f(a.get('drop'), 4)} (budget {_f(budget, 4) if budget is not None else 'none'})")
    pts = f"(budget {_f(100 * budget, 2)} points)" if budget is not None else "(no budget)"
    drop = f"{_f(100 * a['drop'], 2)} points" if a.get("drop") is not None else "n/a"
    if a.get("task") == "segmentation":
        return (f"{a['output']}: mIoU float {_f(a.get('float_miou'), 4)} -> artifact {_f(a['miou'], 4)}, drop {drop} "
                f"{pts}; pixel accuracy {_f(a.get('float_pixel_accuracy'), 4)} -> {_f(a['pixel_accuracy'], 4)}")
    return (f"{a.get('output', 'output')}: top-1 float {_f(a.get('float_top1'), 4)} -> artifact {_f(a['top1'], 4)}, "
            f"drop {drop} {pts}" + (f"; top-5 {_f(a.get('float_top5'), 4)} -> {_f(a['top5'], 4)}" if "top5" in a else ""))


def _validation_markdown(v: dict[str, Any] | None, title: str) -> list[str]:
    lines: list[str] = []
    if v:
        lines += ["", title, "", f"Data: {v['data']['source']} ({v['data']['num_samples']} samples)"
                  + (f" — {v['data']['note']}" if v["data"].get("note") else ""), ""]
        lines += [f"- note: {n}" for n in v["data"].get("notes") or []]
        lines += [f"- **warning:** {w}" for w in v["data"].get("warnings") or []]
        lines += [""] if v["data"].get("notes") or v["data"].get("warnings") else []
        if v["outputs"]:
            lines += ["| output | task | max abs err | mean abs err | RMSE | cosine | SQNR dB | top-1 agreement |",
                      "|---|---|---|---|---|---|---|---|"]
            for o in v["outputs"]:
                lines.append(f"| {o['name']} | {_task(o)} | {_f(o.get('max_abs_error'), 5)} | "
                             f"{_f(o.get('mean_abs_error'), 5)} | {_f(o.get('rmse'), 5)} | {_f(o.get('cosine'), 6)} | "
                             f"{_f(o.get('sqnr_db'), 2)} | {_f(o.get('top1_agreement'), 4)} |")
        a = v.get("accuracy")
        if a:
            lines += ["", "Accuracy: " + accuracy_line(a)]
        for w in v.get("warnings") or []:
            lines += ["", f"**Warning:** {w}"]
        fg = v.get("fidelity_gate")
        if fg:
            lines += ["", f"Fidelity gate ({fg['origin']}): SQNR >= {fg['min_sqnr_db']:g} dB and cosine >= "
                      f"{fg['min_cosine']:g} for {', '.join(fg['outputs'])} (outputs no label or metric judges)."]
        lat = v["latency"]
        lines += ["", f"Host latency (batch 1, {lat['threads']} thread(s), "
                  + (f"XNNPACK {'on' if lat['xnnpack'] else 'off'}" if "xnnpack" in lat else lat.get("provider", ""))
                  + f", median of {lat['runs']}): {_f(lat['median_ms'], 4)} ms"
                  + (f"; fp32 {_f(lat['fp32_median_ms'], 4)} ms, ratio {_f(lat['ratio_to_fp32'], 2)}" if "fp32_median_ms" in lat else "")]
        for dl in v["runtime"].get("delegates") or []:
            lines.append(f"- delegate {dl['name']}: loaded, {dl['nodes']}/{dl['total_nodes']} nodes")
    return lines


def _onnx_markdown(o: dict[str, Any] | None) -> list[str]:
    if not o:
        return []
    c = o["census"]
    lines = ["", "## ONNX (TensorRT-ready)", "", f"Precision `{o['precision']}`: {o['precision_meaning']}. Opset "
             f"{o['opset']}, exported by {o['exporter']}" + (f"; quantized by {o['quantizer']}" if o["quantizer"] else "")
             + ".", "", f"- layout {o['layout']}, batch {o['batch'] or 'dynamic'}; the app feeds: {o['app_input']}",
             f"- compute nodes (Conv/ConvTranspose/Gemm/MatMul) by precision: {c['compute_counts']}; weights: "
             f"{c['weight_dtypes']}; QuantizeLinear {c['quantize_nodes']}, DequantizeLinear {c['dequantize_nodes']}",
             f"- inputs: {c['inputs']}", f"- outputs: {c['outputs']}"]
    if o["precision"] == "mixed":
        lines.append(f"- kept in FP16: {', '.join(o['fp16_nodes']) or 'none'}"
                     + (f"; float layers of the search with no Q/DQ in the ONNX graph (already float, FP16 under "
                        f"TensorRT --fp16): {', '.join(o['unmatched_float_layers'])}" if o["unmatched_float_layers"] else ""))
    lines += ["", f"Host run: {o['host_runtime']}. {o['not_run']}."]
    lines += _validation_markdown(o.get("validation"), "### ONNX validation on the host")
    p = o.get("parity")
    if p:
        lines += ["", f"### Parity ({p['samples']} samples)", "", "| output | pair | max abs err | cosine | SQNR dB | "
                  "top-1 agreement |", "|---|---|---|---|---|---|"]
        for row in p["outputs"]:
            for k, m in row.items():
                if k != "output":
                    lines.append(f"| {row['output']} | {k.replace('_', ' ')} | {_f(m['max_abs_error'], 5)} | "
                                 f"{_f(m['cosine'], 6)} | {_f(m['sqnr_db'], 2)} | {_f(m['top1_agreement'], 4)} |")
    return lines


def _coreml_markdown(cm: dict[str, Any] | None) -> list[str]:
    if not cm:
        return []
    c = cm["census"]
    nv = cm["numeric_validation"]
    lines = ["", "## Core ML", "", f"`{Path(cm['path']).name}`: precision `{cm['precision']}` — {cm['precision_meaning']}; "
             f"deployment target {cm['deployment_target']}; {c['size_bytes']:,} bytes "
             f"({_f(cm['ratio_to_fp32'], 3)} x fp32 package).", "",
             f"- ops by compute precision: {c['compute_counts']}", f"- weights (storage dtype): {c['weight_dtypes']}",
             f"- inputs: {c['inputs']}", f"- outputs: {c['outputs']}", "",
             "Numeric validation: " + (f"run on {nv['samples']} samples: {nv.get('outputs')}" if nv.get("run")
                                       else f"**not run** — {nv['reason']}"), "",
             "| structure check | result | detail |", "|---|---|---|"]
    lines += [f"| {ch['name']} | {'pass' if ch['passed'] else '**FAIL**'} | {ch['detail']} |" for ch in cm["structure_checks"]]
    if cm.get("parity"):
        from edgemp.validation.parity import to_markdown as parity_markdown

        lines += parity_markdown(cm["parity"])
    return lines


def _mixed_markdown(m: dict[str, Any] | None) -> list[str]:
    if not m:
        return []
    lines = ["", "## Mixed precision", "", f"Budget: {m['budget']['description']} — "
             f"{'met' if m['met'] else '**not met**'}; max float layers {m['max_float_layers']} of "
             f"{m['num_ranked_layers']}; calibration runs: {m['calibration_runs']}, candidate artifacts quantized: "
             f"{m['quantize_runs']}, scored: {m['scored_artifacts']}.", "",
             f"Kept in float: {', '.join(m['float_layers']) or 'none'} ({m['boundaries']} float/int8 boundaries).", "",
             f"| step | action | float layers | boundaries | {m.get('metric') or 'accuracy'} | SQNR dB | bytes | latency ms | met |",
             "|---|---|---|---|---|---|---|---|---|"]
    for st in m["steps"]:
        sc = st["score"]
        lines.append(f"| {st['step']} | {st['action']} | {len(st['float_layers'])} | {st['boundaries']} | "
                     f"{_f(sc.get('accuracy'), 4)} | {_f(sc['sqnr_db'], 1)} | {st['bytes'] or ''} | "
                     f"{_f(st.get('latency_ms'), 4)} | {'yes' if st['met'] else ''} |")
    if m.get("would_take"):
        lines += ["", f"What meeting the budget would take: {m['would_take']}."]
    return lines


def _f(x: Any, digits: int) -> str:
    if x is None:
        return "—"
    if isinstance(x, float) and (math.isinf(x) or math.isnan(x)):
        return str(x)
    return f"{x:.{digits}f}" if isinstance(x, float | int) else str(x)


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    if isinstance(x, float) and (math.isinf(x) or math.isnan(x)):
        return str(x)  # JSON has no inf/nan: keep them visible as strings
    if isinstance(x, Path):
        return str(x)
    if hasattr(x, "item"):
        return x.item()
    return x
