"""Models that travel: conversion to and from PyTorch (``to_torch``, ``from_torch``) and export
to ONNX (``export_onnx``). torch and onnx are optional: each function imports what it needs and
says how to install it when it is missing (``pip install torch``, ``pip install "fastcnn[onnx]"``).
"""

from ._onnx import export_onnx
from ._torch import from_torch, to_torch

__all__ = ["export_onnx", "from_torch", "to_torch"]
