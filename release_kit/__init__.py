"""release-kit: decide whether a new version of a PyTorch model may be released, and what version it is.

The library API is :func:`release_kit.gate.check` (and its parts ``prepare``/``run``); the report's data
model lives in :mod:`release_kit.report`. Heavy libraries (torch, mlflow, great_expectations) are imported
only by the code that needs them.
"""

__version__ = "0.1.0"
