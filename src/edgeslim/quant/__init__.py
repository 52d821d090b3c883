"""Quantization internals: streaming calibrators, per-node sensitivity, mixed precision."""

from .calibrate import CALIBRATORS, Calibrator, collect_ranges, get_calibrator, register_calibrator

__all__ = ["CALIBRATORS", "Calibrator", "collect_ranges", "get_calibrator", "register_calibrator"]
