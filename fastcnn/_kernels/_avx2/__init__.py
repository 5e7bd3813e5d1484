"""Kernels compiled for the avx2 target (filled in by the build; see setup.py)."""
