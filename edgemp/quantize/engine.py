"""Quantize a float .tflite with the AI Edge Quantizer: calibrate once (plain min/max), apply any recipe.

Min/max statistics, not the quantizer's default moving average: the average clips activation ranges
(top-1 agreement fell to 0.755 on a trained CNN here, see shared/STACK.md); min/max matched the TF converter.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import os
import threading
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

from edgemp.calibration.data import Sample
from edgemp.targets.tflite.compat import inline_buffers
from edgemp.errors import ConversionError
from edgemp.quantize.recipes import Recipe
from edgemp.quantize.rewrites import drop_unsigned_outputs, has_unsigned_outputs

log = logging.getLogger(__name__)

_CHUNK = 16
Statistics = dict[str, Any]  # tensor name -> QSV (min/max), as the quantizer returns them


def signature_key(float_tflite: bytes) -> str:
    from ai_edge_litert.interpreter import Interpreter

    keys = list(Interpreter(model_content=float_tflite).get_signature_list())
    if len(keys) != 1:
        raise ConversionError(f"expected one signature in the float model, found {keys}")
    return keys[0]


def calibrate(float_tflite: bytes, samples: Sequence[Sample], num_threads: int = 1,
              progress: bool | None = None) -> Statistics:
    """Run the float model over the samples once and keep the min/max of every tensor.

    Fed in chunks so edgemp can show its own progress; min/max merging is order-free, so the statistics
    (and the artifact) are identical to a single call.
    """
    from ai_edge_quantizer import calibrator, recipe_manager
    from ai_edge_quantizer.utils import qsv_utils

    from edgemp._progress import track
    from edgemp.quantize.recipes import static_rule

    _quiet_quantizer()
    manager = recipe_manager.RecipeManager()
    manager.load_quantization_recipe([static_rule(8)])  # decides which tensors get statistics: all of them
    key = signature_key(float_tflite)
    try:
        with _silenced():
            cal = calibrator.Calibrator(float_tflite, num_threads=num_threads, qsv_update_func=qsv_utils.min_max_update)
        chunks = [list(samples[i : i + _CHUNK]) for i in range(0, len(samples), _CHUNK)]
        for chunk in track(chunks, "Calibrating", total=len(chunks), enabled=progress):
            with _silenced():
                cal.calibrate({key: chunk}, manager)
    except Exception as exc:
        from edgemp.validation.inputs import failure_hint

        hint = failure_hint(float_tflite, exc)
        raise ConversionError(f"calibration failed: {str(exc).strip().splitlines()[-1] if str(exc).strip() else exc!r}"
                              + (f". {hint}" if hint else "")) from exc
    return dict(cal.get_model_qsvs())


def merge_statistics(parts: Sequence[Statistics]) -> Statistics:
    """Statistics of consecutive shards of one calibration set, as one calibrate() call over the whole set gives
    them: min/max merging is exact and order-free, and tensors keep the order they were first seen in."""
    from ai_edge_quantizer.utils import qsv_utils

    merged: Statistics = {}
    for part in parts:
        for name, qsv in part.items():
            merged[name] = qsv_utils.min_max_update(merged[name], qsv) if name in merged else qsv
    return merged


def apply_recipe(float_tflite: bytes, recipe: Recipe, statistics: Statistics | None = None, *,
                 candidate: bool = False) -> bytes:
    """Quantize with a recipe. Static recipes need `statistics` from calibrate(); re-use them across recipes.

    `candidate=True`: an artifact only scored on this host, one of many from the same float model (analysis, the
    mixed search): the parsed float model is kept for the next call on this thread (parsing it is a third of the
    time on a few hundred ops; the quantizer copies it before changing anything), and the constant data stays where
    the quantizer put it (LiteRT here reads it; only what ships needs it inline)."""
    _quiet_quantizer()
    with _QUANTIZE_LOCK:
        result = _apply(float_tflite, recipe, statistics, candidate)
    return _finish(result, float_tflite, candidate)


# One quantization at a time in a process: the AI Edge Quantizer is not thread-safe. Candidates quantized on several
# threads at once (each with its own Quantizer and statistics) scored as the float model or as NaN now and then, more
# often under load (tests/test_scale.py); serialised, the candidates' interpreter runs still overlap.
_QUANTIZE_LOCK = threading.Lock()


def _apply(float_tflite: bytes, recipe: Recipe, statistics: Statistics | None, candidate: bool) -> Any:
    qt = _quantizer(float_tflite, recipe, keep=candidate)
    if qt.need_calibration and statistics is None:
        raise ConversionError("this recipe quantizes activations: calibrate() first and pass its statistics")
    # the quantizer aligns the statistics of ops that share a scale in the dict it is given, per recipe: a copy, so
    # one recipe never sees another's (candidates on threads share one dict, and the order they run in would leak in)
    stats = copy.deepcopy(statistics) if statistics is not None and qt.need_calibration else None
    try:
        with _silenced(), _no_progress_bars():
            result = qt.quantize(stats, enable_progress_report=False, enable_progress_bar=False)
    except Exception as exc:
        raise ConversionError(f"quantization failed: {type(exc).__name__}: {exc}") from exc
    if result.quantized_model is None:
        raise ConversionError("the quantizer returned no model")
    return result


def _finish(result: Any, float_tflite: bytes, candidate: bool) -> bytes:
    unsigned = has_unsigned_outputs(float_tflite)
    if candidate and not unsigned:
        return bytes(result.quantized_model)
    # constant data back inside the flatbuffer: older device runtimes cannot read the quantizer's offset buffers
    model = inline_buffers(bytes(result.quantized_model))
    return drop_unsigned_outputs(model) if unsigned else model


_parsed = threading.local()  # this thread's last (float model, Quantizer holding it parsed)


def _quantizer(float_tflite: bytes, recipe: Recipe, keep: bool) -> Any:
    from ai_edge_quantizer import quantizer

    recipe = merged_rules(recipe)
    if not keep:
        return quantizer.Quantizer(bytearray(float_tflite), recipe)
    held = getattr(_parsed, "held", None)
    if held is None or held[0] is not float_tflite:  # the same bytes object: a session's float model
        held = _parsed.held = (float_tflite, quantizer.Quantizer(bytearray(float_tflite)))
    held[1].load_quantization_recipe(recipe)
    return held[1]


def merged_rules(recipe: Recipe) -> Recipe:
    """The same recipe in fewer rules: within a run of consecutive rules with one algorithm and config, the rules
    for one operation become one rule whose regex is the alternation of theirs.

    The quantizer tries every rule's regex on every op, several times per quantization, and rebuilds the rule list
    each time it asks whether calibration is needed: a mixed candidate with one float rule per op (an "only this
    layer int8" candidate of EfficientNetB0 names 237 ops) spent half its quantization time there. It is exact:
    re.search of `(?:a)|(?:b)` matches where either does, and rules that set the same config cannot override each
    other differently, whatever their order, so each op gets the config it got before (and the artifact the same
    bytes: tests/test_scale.py)."""
    if any(not isinstance(r.get("regex"), str) or "operation" not in r for r in recipe):
        return recipe  # not a rule list of the usual shape: the quantizer reports what is wrong with it
    out: Recipe = []
    block: dict[str, list[str]] = {}  # operation -> regexes, for the run of rules with one config
    config: Any = None

    def flush() -> None:
        for op, rx in block.items():
            out.append(dict(config, operation=op, regex=rx[0] if len(rx) == 1 else "|".join(f"(?:{r})" for r in rx)))
        block.clear()

    for rule in recipe:
        same = {k: v for k, v in rule.items() if k not in ("regex", "operation")}
        if same != config:
            flush()
            config = same
        block.setdefault(rule["operation"], []).append(rule["regex"])
    flush()
    return out


def release_parsed() -> None:
    """Drop this thread's kept float model (the end of a batch of candidates)."""
    _parsed.held = None


def _quiet_quantizer() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    logging.getLogger("absl").setLevel(logging.ERROR)


@contextlib.contextmanager
def _no_progress_bars() -> Iterator[None]:
    """quantize(enable_progress_bar=False) does not reach the model modifier (ai-edge-quantizer 0.10: quantizer.py
    calls _get_quantized_model without it), which draws a tqdm bar for models of 100 tensors or more; on a candidate
    thread, where stderr is not swapped, that bar reached the user's terminal once per candidate. Off while this
    process's one quantization runs (callers hold _QUANTIZE_LOCK)."""
    from ai_edge_quantizer.utils import progress_utils

    original = progress_utils.ProgressBar

    class Off(original):  # type: ignore[misc, valid-type]
        def __init__(self, total_steps: int, description: str = "", disappear_on_finish: bool = False,
                     enable: bool | None = None) -> None:
            super().__init__(total_steps, description, disappear_on_finish, enable=False)

    progress_utils.ProgressBar = Off
    try:
        yield
    finally:
        progress_utils.ProgressBar = original


@contextlib.contextmanager
def _silenced():  # type: ignore[no-untyped-def]
    """The quantizer prints reports and tqdm bars; library code must not (edgemp shows its own progress).
    sys.stdout/stderr and the warning filters are process-wide: swapped from the main thread only (on a candidate
    thread, two swaps interleaving would leave the process writing into a buffer; the executor silences warnings
    around its pool, and quantize() prints nothing with its reports and bars off)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "preserve_all_tensors is for debugging": calibration needs exactly that
        yield
