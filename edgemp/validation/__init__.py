"""Validation stage: run artifacts on the host with LiteRT and compare them with the float model."""

from edgemp.validation.checks import Check, label_checks
from edgemp.validation.data import ValidationData, load_validation
from edgemp.validation.evaluate import evaluate
from edgemp.validation.report import Report
from edgemp.validation.runtime import Runner

__all__ = ["Check", "Report", "Runner", "ValidationData", "evaluate", "label_checks", "load_validation"]
