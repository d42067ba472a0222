"""Calibration stage: turn what the user has (folders, arrays, iterables) into checked, hashed samples."""

from edgemp.calibration.data import CalibrationSet, Sample, hash_samples, load_calibration

__all__ = ["CalibrationSet", "Sample", "hash_samples", "load_calibration"]
