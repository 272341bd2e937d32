"""Defenses and detectors: one file per method, registered by key."""

from .base import DefenseContext, DefenseResult, Detection, register_defense, register_detector, run_defense

__all__ = ["DefenseContext", "DefenseResult", "Detection", "register_defense", "register_detector", "run_defense"]
