"""The player: plays the blocks of a store directory with libvlc and deletes each after display.

Command line (see ``python -m player --help``)::

    python player/player.py DIR [--headless] [--buffer N] [--keep] [--list]
                                [--max-behind S] [--max-rate R] [--played-log FILE]
                                [--vout V] [--aout A] [--stall-timeout S] [--log-level L]

For the client:

- :func:`player.queue.waiting_blocks` lists the blocks waiting in a store,
  oldest first, with sizes;
- :func:`player.launch.start_player` / :func:`player.launch.stop_player` run
  the player as a child process and stop it with SIGTERM (unplayed blocks stay);
- ``player.json`` in the store (:mod:`player.report`) says how far behind
  live the player is, at which rate it plays, and its counters.

Modules, one concern each: :mod:`player.queue` (which files are blocks),
:mod:`player.mkv` (a block's real duration), :mod:`player.machine` (the
decisions, pure), :mod:`player.live` (the rate towards live, pure),
:mod:`player.loop` (the single thread that drives them),
:mod:`player.vlc_output` (the libvlc adapter), :mod:`player.noise` (the C
libraries' standard error, each line once), :mod:`player.report` (the state
file and the played-blocks log), :mod:`player.stats` (gap figures),
:mod:`player.app` (the command line), :mod:`player.errors`, :mod:`player.launch`.
"""
