"""Dropout layers (functional: ``fastcnn.functional.dropout``; tests: ``tests/test_dropout.py``)."""

__all__ = []
