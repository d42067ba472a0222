"""Validation stage: run artifacts on the host with LiteRT and compare them with the float model."""

from edgemp.validate.checks import Check, label_checks
from edgemp.validate.data import ValidationData, load_validation
from edgemp.validate.evaluate import evaluate
from edgemp.validate.report import Report
from edgemp.validate.runtime import Runner

__all__ = ["Check", "Report", "Runner", "ValidationData", "evaluate", "label_checks", "load_validation"]
