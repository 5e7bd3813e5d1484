"""Batch normalisation, forward beside backward (twin: ``fastcnn._reference.normalization``)."""

__all__ = []
