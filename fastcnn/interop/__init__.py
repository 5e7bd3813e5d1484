"""Models that travel: conversion to and from PyTorch (``to_torch``, ``from_torch``), export to
ONNX (``export_onnx``) and import of ONNX chains of supported operators (``import_onnx``). torch
and onnx are optional: each function imports what it needs and says how to install it when it
is missing (``pip install torch``, ``pip install "fastcnn[onnx]"``).
"""

from ._onnx import export_onnx
from ._onnx_import import import_onnx
from ._torch import from_torch, to_torch

__all__ = ["export_onnx", "from_torch", "import_onnx", "to_torch"]
