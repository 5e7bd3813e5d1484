"""Benchmark report of a checkout: ``python bench/report.py [options]`` (``--help`` lists them).

A thin wrapper over ``fastcnn.bench.main`` (the same as ``fastcnn bench``) whose default outputs
are ``bench/results.md`` and ``bench/results.png`` of this checkout.
"""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

try:
    import fastcnn.bench as fastcnn_bench
except ImportError:  # not installed: use the in-place build of this checkout
    sys.path.insert(0, str(ROOT))
    import fastcnn.bench as fastcnn_bench


def main(argv=None):
    return fastcnn_bench.main(argv, prog="python bench/report.py",
                              default_out=str(ROOT / "bench" / "results.md"))


if __name__ == "__main__":
    sys.exit(main())
