"""Models: the architecture spec (a ``Sequential`` as JSON data), input transforms, prediction
and summaries for any ``Sequential``, and LeNet-5.

* ``spec``: :func:`model_to_spec` / :func:`model_from_spec`, :func:`layer_to_spec` /
  :func:`layer_from_spec`, :func:`load_spec` (``--model spec.json``)
* ``transform``: :class:`InputTransform` (padding, per-channel normalisation)
* ``classifier``: :func:`predict`, :func:`predict_proba`, :func:`summary`
* ``lenet``: :class:`LeNet5`
"""

from . import classifier, lenet, spec, transform  # noqa: F401 (submodules)
from .classifier import Summary, predict, predict_proba, summary
from .lenet import LeNet5, lenet5_spec
from .spec import (
    layer_classes,
    layer_from_spec,
    layer_to_spec,
    load_spec,
    model_from_spec,
    model_to_spec,
    validate_spec,
)
from .transform import InputTransform
from .zoo import get_model, list_models

__all__ = [
    "InputTransform", "LeNet5", "Summary", "layer_classes", "layer_from_spec", "layer_to_spec",
    "lenet5_spec", "load_spec", "model_from_spec", "model_to_spec", "predict", "predict_proba",
    "summary", "validate_spec",
]
__all__ += ["get_model", "list_models"]
