"""The player's errors: each is reported as one line, never as a traceback."""


class PlayerError(Exception):
    """Base of the errors that stop the player with a one-line message."""


class StoreError(PlayerError):
    """The store directory is missing, not a directory, or unreadable."""


class LibvlcMissing(PlayerError):
    """libvlc (or its plugins) cannot be loaded."""


class NoDisplay(PlayerError):
    """A window was asked for but there is no DISPLAY."""
