"""Kernels compiled for the avx512 target (filled in by the build; see setup.py)."""
