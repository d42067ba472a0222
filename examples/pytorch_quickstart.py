"""PyTorch quickstart: a trained nn.Module -> validated full-INT8 .tflite with NHWC I/O, offline, on shipped data.

    source scripts/env.sh && python examples/pytorch_quickstart.py [output_dir]

Uses the PyTorch example Fashion-MNIST CNN (trained once and cached by edgemp.demo; weights reloaded with
weights_only=True). The model takes NCHW tensors; the artifact takes NHWC (what Android bitmaps and the LiteRT
GPU delegate want) and contains no layout TRANSPOSE. The image folders are laid out for the model automatically.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

import edgemp
from edgemp.demo import CLASSES, torch_example_model

REPO = Path(__file__).resolve().parents[1]

if __name__ == "__main__":
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else REPO / "dist" / "pytorch_quickstart"
    result = edgemp.convert(
        torch_example_model(),                                 # an nn.Module (or ExportedProgram, or a .pt2 path)
        example_input=torch.zeros(1, 1, 28, 28),               # what the module's forward() takes (NCHW)
        input_layout="NHWC",                                   # the artifact's layout ("NCHW" keeps PyTorch's)
        precision="int8",
        calibration=REPO / "calibration_data" / "fashion_mnist",
        validation=REPO / "examples" / "data" / "fashion_mnist_val",
        class_names=list(CLASSES),
        max_accuracy_drop=0.01,
        output_dir=out,
        force=True,
    )
    result.report.render()
    census = edgemp.inspect_model(result.artifacts["tflite"])
    print("ops by compute type:", census.compute_counts, "TRANSPOSE ops:", census.transpose_count)
    print("input:", census.inputs[0])
    sys.exit(0 if result.passed else 3)
