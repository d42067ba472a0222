"""Graph rewrites before litert-torch export that remove layout overhead in NHWC artifacts.

`x.mean(dim=(2, 3))` on an NCHW activation lowers, after the channel-last I/O wrap, to a TRANSPOSE back to NCHW
followed by MEAN; `adaptive_avg_pool2d(x, 1)` + flatten computes the same numbers and lowers to a layout-free
MEAN on NHWC. The rewrite runs on the torch.export graph, so it applies whatever module produced the pattern.
"""

from __future__ import annotations

from typing import Any


def rewrite_spatial_means(module: Any, args: tuple[Any, ...]) -> tuple[Any, list[str]]:
    """Return (module to convert, descriptions of the rewrites). The original module is not modified."""
    import torch

    program = torch.export.export(module, args)
    gm = program.module()
    aten = torch.ops.aten
    done: list[str] = []
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target is not aten.mean.dim:
            continue
        x = node.args[0]
        val = x.meta.get("val") if hasattr(x, "meta") else None
        if val is None or val.dim() != 4:
            continue
        dims = {d % 4 for d in node.args[1]}
        keepdim = bool(node.args[2]) if len(node.args) > 2 else bool(node.kwargs.get("keepdim", False))
        if dims != {2, 3} or node.kwargs.get("dtype") is not None:
            continue
        with gm.graph.inserting_before(node):
            pooled = gm.graph.call_function(aten.adaptive_avg_pool2d.default, (x, [1, 1]))
            new = pooled if keepdim else gm.graph.call_function(aten.flatten.using_ints, (pooled, 1))
        node.replace_all_uses_with(new)
        gm.graph.erase_node(node)
        done.append(f"{node.name}: mean(dim=(2, 3){', keepdim=True' if keepdim else ''}) -> adaptive_avg_pool2d(1)"
                    + ("" if keepdim else " + flatten"))
    if not done:
        return module, []
    gm.graph.lint()
    gm.recompile()
    return gm, done
