"""Kernels compiled for the generic target (filled in by the build; see setup.py)."""
