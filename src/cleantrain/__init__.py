"""cleantrain: train clean networks on possibly poisoned data, and find the poison."""

__version__ = "0.1.0"
