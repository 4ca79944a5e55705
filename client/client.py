"""Entry script: ``python client.py`` inside client/, or ``python client/client.py`` from the root."""

import sys
from pathlib import Path

if not __package__:
    # Run as a script, sys.path[0] is this folder, whose client.py would shadow
    # the client package: put the repository root there instead.
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

from client.app import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
