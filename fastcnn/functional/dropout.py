"""Dropout masks from a counter-based generator (twin: ``fastcnn._reference.dropout``)."""

__all__ = []
