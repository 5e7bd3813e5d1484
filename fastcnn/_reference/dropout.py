"""Dropout reference: the counter-based mask in plain NumPy."""



__all__ = []


