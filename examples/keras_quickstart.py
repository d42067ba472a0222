"""Keras quickstart: a trained Keras model -> validated full-INT8 .tflite, offline, on shipped data.

    source scripts/env.sh && python examples/keras_quickstart.py [output_dir]

Uses the example Fashion-MNIST CNN (trained once and cached by edgemp.demo), the shipped calibration images
and the shipped labelled validation folder (one sub-folder per class).
"""

from __future__ import annotations

import sys
from pathlib import Path

import edgemp
from edgemp.demo import CLASSES, example_model_path

REPO = Path(__file__).resolve().parents[1]

if __name__ == "__main__":
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else REPO / "dist" / "quickstart"
    result = edgemp.convert(
        example_model_path(),                                  # a .keras path, or a keras.Model object
        precision="int8",                                      # fully integer, int8 I/O
        calibration=REPO / "calibration_data" / "fashion_mnist",
        validation=REPO / "examples" / "data" / "fashion_mnist_val",
        class_names=list(CLASSES),                              # output order of the model
        max_accuracy_drop=0.01,                                 # one point of top-1
        output_dir=out,
        force=True,
    )
    result.report.render()
    census = edgemp.inspect_model(result.artifacts["tflite"])
    print("ops by compute type:", census.compute_counts)
    print("input:", census.inputs[0])
    sys.exit(0 if result.passed else 3)
