"""Rewrites of the exported graph that make QAT train what the int8 .tflite computes: composite ops split into the
ops TFLite runs (each part fake-quantized), constant per-feature scaling folded into the Linear it feeds, division by
a constant written as TFLite writes it, and rsqrt saturating as the int8 kernel does."""

from __future__ import annotations

import contextlib
from typing import Any

import torch


def aten_name(node: Any) -> str | None:
    """The aten op a call_function node runs, by name ("rsqrt.default"; exported graphs hold their own OpOverload
    objects), else None."""
    return str(node.target).removeprefix("aten.") if node.op == "call_function" else None


# aten ops litert-torch lowers to more than one TFLite op with no quantization between them (SiLU becomes LOGISTIC and
# MUL; LayerNorm MEAN, SQUARED_DIFFERENCE, ADD, RSQRT, MUL...): split in the exported graph before it is prepared, so
# each part gets its own fake quantization, as the int8 kernels compute it (a LayerNorm left whole has no fake
# quantization inside and exports as float ops the int8 label refuses). name -> (the ops, from the node).
def _call(g: Any, op: Any, *args: Any) -> Any:
    return g.call_function(op, args)


def _silu(g: Any, node: Any) -> Any:
    x = node.args[0]
    return _call(g, torch.ops.aten.mul.Tensor, x, _call(g, torch.ops.aten.sigmoid.default, x))


def _hardsigmoid(g: Any, node: Any) -> Any:  # relu6(x + 3) / 6, as TFLite computes it (ADD, RELU6, MUL)
    shifted = _call(g, torch.ops.aten.add.Tensor, node.args[0], 3.0)
    return _call(g, torch.ops.aten.mul.Tensor, _call(g, torch.ops.aten.hardtanh.default, shifted, 0.0, 6.0), 1 / 6)


def _layer_norm(g: Any, node: Any) -> Any:
    """(x - mean) * rsqrt(mean((x - mean)^2) + eps) * weight + bias, over the normalized dimensions."""
    aten = torch.ops.aten
    x, shape = node.args[0], node.args[1]
    weight, bias = (node.args[i] if len(node.args) > i else node.kwargs.get(k) for i, k in ((2, "weight"), (3, "bias")))
    eps = node.args[4] if len(node.args) > 4 else node.kwargs.get("eps", 1e-5)
    dims = list(range(-len(shape), 0))
    centred = _call(g, aten.sub.Tensor, x, _call(g, aten.mean.dim, x, dims, True))
    var = _call(g, aten.mean.dim, _call(g, aten.mul.Tensor, centred, centred), dims, True)
    out = _call(g, aten.mul.Tensor, centred, _call(g, aten.rsqrt.default, _call(g, aten.add.Tensor, var, eps)))
    if weight is not None:
        out = _call(g, aten.mul.Tensor, out, weight)
    return out if bias is None else _call(g, aten.add.Tensor, out, bias)


def _attention(g: Any, node: Any) -> Any:
    """softmax(q @ k^T * scale) @ v, as litert-torch lowers scaled_dot_product_attention (BATCH_MATMUL, MUL,
    SOFTMAX, BATCH_MATMUL). A mask, causal attention, dropout or grouped heads: left whole (None)."""
    aten = torch.ops.aten
    q, k, v = node.args[:3]
    named = dict(zip(("attn_mask", "dropout_p", "is_causal"), node.args[3:6], strict=False)) | node.kwargs
    if named.get("attn_mask") is not None or named.get("dropout_p") or named.get("is_causal") or \
            named.get("enable_gqa") or not isinstance(q.meta.get("val"), torch.Tensor):
        return None
    scale = named.get("scale") or q.meta["val"].shape[-1] ** -0.5
    scores = _call(g, aten.mul.Tensor, _call(g, aten.matmul.default, q, _call(g, aten.transpose.int, k, -2, -1)),
                   float(scale))
    return _call(g, aten.matmul.default, _call(g, aten.softmax.int, scores, -1), v)


_SPLIT = {"silu.default": _silu, "silu_.default": _silu, "hardsigmoid.default": _hardsigmoid,
          "hardsigmoid_.default": _hardsigmoid, "layer_norm.default": _layer_norm,
          "scaled_dot_product_attention.default": _attention}


def _divide_as_tflite(gm: Any) -> int:
    """x / c with c a constant tensor -> x * (1 / c), as the TFLite converter writes it (a MUL by the reciprocal): the
    constant that training fake-quantizes is then the one the .tflite stores in int8."""
    changed = 0
    for node in list(gm.graph.nodes):
        divisor = constant_operand(gm, node.args[1]) if aten_name(node) == "div.Tensor" else None
        if divisor is None:
            continue
        name = "edgemp_reciprocal_" + str(node.args[1].target).replace(".", "_")
        if not hasattr(gm, name):
            gm.register_buffer(name, 1.0 / divisor)
        with gm.graph.inserting_before(node):
            inverse = gm.graph.get_attr(name)
            mul = _call(gm.graph, torch.ops.aten.mul.Tensor, node.args[0], inverse)
        mul.meta.update(node.meta)
        node.replace_all_uses_with(mul)
        gm.graph.erase_node(node)
        changed += 1
    return changed


def constant_operand(gm: Any, arg: Any) -> torch.Tensor | None:
    """The float tensor a get_attr node reads (a buffer or parameter used as an operand), else None."""
    if not isinstance(arg, torch.fx.Node) or arg.op != "get_attr":
        return None
    value: Any = gm
    for part in str(arg.target).split("."):
        value = getattr(value, part, None)
    return value if isinstance(value, torch.Tensor) and value.is_floating_point() else None


def split_composite_ops(gm: Any) -> Any:
    """Rewrite `gm` (an exported GraphModule) in place: see _SPLIT, fold_affine_into_linear and _divide_as_tflite. The
    new nodes get their tensor metadata (shape, dtype) by running them on the graph's fake tensors, as export would
    have. What was rewritten, counted, is in gm.meta["edgemp_rewrites"] (the QAT report lists it)."""
    from torch._guards import detect_fake_mode

    fake_mode = detect_fake_mode([n.meta.get("val") for n in gm.graph.nodes])
    counts: dict[str, int] = {}
    for node in list(gm.graph.nodes):
        split = _SPLIT.get(aten_name(node) or "")
        if split is None:
            continue
        before = set(gm.graph.nodes)
        with gm.graph.inserting_before(node):
            new = split(gm.graph, node)
        if new is None:
            continue
        _add_meta([n for n in gm.graph.nodes if n not in before], node, fake_mode)
        node.replace_all_uses_with(new)
        gm.graph.erase_node(node)
        key = f"{(aten_name(node) or '').split('.')[0].rstrip('_')} split into its TFLite ops"
        counts[key] = counts.get(key, 0) + 1
    counts["constant scaling folded into the Linear it feeds"] = fold_affine_into_linear(gm)
    counts["x / constant written as x * (1 / constant)"] = _divide_as_tflite(gm)
    counts["concatenation feeding a Linear split into one Linear per part"] = split_joined_linear(gm)
    gm.meta["edgemp_rewrites"] = {k: v for k, v in counts.items() if v}
    if gm.meta["edgemp_rewrites"]:
        gm.graph.lint()
        gm.recompile()
    return gm


# Elementwise ops by a constant that fold into the Linear they feed (each maps out = a * x + d to new a and d).
_AFFINE = {"add.Tensor", "sub.Tensor", "rsub.Scalar", "mul.Tensor", "div.Tensor"}


def fold_affine_into_linear(gm: Any) -> int:
    """Per-feature scaling and shifting by constants (buffers, frozen parameters, numbers) that feeds a Linear
    ((x - mean) / std -> Linear, x / 255 -> Linear) becomes part of the Linear's weight and bias: W' = W * a,
    b' = b + W @ d. Left apart, the .tflite stores such a constant as one int8 tensor with one scale (1/std from 0.01
    to 10.7 keeps about 20 distinct values, and no training moves a constant); folded, it is in weights quantized per
    output channel that training adjusts, as batch norm is folded into a convolution. W' is computed in the graph
    from the trainable W (W * a, a constant): training W' directly, on the unscaled inputs, diverged (chance accuracy
    at lr 1e-3); `bake_folds` makes it one constant before export. Exact in float; returns the number of Linear layers changed."""
    from torch._guards import detect_fake_mode

    fake_mode = detect_fake_mode([n.meta.get("val") for n in gm.graph.nodes])
    aten, folded = torch.ops.aten, 0
    for linear in list(gm.graph.nodes):
        if aten_name(linear) != "linear.default" or len(linear.args) < 2 or linear.kwargs:
            continue
        weight = constant_operand(gm, linear.args[1])
        has_bias = len(linear.args) > 2 and linear.args[2] is not None
        if weight is None or weight.dim() != 2 or (has_bias and constant_operand(gm, linear.args[2]) is None):
            continue
        chain = _affine_chain(gm, linear.args[0], weight.shape[1])
        if not chain:
            continue
        a, d = _compose(chain, weight.shape[1])
        before = set(gm.graph.nodes)
        with gm.graph.inserting_before(linear):
            w_node = _call(gm.graph, aten.mul.Tensor, linear.args[1],
                           _constant(gm, f"{linear.name}_scale", a.to(weight.dtype)))
            b_node = linear.args[2] if has_bias else None
            if bool((d != 0).any()):
                shift = _call(gm.graph, aten.mv.default, linear.args[1],
                              _constant(gm, f"{linear.name}_shift", d.to(weight.dtype)))
                b_node = shift if b_node is None else _call(gm.graph, aten.add.Tensor, b_node, shift)
        new = [n for n in gm.graph.nodes if n not in before]
        _add_meta([n for n in new if n.op == "call_function"], linear, fake_mode)
        for n in new:
            n.meta[_FOLD] = True
        nodes = [n for n, _, _ in chain]
        linear.args = (nodes[0].args[0 if chain[0][2] else 1], w_node, b_node, *linear.args[3:])
        constants = [arg for n in nodes for arg in n.args if isinstance(arg, torch.fx.Node) and arg.op == "get_attr"]
        for node in reversed(nodes):
            gm.graph.erase_node(node)
        for node in dict.fromkeys(constants):
            if not node.users:
                gm.graph.erase_node(node)
        folded += 1
    return folded


def split_joined_linear(gm: Any) -> int:
    """Linear(cat([a, b], -1)) -> Linear(a, W[:, :na]) + Linear(b, W[:, na:]) (the bias on the first). An int8
    concatenation has one scale for all its parts, set by the widest: an L2-normalised embedding joined with a raw
    brightness of 0..255 keeps 3 levels per feature, and no training moves that scale. Split, each part is quantized
    on its own scale and the int8 ADD of the partial products requantizes them. The slices are computed in the graph
    from the trainable W (as fold_affine_into_linear's product; `bake_folds` makes them constants before export).
    Exact in float; returns the number of Linear layers split."""
    from torch._guards import detect_fake_mode

    fake_mode = detect_fake_mode([n.meta.get("val") for n in gm.graph.nodes])
    aten, split = torch.ops.aten, 0
    for linear in list(gm.graph.nodes):
        if aten_name(linear) != "linear.default" or linear.kwargs or len(linear.args) < 2:
            continue
        cat, weight = linear.args[0], linear.args[1]
        bias = linear.args[2] if len(linear.args) > 2 else None
        if not isinstance(cat, torch.fx.Node) or aten_name(cat) != "cat.default" or len(cat.users) != 1 or \
                cat.kwargs or not isinstance(weight, torch.fx.Node) or \
                (constant_operand(gm, weight) is None and not is_fold(weight)):
            continue
        parts, dim = cat.args[0], (cat.args[1] if len(cat.args) > 1 else 0)
        vals = [getattr(p, "meta", {}).get("val") for p in parts]
        if len(parts) < 2 or not all(isinstance(v, torch.Tensor) and v.is_floating_point() for v in vals) or \
                dim not in (-1, vals[0].dim() - 1):
            continue
        before = set(gm.graph.nodes)
        total, offset = None, 0
        with gm.graph.inserting_before(linear):
            for i, (part, val) in enumerate(zip(parts, vals, strict=True)):
                width = int(val.shape[-1])
                w = _call(gm.graph, aten.slice.Tensor, weight, 1, offset, offset + width)
                w.meta[_FOLD] = True
                y = _call(gm.graph, aten.linear.default, part, w, *((bias,) if i == 0 and bias is not None else ()))
                total = y if total is None else _call(gm.graph, aten.add.Tensor, total, y)
                offset += width
        _add_meta([n for n in gm.graph.nodes if n not in before], linear, fake_mode)
        linear.replace_all_uses_with(total)
        gm.graph.erase_node(linear)
        gm.graph.erase_node(cat)
        split += 1
    return split


_FOLD = "edgemp_fold"  # node.meta key of the weight and bias arithmetic fold_affine_into_linear adds


def is_fold(node: Any) -> bool:
    return bool(node.meta.get(_FOLD))


def _constant(gm: Any, name: str, value: torch.Tensor) -> Any:
    gm.register_buffer(f"edgemp_fold_{name}", value)
    node = gm.graph.get_attr(f"edgemp_fold_{name}")
    node.meta["val"] = value
    return node


def bake_folds(gm: Any) -> None:
    """The weight and bias fold_affine_into_linear computes in the graph, computed once and stored as constants
    (export wants a Linear's weight and bias constant)."""
    values: dict[Any, Any] = {}
    for node in list(gm.graph.nodes):
        if not is_fold(node):
            continue
        if node.op == "get_attr":
            values[node] = constant_operand(gm, node)
            continue
        args = [values.get(a, constant_operand(gm, a)) if isinstance(a, torch.fx.Node) else a for a in node.args]
        with torch.no_grad():
            values[node] = node.target(*args)
        if all(is_fold(u) for u in node.users):
            continue
        name = f"edgemp_baked_{node.name}"
        gm.register_buffer(name, values[node].detach().clone())
        with gm.graph.inserting_before(node):
            baked = gm.graph.get_attr(name)
        baked.meta.update(node.meta)
        baked.meta.pop(_FOLD, None)
        node.replace_all_uses_with(baked)
    for node in reversed(list(gm.graph.nodes)):
        if (is_fold(node) or node.op == "get_attr") and not node.users:
            gm.graph.erase_node(node)
    gm.graph.lint()
    gm.recompile()


def _scale_vector(gm: Any, node: Any, features: int) -> torch.Tensor | None:
    """The constant operand of `node` as a float64 vector over the last dimension (a scalar broadcasts), None when it
    varies along any other dimension or is not a constant. A trainable parameter (LayerNorm's weight and bias) is not
    folded: it stays trainable, and fake-quantized as the .tflite stores it."""
    for arg in node.args[:2]:
        if isinstance(arg, (int, float)) and not isinstance(arg, bool):
            return torch.full((features,), float(arg), dtype=torch.float64)
        c = constant_operand(gm, arg)
        if c is None:
            continue
        if c.requires_grad:
            return None
        val = node.meta.get("val")
        if c.numel() == 1:
            return torch.full((features,), float(c.reshape(())), dtype=torch.float64)
        if c.shape[-1] == features and c.numel() == features and val is not None and c.dim() <= val.dim():
            return c.detach().double().reshape(features)
    return None


def _variable_index(gm: Any, node: Any) -> int:
    return 0 if isinstance(node.args[0], torch.fx.Node) and constant_operand(gm, node.args[0]) is None else 1


def _affine_step(gm: Any, node: Any, features: int) -> tuple[Any, torch.Tensor, bool] | None:
    """(its variable input, its constant as a vector, is the variable first?) when `node` is an affine op by a
    constant that keeps its input's shape and is read by one op only; else None."""
    if not isinstance(node, torch.fx.Node) or aten_name(node) not in _AFFINE or len(node.users) != 1 or \
            len(node.args) != 2 or node.kwargs:
        return None
    c = _scale_vector(gm, node, features)
    first = _variable_index(gm, node) == 0
    variable = node.args[0 if first else 1]
    val, out = getattr(variable, "meta", {}).get("val"), node.meta.get("val")
    if c is None or not isinstance(variable, torch.fx.Node) or constant_operand(gm, variable) is not None or \
            not isinstance(val, torch.Tensor) or not isinstance(out, torch.Tensor) or \
            tuple(val.shape) != tuple(out.shape) or not val.is_floating_point() or \
            (aten_name(node) == "div.Tensor" and not first):
        return None
    return variable, c, first


def _affine_chain(gm: Any, start: Any, features: int) -> list[tuple[Any, torch.Tensor, bool]]:
    """The affine ops by constants that lead, each the only user of the one before, into a Linear's input (first op
    first), each with its constant and where its variable is; empty when there are none."""
    chain: list[tuple[Any, torch.Tensor, bool]] = []
    node = start
    while (step := _affine_step(gm, node, features)) is not None:
        chain.insert(0, (node, step[1], step[2]))
        node = step[0]
    return chain


def _compose(chain: list[tuple[Any, torch.Tensor, bool]], features: int) -> tuple[torch.Tensor, torch.Tensor]:
    a = torch.ones(features, dtype=torch.float64)
    d = torch.zeros(features, dtype=torch.float64)
    for node, c, first in chain:
        op = aten_name(node)
        if op == "add.Tensor":
            d = d + c
        elif op == "sub.Tensor":
            a, d = (a, d - c) if first else (-a, c - d)
        elif op == "rsub.Scalar":  # c - x
            a, d = -a, c - d
        elif op == "mul.Tensor":
            a, d = a * c, d * c
        else:  # div.Tensor, x / c
            a, d = a / c, d / c
    return a, d


def _add_meta(nodes: list[Any], replaced: Any, fake_mode: Any) -> None:
    """The replaced node's metadata (source location, module stack: what names the layer in reports) on every new
    node, and each one's own "val" computed from its inputs' (the replaced node's when that cannot be done)."""
    def val(a: Any) -> Any:
        return a.meta.get("val") if isinstance(a, torch.fx.Node) else a

    for n in nodes:  # in graph order: inputs before users
        n.meta.update({k: v for k, v in replaced.meta.items() if k != "val"})
        try:
            with fake_mode if fake_mode is not None else contextlib.nullcontext():
                n.meta["val"] = n.target(*[val(a) for a in n.args])
        except Exception:  # noqa: BLE001 - metadata only: the dtype is what preparation reads
            n.meta["val"] = replaced.meta.get("val")


# TFLite's int8 RSQRT returns its largest output for an input of 0 ("any value close to 0 represents the max output
# value"): fake-quantized, a small sum of squares rounds to 0 and rsqrt(0) is infinite, so the first forward pass of
# an L2 norm is NaN. In the training graph rsqrt's input is floored here (after its fake quantization), so an input
# of 0 gives a value the output's fake quantization clamps to its largest, as the kernel does, with no gradient; the
# floor is removed again before export (the int8 kernel saturates on its own). The floor keeps rsqrt's derivative
# finite in float32.
_RSQRT_FLOOR = 1e-12


def saturate_rsqrt(gm: Any) -> list[str]:
    """Rewrite the prepared graph `gm` in place (see _RSQRT_FLOOR); the names of the fake-quant modules on those rsqrt
    outputs: their range comes from calibration and is not re-observed on saturated values."""
    outputs = []
    for node in list(gm.graph.nodes):
        if aten_name(node) != "rsqrt.default":
            continue
        with gm.graph.inserting_before(node):
            floored = gm.graph.call_function(torch.ops.aten.clamp_min.default, (node.args[0], _RSQRT_FLOOR))
        floored.meta.update({k: v for k, v in node.args[0].meta.items() if k == "val"})
        node.replace_input_with(node.args[0], floored)
        outputs += [str(u.target) for u in node.users if u.op == "call_module"]
    if outputs:
        gm.graph.lint()
        gm.recompile()
    return outputs


def drop_rsqrt_floors(gm: Any) -> None:
    dropped = False
    for node in list(gm.graph.nodes):
        if aten_name(node) == "clamp_min.default" and node.args[1] == _RSQRT_FLOOR and \
                all(aten_name(u) == "rsqrt.default" for u in node.users):
            node.replace_all_uses_with(node.args[0])
            gm.graph.erase_node(node)
            dropped = True
    if dropped:
        gm.graph.lint()
        gm.recompile()
