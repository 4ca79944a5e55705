"""The player: plays the blocks of a store directory with libvlc and deletes each after display."""
