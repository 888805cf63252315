"""energyloss: energy loss functions for physical systems."""

__version__ = "0.1.0"
