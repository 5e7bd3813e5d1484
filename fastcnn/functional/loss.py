"""Losses (twin: ``fastcnn._reference.loss``)."""

__all__ = []
