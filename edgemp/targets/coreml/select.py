"""Which ops Core ML `mixed` keeps in float32: source layers and op types, kept apart.

A request is a source layer name (a Keras layer name, a PyTorch module path such as `features.3`) or
`type:<op>` for every Core ML op of that type (`type:conv`, `type:concat`). The prefix is explicit so that a layer
called like an op type (a PyTorch module named `relu`, a Keras layer named `concat`) selects only its own ops,
never every op of that type. The selector also records what it kept, so the structure checks can verify that
exactly those ops compute in float32 and every other op in float16.
"""

from __future__ import annotations

import re
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

    def __init__(self, frontend: Any, requests: Sequence[str], output_names: Sequence[str] = ()) -> None:
        """`frontend`: the source's Core ML frontend (Source.coreml_frontend()), which maps layers to op names."""
        self.requests = [str(r) for r in requests]
        self.types = {r[len(TYPE_PREFIX):] for r in self.requests if r.startswith(TYPE_PREFIX)}
        self.layers = [r for r in self.requests if not r.startswith(TYPE_PREFIX)]
        self.scoped = frontend.scope_in_op_names  # Keras: op names carry the layer's scope
        nodes = frontend.layer_ops(self.layers, output_names)
        self.exported = nodes is not None and not self.scoped  # torch: the node -> module map is known
        self.nodes = nodes or {}
        self.scope_rx = {n: frontend.weight_pattern(n) for n in self.layers}
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
            elif self.exported:
                continue  # node names are ATen op names (`relu_1`): only the module map says which module ran them
            elif any(self.scope_rx[n].search(w) for w in weights) or (self.scoped and self.scope_rx[n].search(op.name)):
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
