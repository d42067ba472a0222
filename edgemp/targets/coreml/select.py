"""Which ops Core ML `mixed` keeps in float32: source layers and op types, kept apart.

A request is a source layer name (a Keras layer name, a PyTorch module path such as `features.3`) or
`type:<op>` for every Core ML op of that type (`type:conv`, `type:concat`). The prefix is explicit so that a layer
called like an op type (a PyTorch module named `relu`, a Keras layer named `concat`) selects only its own ops,
never every op of that type. The selector also records what it kept, so the structure checks can verify that
exactly those ops compute in float32 and every other op in float16.
"""

from __future__ import annotations

import contextlib
import io
import re
import warnings
from collections.abc import Sequence
from typing import Any

TYPE_PREFIX = "type:"


def sanitize(name: str) -> str:
    """The name coremltools gives an op in the saved program (its NameSanitizer): what the census reads."""
    new = re.sub(r"[^a-zA-Z0-9_]", "_", name)
    return "_" + new if re.match(r"[^a-zA-Z_]", new) else new


class Fp32Selector:
    """`FP16ComputePrecision(op_selector=selector.fp16)`: False keeps an op in float32.

    Keras ops are named by TF scope paths (`model/model/conv1_1/BiasAdd`): a layer matches a scope component (never
    the last one, which is the TF op type), or the weights feeding the op, or (for an output layer) the `Identity`
    op named after the graph output. PyTorch ops are named after torch.export nodes (`relu_1`), which name the ATen
    op, not the module: they are mapped to module paths through the exported graph's nn_module_stack (when the module
    cannot be exported, Core ML came from tracing and only ops fed by the module's weights can be matched)."""

    def __init__(self, source: Any, requests: Sequence[str], output_names: Sequence[str] = ()) -> None:
        self.requests = [str(r) for r in requests]
        self.types = {r[len(TYPE_PREFIX):] for r in self.requests if r.startswith(TYPE_PREFIX)}
        self.layers = [r for r in self.requests if not r.startswith(TYPE_PREFIX)]
        self.torch = source.kind == "pytorch"
        nodes = _torch_nodes_of(source, self.layers, output_names) if self.torch else \
            _keras_output_ops(source, self.layers)
        self.exported = nodes is not None  # torch: node -> module map available (else Core ML came from tracing)
        self.nodes = nodes or {}
        # torch weights are `p_<path with _>_weight` (export) or `<path>.weight` (trace); only needed without nodes
        self.scope_rx = {n: re.compile(rf"^(p_)?{re.escape(n.replace('.', '_'))}[._](weight|bias)$" if self.torch
                                       else rf"(^|/){re.escape(n)}(_\d+)?/") for n in self.layers}
        self.kept: set[str] = set()  # sanitized names of the compute ops kept in float32
        self.matched: set[str] = set()  # requests that kept at least one compute op

    def fp16(self, op: Any) -> bool:
        hits = self.matches(op)
        if hits and op.op_type != "const":
            self.kept.update(sanitize(o.name) for o in op.outputs)
            self.matched.update(hits)
        return not hits

    def matches(self, op: Any) -> list[str]:
        """The requests selecting `op`."""
        hits = [TYPE_PREFIX + op.op_type] if op.op_type in self.types else []
        weights = _const_inputs(op)
        names = {op.name, *(o.name for o in op.outputs)}  # a torch linear is op `linear_0` producing var `linear`
        for n in self.layers:
            if names & self.nodes.get(n, set()):
                hits.append(n)
            elif self.torch and self.exported:
                continue  # node names are ATen op names (`relu_1`): only the module map says which module ran them
            elif any(self.scope_rx[n].search(w) for w in weights) or \
                    (not self.torch and self.scope_rx[n].search(op.name)):
                hits.append(n)
        return hits

    @property
    def unmatched(self) -> list[str]:
        return [r for r in self.requests if r not in self.matched]


def _const_inputs(op: Any) -> list[str]:
    """Names of the consts feeding `op` (or the const itself): weights carry their layer's name even when the op is
    named after a graph output (`Identity`) or after an ATen op."""
    if op.op_type == "const":
        return [op.name]
    names = []
    for v in op.inputs.values():
        for var in v if isinstance(v, list | tuple) else (v,):
            src = getattr(var, "op", None)
            if src is not None and src.op_type == "const":
                names.append(var.name)
    return names


def _keras_output_ops(source: Any, names: Sequence[str]) -> dict[str, set[str]]:
    """A layer producing model output k becomes the op named after TF's output tensor: Identity, Identity_1, ..."""
    found: dict[str, set[str]] = {}
    for k, t in enumerate(getattr(source.model, "outputs", [])):
        history = getattr(t, "_keras_history", None)
        layer = history[0] if history else None
        if layer is not None and layer.name in names:
            found.setdefault(layer.name, set()).add("Identity" if k == 0 else f"Identity_{k}")
    return found


_WEIGHTED = ("conv", "linear", "addmm", "mm", "matmul")  # ATen ops coremltools fuses a following op into
_FUSED = ("batch_norm", "add", "sub", "mul", "div")  # ... and those ops (conv+batch norm -> one conv, named after it)


def _torch_nodes_of(source: Any, names: Sequence[str], outputs: Sequence[str]) -> dict[str, set[str]] | None:
    """Module path -> the names Core ML gives the ops of its torch.export nodes; None when the module cannot be
    exported. A node output k is also called `outputs[k]`; an op fused into a weighted op's single user (conv +
    batch norm becomes one conv named after the batch norm) belongs to the weighted op's module too."""
    import torch

    try:
        with contextlib.redirect_stderr(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.export.export(source.module, tuple(a[:1] for a in source.example_args))
            program = program.run_decompositions({})
    except Exception:
        return None
    def module(node: Any) -> str:
        stack = list((node.meta.get("nn_module_stack") or {}).values())
        return stack[-1][0] if stack else ""

    found: dict[str, set[str]] = {}
    graph = list(program.graph.nodes)
    out_node = next((nd for nd in graph if nd.op == "output"), None)
    results = list(out_node.args[0]) if out_node is not None and isinstance(out_node.args[0], tuple | list) else []
    for node in graph:
        called = {node.name} | {o for o, r in zip(outputs, results, strict=False) if r is node}
        paths = {module(node)}
        if any(f in str(node.target) for f in _FUSED):
            paths |= {module(p) for p in node.all_input_nodes
                      if len(p.users) == 1 and any(w in str(p.target) for w in _WEIGHTED)}
        for n in names:
            if any(path == n or path.startswith(n + ".") for path in paths):
                found.setdefault(n, set()).update(called)
    return found
