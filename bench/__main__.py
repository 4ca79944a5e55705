"""``python -m bench``: the overlay benchmark (see :mod:`bench.overlay`)."""

import sys

from bench.overlay import main

sys.exit(main())
