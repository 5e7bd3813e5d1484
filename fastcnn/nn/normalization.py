"""Normalisation layers (functional: ``fastcnn.functional.normalization``; tests:
``tests/test_normalization.py``)."""

__all__ = []
