"""Entry script: ``python player.py`` inside player/, or ``python player/player.py`` from the root."""

import sys
from pathlib import Path

if not __package__:
    # Run as a script, sys.path[0] is this folder, whose player.py would shadow
    # the player package: put the repository root there instead.
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

from player.app import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
