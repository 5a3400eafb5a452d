"""The package version, on the bottom floor so that every module that records it (checkpoints, exports,
fingerprints) can import it without importing :mod:`medmae` itself (the top floor)."""

__version__ = "0.1.0"
