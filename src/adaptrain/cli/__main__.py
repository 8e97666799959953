"""``python -m adaptrain.cli``."""

import os
import sys

from . import main

os.environ.setdefault("PYTHONUNBUFFERED", "1")
sys.exit(main())
