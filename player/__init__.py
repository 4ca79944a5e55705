"""The player: plays the blocks of a store directory with libvlc and deletes each after display.

Command line (see ``python -m player --help``)::

    python player/player.py DIR [--headless] [--buffer N] [--keep] [--list]
                                [--vout V] [--aout A] [--stall-timeout S] [--log-level L]

For the client:

- :func:`player.queue.waiting_blocks` lists the blocks waiting in a store,
  oldest first, with sizes;
- :func:`player.launch.start_player` / :func:`player.launch.stop_player` run
  the player as a child process and stop it with SIGTERM (unplayed blocks stay).

Modules, one concern each: :mod:`player.queue` (which files are blocks),
:mod:`player.machine` (the decisions, pure), :mod:`player.loop` (the single
thread that drives them), :mod:`player.vlc_output` (the libvlc adapter),
:mod:`player.stats` (gap figures), :mod:`player.app` (the command line),
:mod:`player.errors`, :mod:`player.launch`.
"""
