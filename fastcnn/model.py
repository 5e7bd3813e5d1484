"""LeNet-5 and ``summary_rows`` (kept for older imports: the model lives in
``fastcnn.models.lenet``, summaries in ``fastcnn.models.classifier``)."""

from .models.classifier import summary
from .models.lenet import LeNet5

__all__ = ["LeNet5", "summary_rows"]


def summary_rows(model, input_shape):
    """Per-layer ``(index, layer repr, output shape, parameters, multiply-adds per image)``."""
    return [(r["index"], r["layer"], r["output_shape"], r["params"], r["macs"])
            for r in summary(model, input_shape, print_fn=None).rows]
