"""``python -m fastcnn ...`` runs the ``fastcnn`` command (see :mod:`fastcnn.cli`)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
