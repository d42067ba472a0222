"""Mixed precision: find the layers that cannot take INT8 and keep only those in float, under an accuracy budget.

    source scripts/env.sh && python examples/mixed_precision.py [output_dir]

The model (edgemp.demo.build_sensitive_model, trained once and cached) joins an L2-normalised embedding with the
raw mean brightness before its logits; full INT8 loses tens of points there. edgemp.analyze ranks the layers,
and precision="mixed" keeps the fewest in float until the top-1 drop is within the budget.
"""

from __future__ import annotations

import sys
from pathlib import Path

import edgemp
from edgemp.demo import CLASSES, sensitive_model_path

REPO = Path(__file__).resolve().parents[1]

if __name__ == "__main__":
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else REPO / "dist" / "mixed_precision"
    common = dict(
        calibration=REPO / "calibration_data" / "fashion_mnist",
        validation=REPO / "examples" / "data" / "fashion_mnist_val",
        class_names=list(CLASSES),
        preprocessing={"scale": 1.0},                         # this model takes raw 0..255 pixels
        output_dir=out,
        force=True,
    )
    analysis = edgemp.analyze(sensitive_model_path(), **common)
    print("most sensitive layers:", analysis.most_sensitive(3))

    result = edgemp.convert(
        sensitive_model_path(),
        precision="mixed",
        max_accuracy_drop=0.003,                              # 0.3 points of top-1
        max_float_layers=0.1,                                 # at most 10% of the layers in float
        **common,
    )
    result.report.render()
    mixed = result.report["mixed"]
    print("kept in float:", mixed["float_layers"], "| boundaries:", mixed["boundaries"],
          "| calibration runs:", mixed["calibration_runs"])
    print("sensitivity page:", result.artifacts["sensitivity_html"])
    sys.exit(0 if result.passed else 3)
