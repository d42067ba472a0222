"""Float ONNX graphs of the sources, through each framework's maintained exporter: `torch.onnx.export(dynamo=True)`
for PyTorch, tf2onnx for Keras. Each returns (ModelProto, exporter description, ONNX node -> source layer) so the
ONNX target can keep the layers `mixed` chose in FP16. Called by Source.to_float_onnx; frameworks imported here.
"""

from __future__ import annotations

import ast
import contextlib
import io
import os
import warnings
from typing import Any

from edgemp.errors import ConversionError


def torch_to_onnx(source: Any, batch_size: int | None, opset: int) -> tuple[Any, str, dict[str, str]]:
    import torch

    args = source.example_args
    if batch_size is not None:
        args = tuple(a[:1].expand(batch_size, *a.shape[1:]).contiguous() for a in args)
    dynamic = None if batch_size is not None else tuple({0: torch.export.Dim("batch")} for _ in args)
    try:
        with quiet():
            program = torch.onnx.export(source.module, args, dynamo=True, opset_version=opset,
                                        dynamic_shapes=dynamic, verbose=False, optimize=True)
    except Exception as exc:  # noqa: BLE001 - the exporter raises many types; one typed error with the cause
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:400]
        raise ConversionError(f"torch.onnx.export (dynamo) could not export {source.name!r}: {first}. The exporter "
                              "needs what torch.export needs (no data-dependent control flow); a model that converts "
                              "to .tflite already passes torch.export, so this is an ONNX exporter gap: try another "
                              "opset (OnnxOptions(opset=...)).") from exc
    model = program.model_proto
    order = {n for n, _ in source.layers()}
    return model, f"torch.onnx.export(dynamo=True) {torch.__version__}", {
        n.name: layer for n in model.graph.node if (layer := _torch_layer(n, order))}


def _torch_layer(node: Any, order: set[str]) -> str | None:
    """The deepest module path in the node's name scopes (`features.3`): what the user calls the layer."""
    meta = {p.key: p.value for p in node.metadata_props}
    try:
        scopes = ast.literal_eval(meta.get("pkg.torch.onnx.name_scopes", "[]"))
    except (ValueError, SyntaxError):
        return None
    hits = [s for s in scopes if s in order]
    return hits[-1] if hits else None


def keras_to_onnx(source: Any, batch_size: int | None, opset: int) -> tuple[Any, str, dict[str, str]]:
    import tf2onnx

    from edgemp.mixed.graph import mentions
    from edgemp.sources.keras import _flat, import_tf

    tf = import_tf()
    model = source.model
    specs = source.input_specs()
    sig = [tf.TensorSpec((batch_size, *s.shape[1:]), tf.as_dtype(s.dtype), name=s.name) for s in specs]

    def forward(*xs: Any) -> list[Any]:
        return _flat(model(xs[0] if len(xs) == 1 else list(xs), training=False))

    fn = tf.function(forward)
    try:
        with quiet():
            proto, _ = tf2onnx.convert.from_function(fn, input_signature=sig, opset=opset)
            captures = fn.get_concrete_function(*sig).graph.captures
    except Exception as exc:  # noqa: BLE001
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:400]
        raise ConversionError(f"tf2onnx could not convert Keras model {source.name!r}: {first}") from exc
    _captured_constants(proto, captures, {s.name for s in specs}, source.name)
    _standard_ops(proto, source.name)
    order = {n: i for i, (n, _) in enumerate(source.layers())}
    aliases = source.scope_aliases()
    layers = {}
    for n in proto.graph.node:
        found = mentions([n.name], order, aliases)
        if found:
            layers[n.name] = found[-1]
    return proto, f"tf2onnx {tf2onnx.__version__} (tensorflow {tf.__version__})", layers


def _standard_ops(proto: Any, name: str) -> None:
    """tf2onnx passes TF ops it has no handler for through under their TF names; Erfc (TF's exact GELU) is one:
    rewritten exactly as 1 - Erf. Anything else ONNX does not define is refused by name."""
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    g = proto.graph
    nodes = []
    for n in g.node:
        if n.op_type == "Erfc" and n.domain in ("", "ai.onnx"):
            erf, one = f"{n.name}_erf", f"{n.name}_one"
            g.initializer.append(numpy_helper.from_array(np.array(1.0, np.float32), one))
            nodes += [helper.make_node("Erf", [n.input[0]], [erf], name=erf),
                      helper.make_node("Sub", [one, erf], list(n.output), name=n.name)]
        else:
            nodes.append(n)
    del g.node[:]
    g.node.extend(nodes)
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 18)
    unknown = sorted({n.op_type for n in g.node if n.domain in ("", "ai.onnx")
                      and not onnx.defs.has(n.op_type, max_inclusive_version=opset)})
    if unknown:
        raise ConversionError(f"tf2onnx could not express op(s) {', '.join(unknown)} of Keras model {name!r} in ONNX "
                              f"opset {opset}: replace the layer(s) using them, or use the TFLite/Core ML targets.")


def _captured_constants(proto: Any, captures: Any, inputs: set[str], name: str) -> None:
    """Tensors a Keras layer keeps as plain constants (Normalization's mean and variance) are captured by the traced
    function, and tf2onnx (like Keras' own ONNX export) makes them graph inputs: put their values back as
    initializers."""
    import numpy as np
    from onnx import numpy_helper

    g = proto.graph
    extra = [i for i in g.input if i.name not in inputs and i.name not in {t.name for t in g.initializer}]
    if not extra:
        return
    values = {internal.name: external for external, internal in captures}
    for vi in extra:
        external = values.get(vi.name)
        if external is None or external.dtype.name == "resource":
            raise ConversionError(f"tf2onnx left {vi.name!r} of Keras model {name!r} as a graph input edgemp cannot "
                                  "fill; the model's inputs are " + ", ".join(sorted(inputs)))
        g.initializer.append(numpy_helper.from_array(np.asarray(external.numpy()), vi.name))
    kept = [i for i in g.input if i not in extra]
    del g.input[:]
    g.input.extend(kept)


@contextlib.contextmanager
def quiet():  # type: ignore[no-untyped-def]
    """The exporters print progress and deprecation chatter on stdout/stderr; edgemp reports its own."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()), \
            warnings.catch_warnings():
        warnings.simplefilter("ignore")
        old = os.environ.get("TF_CPP_MIN_LOG_LEVEL")
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
        try:
            yield
        finally:
            if old is None:
                os.environ.pop("TF_CPP_MIN_LOG_LEVEL", None)
            else:
                os.environ["TF_CPP_MIN_LOG_LEVEL"] = old
