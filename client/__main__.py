"""``python -m client``."""

import sys

from client.app import main

sys.exit(main())
