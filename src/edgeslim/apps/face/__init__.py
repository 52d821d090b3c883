"""Faces on a CPU: YuNet detection with 5 landmarks (`yunet`), HyperFAS anti-spoofing (`antispoof`) and
beautification (`beauty`), each a library module; `edgeslim face ...` (`cli`) wraps them."""

from __future__ import annotations

from .yunet import Face, YunetConfig, YunetDetector

__all__ = ["Face", "YunetConfig", "YunetDetector"]
