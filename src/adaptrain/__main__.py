"""``python -m adaptrain`` (and ``torchrun -m adaptrain``): the ``adaptrain`` command line."""

import os
import sys

from .cli import main

os.environ.setdefault("PYTHONUNBUFFERED", "1")
sys.exit(main())
