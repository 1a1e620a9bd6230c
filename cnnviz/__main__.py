"""``python -m cnnviz``: the command line (see `cnnviz.cli`)."""

import sys

from .cli import main

sys.exit(main())
