"""Quantization stage: float .tflite + recipe (+ statistics) -> quantized .tflite, one engine for every source."""

from edgemp.quantize.engine import Statistics, apply_recipe, calibrate, merge_statistics, signature_key
from edgemp.quantize.recipes import Recipe, float_rule, recipe_for, static_rule

__all__ = ["Recipe", "Statistics", "apply_recipe", "calibrate", "float_rule", "merge_statistics", "recipe_for", "signature_key", "static_rule"]
