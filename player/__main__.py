"""``python -m player``."""

import sys

from player.app import main

sys.exit(main())
