"""The float model as a graph of layers: source names users recognise, float regions, boundaries, recipes.

Ops are identified by their output tensor name, which the AI Edge Quantizer keeps: the same name designates
the same layer in the float and the quantized model (never the list position, which Q/DQ insertion shifts).
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from edgemp.targets.tflite.census import WEIGHTED_OPS, Census, OpInfo
from edgemp.errors import InputError
from edgemp.quantize.recipes import Recipe, float_rule, static_rule
from edgemp.quantize.support import quantizable_ops

# Ops that only move or select values: quantized they reuse their input's scale and add no error of their
# own, so they are never ranked; they join a float region when all their producers are float.
SAME_SCALE = frozenset({
    "RESHAPE", "SQUEEZE", "EXPAND_DIMS", "TRANSPOSE", "MAX_POOL_2D", "STRIDED_SLICE", "SLICE", "GATHER", "GATHER_ND",
    "PAD", "PADV2", "MIRROR_PAD", "SPLIT", "SPLIT_V", "PACK", "UNPACK", "SPACE_TO_DEPTH", "DEPTH_TO_SPACE",
    "BROADCAST_TO", "RESIZE_NEAREST_NEIGHBOR", "TILE",
})
# builtin op name -> the AI Edge Quantizer's TFLOperationName where they differ
_QUANTIZER_OP = {"TRANSPOSE_CONV": "CONV_2D_TRANSPOSE"}


@dataclasses.dataclass(frozen=True)
class Layer:
    index: int  # position in the float model (display order only; identity is `tensor`)
    op: str
    tensor: str  # output tensor name: the identity shared by float and quantized models
    name: str  # the source layer users recognise (Keras layer name, PyTorch module path)
    fused: tuple[str, ...]  # other source layers folded into this op (batch norm, activation)
    weighted: bool
    ranked: bool  # a candidate for float (not a same-scale op)

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "op": self.op, "name": self.name, "fused": list(self.fused),
                "tensor": self.tensor, "weighted": self.weighted}


class LayerGraph:
    def __init__(self, float_census: Census, source_layers: Sequence[tuple[str, str]] = (), float_io: bool = False,
                 aliases: Mapping[str, Sequence[tuple[str | None, str]]] | None = None) -> None:
        """`source_layers`: (name, class name) of the source model's layers in model order (may be empty);
        `float_io`: the artifact keeps float32 I/O (else its I/O is int8, and a float op at the edge is a boundary);
        `aliases`: scope components -> layer names (Source.scope_aliases)."""
        self.float_io = float_io
        self.aliases = dict(aliases or {})
        ops = [o for o in float_census.ops if o.subgraph == 0 and o.outputs]
        self.ops = ops
        order = {n: i for i, (n, _) in enumerate(source_layers)}
        kinds = dict(source_layers)
        used: set[str] = set()
        layers = []
        for o in ops:
            names = _layer_names(o, order, kinds, self.aliases)
            used.update(names)
            layers.append([o, names])
        outputs = {s.tensor for s in float_census.outputs}
        for entry in layers:  # an output op named after the signature ("StatefulPartitionedCall:0"): the last free
            o, names = entry     # layer, when it is of the op's kind (a Dense for a FULLY_CONNECTED)
            if not names and o.outputs[0].name in outputs:
                parents = {n.rsplit(".", 1)[0] for n in kinds if "." in n}
                free = [n for n, _ in source_layers if n not in used and n not in parents
                        and bool(_WEIGHTED_CLASS.search(kinds.get(n, ""))) == (o.op in WEIGHTED_OPS)]
                entry[1] = free[-1:] if free else []
        self.layers = [
            Layer(o.index, o.op, o.outputs[0].name, names[0] if names else f"{o.op.lower()}#{o.index}",
                  tuple(names[1:]), o.op in WEIGHTED_OPS, o.op not in SAME_SCALE)
            for o, names in layers
        ]
        self.by_tensor = {lay.tensor: lay for lay in self.layers}
        produced = {o.outputs[i].name: o.outputs[0].name for o in ops for i in range(len(o.outputs))}
        self.producers = {o.outputs[0].name: [produced[t.name] for t in o.inputs if t.name in produced]
                          for o in ops}
        graph_in = {i.tensor for i in float_census.inputs}
        self.io_edges = [(o.outputs[0].name, "in") for o in ops for t in o.inputs if t.name in graph_in] + \
                        [(o.outputs[0].name, "out") for o in ops if o.outputs[0].name in {x.tensor for x in float_census.outputs}]
        self.consumers: dict[str, list[str]] = {t: [] for t in self.producers}
        for t, ps in self.producers.items():
            for p in ps:
                self.consumers[p].append(t)

    @property
    def ranked(self) -> list[Layer]:
        return [lay for lay in self.layers if lay.ranked]

    def close(self, tensors: Iterable[str]) -> frozenset[str]:
        """The float region for these layers: plus every same-scale op whose producers are all float."""
        region = set(tensors)
        changed = True
        while changed:
            changed = False
            for lay in self.layers:
                ps = self.producers[lay.tensor]
                if not lay.ranked and lay.tensor not in region and ps and all(p in region for p in ps):
                    region.add(lay.tensor)
                    changed = True
        return frozenset(region)

    def boundaries(self, region: Iterable[str]) -> int:
        """Edges between float and int8 tensors, graph I/O included: each becomes a QUANTIZE or DEQUANTIZE."""
        r = set(region)
        inner = sum(1 for t, ps in self.producers.items() for p in ps if (p in r) != (t in r))
        return inner + sum(1 for t, _ in self.io_edges if (t in r) != self.float_io)

    def recipe(self, region: Iterable[str], activation_bits: int = 8, float_io: bool = False) -> Recipe:
        """Static int8 everywhere, then one float rule per op in the region (exact tensor name and op type:
        a wildcard op type does not reach same-scale ops, shared/STACK.md)."""
        rules = [static_rule(activation_bits)]
        for t in sorted(region, key=lambda t: self.by_tensor[t].index):
            op = self.by_tensor[t].op
            if op not in quantizable_ops():
                continue  # the quantizer keeps it float anyway, and refuses rules naming ops it does not know
            # The quantizer matches re.search against the op scope: its output names joined and ended by ";".
            rules.append(float_rule(regex=f"^{re.escape(t)};", operation=_QUANTIZER_OP.get(op, op)))
        if float_io:
            rules += [float_rule(operation="INPUT"), float_rule(operation="OUTPUT")]
        return rules

    def select(self, patterns: Sequence[str], what: str) -> list[str]:
        """Layers (output tensors) matching names or regexes; a pattern matching nothing is an error with hints."""
        picked: list[str] = []
        for pat in patterns:
            try:
                rx = re.compile(pat)
            except re.error as exc:
                raise InputError(f"{what} {pat!r} is not a valid regular expression ({exc}); escape special "
                                 "characters or pass the exact layer name.") from None
            hit = [lay.tensor for lay in self.layers
                   if lay.name == pat or rx.fullmatch(lay.name) or any(f == pat for f in lay.fused)]
            if not hit:
                names = [lay.name for lay in self.layers]
                close = difflib.get_close_matches(pat, names, n=5, cutoff=0.4) or names[:8]
                raise InputError(f"{what} {pat!r} matches no layer of the model; close names: {', '.join(close)}. "
                                 "Names are the source layer names shown by `edgemp analyze` (regexes allowed).")
            picked += [t for t in hit if t not in picked]
        return picked


_WEIGHTED_CLASS = re.compile(r"conv|linear|dense|embedding", re.I)


def _layer_names(o: OpInfo, order: dict[str, int], kinds: dict[str, str],
                 aliases: Mapping[str, Sequence[tuple[str | None, str]]]) -> list[str]:
    """[own layer, fused layers...] for an op. Converters write several layers into one tensor name (the op's
    own, fused batch norm/activation, and often its producers), so producers' names are subtracted and a
    weighted op is named after the conv/linear layer its filter comes from."""
    out = set(mentions([o.outputs[0].name], order, aliases))
    producers = set(mentions([t.name for t in o.inputs if not t.constant], order, aliases))
    filt = set(mentions([t.name for t in o.inputs if t.constant][:1], order, aliases))
    weighted = [n for n in filt if _WEIGHTED_CLASS.search(kinds.get(n, "")) and "norm" not in kinds.get(n, "").lower()]
    if weighted:
        fresh = [n for n in weighted if n not in producers] or weighted
        primary = max(fresh, key=order.__getitem__)
    else:
        cands = (out - producers) or out or (filt - producers)
        if not cands:
            return []
        primary = min(cands, key=lambda n: (n.count("."), order[n]))
    fused = sorted((out - producers - {primary}), key=order.__getitem__)
    return [primary, *fused]


def mentions(tensor_names: Iterable[str], order: dict[str, int],
              aliases: Mapping[str, Sequence[tuple[str | None, str]]] | None = None) -> list[str]:
    """Source layer names a converter wrote into tensor names (Keras: scope paths, mapped through the scope
    aliases when the source gives them, else read with `_N` suffixes stripped; litert-torch: `pkg.Class_attr`
    components of the module path)."""
    found: list[str] = []
    nested = {parent for entries in (aliases or {}).values() for parent, _ in entries if parent}
    for full in tensor_names:
        for part in full.split(";"):
            if "/" not in part:  # converter suffixes such as ";1"
                continue
            comps = [c for c in part.split("/") if c]
            for j, c in enumerate(comps):
                if aliases:
                    entries = aliases.get(c, [])
                    parent = comps[j - 1] if j and comps[j - 1] in nested else None
                    hit = [n for p, n in entries if p == parent] or ([entries[0][1]] if len(entries) == 1 else [])
                    found += [n for n in hit[:1] if n in order]
                    continue
                for cand in (c, re.sub(r"_\d+$", "", c)):
                    if cand in order:
                        found.append(cand)
            if not comps[1:] or not all("." in c for c in comps[1:]):
                continue
            attrs = [c.rsplit(".", 1)[-1].split("_", 1)[1] for c in comps[1:] if "_" in c.rsplit(".", 1)[-1]]
            if comps and comps[0].endswith("ChannelLastIOWrapper") and attrs[:1] == ["wrapped"]:
                attrs = attrs[1:]
            hit = _module_path(attrs, order)
            if hit:
                found.append(hit)
    return found


def _module_path(attrs: list[str], order: dict[str, int]) -> str | None:
    """The longest run of attribute names that is a module path (`features.0`), or the unique module path ending
    with it: a submodule reached through a method (`self.ssd.decoded(x)`) is missing from the converter's scope."""
    for start in range(len(attrs)):
        for end in range(len(attrs), start, -1):
            path = ".".join(attrs[start:end])
            if path in order:
                return path
            tail = [n for n in order if n.endswith("." + path)]
            if len(tail) == 1:
                return tail[0]
    return None


def describe(layer: Layer) -> str:
    return layer.name + (f" (+{', '.join(layer.fused)})" if layer.fused else "")


def float_ops(c: Census) -> list[OpInfo]:
    """Ops of a quantized artifact that compute in float (excluding Q/DQ converters)."""
    return [o for o in c.ops if o.compute in ("float32", "float16")]
