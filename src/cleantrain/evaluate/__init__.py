"""Metrics (CA, ASR, RA, detection, DER, cost)."""
