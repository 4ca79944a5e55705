"""Entry script: ``python server.py`` inside server/, or ``python server/server.py`` from the root."""

import sys
from pathlib import Path

if not __package__:
    # Run as a script, sys.path[0] is this folder, whose server.py would shadow
    # the server package: put the repository root there instead.
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

from server.app import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
