"""Batch-norm reference (DESIGN.md section 3)."""



__all__ = []


