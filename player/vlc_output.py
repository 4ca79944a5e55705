"""The thin libvlc adapter: one MediaPlayer (one window) for the whole channel.

libvlc calls its event callbacks on its own threads; the callbacks here only
put ``(kind, time.monotonic())`` on :attr:`VlcOutput.events`. Every libvlc call
is made by the thread that owns the :class:`VlcOutput` (the player's loop).
"""

from __future__ import annotations

import os
import queue
import time
from pathlib import Path

from player.errors import LibvlcMissing, NoDisplay

DEBIAN_PACKAGES = "libvlc5 vlc-plugin-base vlc-plugin-video-output"

# Kinds of the events put on VlcOutput.events.
STARTED = "started"    # MediaPlayerPlaying
PROGRESS = "progress"  # MediaPlayerTimeChanged
ENDED = "ended"        # MediaPlayerEndReached
ERROR = "error"        # MediaPlayerEncounteredError
WAKE = "wake"          # not from libvlc: wakes the loop (see VlcOutput.wake)


def import_vlc():
    """``import vlc``, turning every way it can fail into :class:`LibvlcMissing`."""
    try:
        import vlc
    # python-vlc raises OSError or NotImplementedError when libvlc.so is
    # missing, and calls sys.exit(1) for a bad PYTHON_VLC_LIB_PATH.
    except (ImportError, OSError, NotImplementedError, AttributeError, SystemExit) as e:
        detail = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise LibvlcMissing(f"cannot load libvlc ({detail}); install the Debian packages "
                            f"{DEBIAN_PACKAGES} and python-vlc") from None
    return vlc


def sound_device_present(environ: dict | None = None, dev_snd: Path = Path("/dev/snd")) -> bool:
    """Whether audio has somewhere to go: an ALSA PCM device or a PulseAudio/PipeWire server.

    Without one, libvlc's ALSA output tries again for every block and the ALSA
    library writes a dozen lines each time (hundreds of thousands an hour).
    """
    environ = os.environ if environ is None else environ
    try:
        if any(p.name.startswith("pcm") for p in dev_snd.iterdir()):
            return True
    except OSError:
        pass
    if environ.get("PULSE_SERVER"):
        return True
    runtime = environ.get("XDG_RUNTIME_DIR")
    return bool(runtime) and any((Path(runtime) / sub).exists()
                                 for sub in ("pulse/native", "pipewire-0"))


def vlc_options(*, headless: bool, vout: str | None = None, aout: str | None = None,
                display: str | None = None, sound: bool = True) -> list[str]:
    """The libvlc options for the given CLI choices.

    ``--headless`` means ``--vout=dummy --aout=dummy`` (explicit ``vout`` /
    ``aout`` win). With a window and no explicit ``vout``, a DISPLAY is needed
    and the X11 output without hardware decoding is used (the lightest and
    smoothest one under Xvfb, see TOOLCHAIN.md). ``sound``: a sound device
    exists (:func:`sound_device_present`); without one and without an explicit
    ``aout`` the audio goes to the null output.
    """
    options = ["--no-video-title-show", "--quiet"]
    if headless:
        vout = vout or "dummy"
        aout = aout or "dummy"
    elif not aout and not sound:
        aout = "dummy"
    if vout is None and not headless:
        if not display:
            raise NoDisplay("no DISPLAY to open a window on: set DISPLAY or use --headless")
        vout = "xcb_x11"
    # Hardware decoding buys nothing on 2-second blocks, and probing it writes a
    # VDPAU warning per block on machines without it.
    options.append("--avcodec-hw=none")
    options.append(f"--vout={vout}")
    if aout:
        options.append(f"--aout={aout}")
    return options


class VlcOutput:
    """One libvlc instance and one MediaPlayer, reused for every block."""

    _EVENTS = {
        "MediaPlayerPlaying": STARTED,
        "MediaPlayerTimeChanged": PROGRESS,
        "MediaPlayerEndReached": ENDED,
        "MediaPlayerEncounteredError": ERROR,
    }

    def __init__(self, options: list[str]):
        vlc = import_vlc()
        #: ``(kind, monotonic time)`` tuples, in the order libvlc reported them.
        self.events: queue.Queue[tuple[str, float]] = queue.Queue()
        self._instance = vlc.Instance(options)
        if self._instance is None:
            raise LibvlcMissing(f"libvlc could not start with {' '.join(options)}; are the "
                                f"Debian packages {DEBIAN_PACKAGES} installed?")
        self._player = self._instance.media_player_new()
        self._manager = self._player.event_manager()
        self._attached = []
        for name, kind in self._EVENTS.items():
            event_type = getattr(vlc.EventType, name)
            self._manager.event_attach(event_type, self._on_event, kind)
            self._attached.append(event_type)

    def _on_event(self, _event, kind: str) -> None:
        # Runs on a libvlc thread: enqueue and nothing else.
        self.events.put((kind, time.monotonic()))

    def wake(self) -> None:
        """Wake whoever waits on :attr:`events` (safe from any thread)."""
        self.events.put((WAKE, time.monotonic()))

    def play(self, path: Path) -> bool:
        """Show ``path`` in the same window; False when libvlc refuses at once."""
        media = self._instance.media_new_path(str(path))
        if media is None:
            return False
        self._player.set_media(media)
        media.release()  # the player holds its own reference
        return self._player.play() == 0

    def set_rate(self, rate: float) -> None:
        """Play faster or slower from now on (kept across blocks; VLC keeps the pitch)."""
        self._player.set_rate(rate)

    def position_ms(self) -> int:
        """The play position of the current block in ms (-1 when none)."""
        return self._player.get_time()

    def close(self) -> None:
        """Stop playback and release libvlc. Safe to call twice."""
        if self._player is None:
            return
        for event_type in self._attached:
            self._manager.event_detach(event_type)
        self._player.stop()
        self._player.release()
        self._instance.release()
        self._player = self._instance = self._manager = None
