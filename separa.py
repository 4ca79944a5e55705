"""Cut films into self-contained blocks of a few seconds for relaytv channels.

The channel server broadcasts a film as Matroska blocks ``NAME_00000.mkv``,
``NAME_00001.mkv``, ... in ``filme/``. Each block must start on a keyframe and
decode on its own, because a viewer may join (or a relay may resume) at any
block. So by default the film is re-encoded with a keyframe forced at every
block boundary and then split by ffmpeg's segment muxer.

Blocks are written into a hidden temporary folder inside the output folder and
renamed into place only once ffmpeg has succeeded: a server watching the folder
never sees a half-written block, and an interrupted run leaves nothing behind.

Usage::

    python separa.py FILM [--name NAME] [--out filme] [--seconds 2] [--copy] [--force]
    python separa.py --sample [--channels 2] [--seconds-long 60] [--size 640x360]
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

log = logging.getLogger("separa")

DEFAULT_OUT = Path(__file__).resolve().parent / "filme"
FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf"
SAMPLE_RATE = 25
TMP_PREFIX = ".separa-tmp-"

# One video source per channel, so channels look different at a glance;
# channels past the list reuse testsrc2 with a shifted hue.
SAMPLE_SOURCES = ("testsrc2", "smptebars", "gradients", "rgbtestsrc")


class SeparaError(Exception):
    """A failure explained in one line; ``code`` is the process exit status."""

    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.code = code


def require_tools() -> None:
    """Fail early with the package to install, not with a FileNotFoundError."""
    for tool in ("ffmpeg", "ffprobe"):
        if shutil.which(tool) is None:
            raise SeparaError(f"{tool} not found on PATH: install the Debian "
                              f"package ffmpeg (apt-get install ffmpeg)")


def sanitize_name(text: str) -> str:
    """A block name prefix made of [A-Za-z0-9_-] only, safe in paths and URLs."""
    name = re.sub(r"[^A-Za-z0-9_-]+", "_", text).strip("_")
    if not name:
        raise SeparaError(f"cannot make a block name from {text!r}: use --name", 2)
    return name


def block_pattern(name: str) -> re.Pattern[str]:
    """Match exactly NAME's blocks (not those of a film called NAME_other)."""
    return re.compile(re.escape(name) + r"_\d{5,}\.mkv")


def existing_blocks(out: Path, name: str) -> list[Path]:
    """The blocks of film ``name`` already in ``out``, in block order."""
    pattern = block_pattern(name)
    return sorted(p for p in out.glob(f"{name}_*.mkv") if pattern.fullmatch(p.name))


def probe(film: Path) -> tuple[float | None, bool]:
    """Return (duration in seconds or None, whether the film has audio).

    Raises SeparaError when ffprobe finds no video stream (cover art of an
    audio file does not count), so a text file or an mp3 is refused up front.
    """
    result = subprocess.run(
        ["ffprobe", "-v", "error", "-show_entries",
         "format=duration:stream=codec_type:stream_disposition=attached_pic",
         "-of", "json", str(film)],
        capture_output=True, text=True, check=False)
    info = json.loads(result.stdout or "{}") if result.returncode == 0 else {}
    streams = info.get("streams", [])
    has_video = any(s.get("codec_type") == "video"
                    and not s.get("disposition", {}).get("attached_pic")
                    for s in streams)
    if not has_video:
        raise SeparaError(f"{film} is not a video: ffprobe finds no video stream", 2)
    has_audio = any(s.get("codec_type") == "audio" for s in streams)
    try:
        duration = float(info.get("format", {}).get("duration"))
    except (TypeError, ValueError):
        duration = None
    return duration, has_audio


def encode_args(seconds: float, video_filters: Sequence[str] = ()) -> list[str]:
    """Output options for H.264/AAC blocks that each start on a keyframe.

    ``-tune zerolatency`` drops B-frame delay, otherwise each block's video
    starts late and blocks run about 2.07 s (see TOOLCHAIN.md). The final scale
    rounds odd sizes down to even ones, which yuv420p requires.
    """
    filters = [*video_filters, "scale=trunc(iw/2)*2:trunc(ih/2)*2"]
    return ["-vf", ",".join(filters),
            "-c:v", "libx264", "-preset", "veryfast", "-tune", "zerolatency",
            "-pix_fmt", "yuv420p",
            "-force_key_frames", f"expr:gte(t,n_forced*{seconds:g})",
            "-sc_threshold", "0",
            "-c:a", "aac", "-ac", "2"]


def segment_args(seconds: float) -> list[str]:
    """Split options: blocks of ``seconds`` that each restart at time 0."""
    return ["-f", "segment", "-segment_time", f"{seconds:g}",
            "-reset_timestamps", "1", "-segment_format", "matroska"]


class Progress:
    """Percent done on stderr: live on a terminal, in 25 % steps otherwise."""

    def __init__(self, label: str, duration: float | None, stream=None):
        self.label = label
        self.duration = duration
        self.stream = stream or sys.stderr
        self.live = self.stream.isatty()
        self.shown = -1

    def __call__(self, seconds_done: float) -> None:
        if not self.duration:
            return
        percent = min(100, int(100 * seconds_done / self.duration))
        step = percent if self.live else percent // 25 * 25
        if step <= self.shown:
            return
        self.shown = step
        if self.live:
            self.stream.write(f"\r{self.label}: {percent:3d} %")
            self.stream.flush()
        elif step:
            log.info("%s: %d %%", self.label, step)

    def close(self) -> None:
        """End the live line so later messages start on a fresh one (once)."""
        if self.live and 0 <= self.shown <= 100:
            self.stream.write("\n")
            self.stream.flush()
        self.shown = 101                 # ended: no more progress, no second newline


def run_ffmpeg(args: Sequence[str], on_progress: Callable[[float], None]) -> None:
    """Run ffmpeg, feeding its progress (seconds of output) to ``on_progress``.

    ffmpeg is stopped if this function is left early (Ctrl-C, an exception in
    ``on_progress``), so it cannot keep writing into a folder being removed.
    """
    cmd = ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error",
           "-progress", "pipe:1", "-nostats", *args]
    with tempfile.TemporaryFile(mode="w+") as errors:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=errors, text=True)
        try:
            for line in proc.stdout:
                key, _, value = line.strip().partition("=")
                if key == "out_time_us" and value.isdigit():
                    on_progress(int(value) / 1e6)
            proc.wait()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            proc.stdout.close()
        if proc.returncode != 0:
            errors.seek(0)
            lines = [ln.strip() for ln in errors if ln.strip()]
            detail = lines[-1] if lines else f"exit status {proc.returncode}"
            raise SeparaError(f"ffmpeg failed: {detail}")


def make_tmpdir(out: Path) -> Path:
    """A fresh hidden folder inside ``out`` (same filesystem, so renames are atomic)."""
    if out.exists() and not out.is_dir():
        raise SeparaError(f"output {out} exists and is not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=TMP_PREFIX, dir=out))
    except OSError as exc:
        raise SeparaError(f"output folder {out} is not writable: "
                          f"{exc.strerror or exc}") from None


def refuse_overwrite(out: Path, names: Sequence[str], force: bool) -> None:
    """Stop before any work if a film would replace blocks without --force."""
    if force:
        return
    for name in names:
        if existing_blocks(out, name):
            raise SeparaError(f"{out} already has blocks of {name} "
                              f"({name}_*.mkv): use --force to replace them")


def uneven_lengths(listing: Path, seconds: float) -> list[float]:
    """Lengths of the blocks longer than ``seconds``, or shorter but not the last.

    That happens with --copy on a film whose keyframes are not every
    ``seconds``: the segment muxer can only cut on keyframes.
    """
    rows = [line.rsplit(",", 2) for line in listing.read_text().splitlines() if line]
    lengths = [float(end) - float(start) for _, start, end in rows]
    return [length for n, length in enumerate(lengths)
            if length > seconds + 0.1 or (length < seconds - 0.1 and n < len(lengths) - 1)]


def cut(inputs: Sequence[str], name: str, out: Path, seconds: float,
        output_args: Sequence[str], duration: float | None, force: bool,
        copy: bool = False) -> list[Path]:
    """Encode/split into a temp folder, then move the blocks into ``out``.

    With ``force`` the old blocks of ``name`` are replaced by the renames and
    any left over (the old film was longer) are removed only after all new
    blocks are in place. With ``copy`` (split only), blocks of the wrong
    length are refused before any reaches ``out``: only a re-encode fixes them.
    """
    refuse_overwrite(out, [name], force)
    tmp = make_tmpdir(out)
    progress = Progress(name, duration)
    try:
        listing = tmp / "blocks.csv"
        run_ffmpeg([*inputs, *output_args, *segment_args(seconds),
                    "-segment_list", str(listing), "-segment_list_type", "csv",
                    str(tmp / f"{name}_%05d.mkv")], progress)
        progress.close()
        new = sorted(tmp.glob(f"{name}_*.mkv"))
        if not new:
            raise SeparaError(f"ffmpeg wrote no blocks for {name}")
        uneven = uneven_lengths(listing, seconds)
        if uneven and copy:
            raise SeparaError(
                f"{name}: --copy would write blocks of {uneven[0]:.2f} s, not {seconds:g} s "
                f"({len(uneven)} of {len(new)}): the film's keyframes are not every "
                f"{seconds:g} s; cut it without --copy (re-encoding puts a keyframe at "
                f"every block); nothing was written", 2)
        if uneven:
            log.warning("%s: %d blocks are not %g s long (e.g. %.2f s)",
                        name, len(uneven), seconds, uneven[0])
        old = existing_blocks(out, name)
        refuse_overwrite(out, [name], force)  # another run may have raced us
        placed = []
        for block in new:
            os.replace(block, out / block.name)
            placed.append(out / block.name)
        for stale in set(old) - set(placed):
            stale.unlink(missing_ok=True)
        log.info("%s: %d blocks in %s", name, len(placed), out)
        return placed
    finally:
        progress.close()
        shutil.rmtree(tmp, ignore_errors=True)


def cut_film(film: Path, name: str | None, out: Path, seconds: float,
             copy: bool, force: bool) -> list[Path]:
    """Cut a film file; ``copy`` only splits (keyframes must already fit)."""
    if film.is_dir():
        raise SeparaError(f"input film {film} is a folder: give a film file", 2)
    if not film.is_file():
        raise SeparaError(f"input film {film} not found", 2)
    name = sanitize_name(name if name is not None else film.stem)
    refuse_overwrite(out, [name], force)
    duration, has_audio = probe(film)
    maps = ["-map", "0:V:0"] + (["-map", "0:a:0"] if has_audio else [])
    output_args = ["-c", "copy"] if copy else encode_args(seconds)
    return cut(["-i", str(film), *maps], name, out, seconds,
               output_args, duration, force, copy)


def parse_size(text: str) -> tuple[int, int]:
    """Parse WxH (argparse type)."""
    match = re.fullmatch(r"(\d+)x(\d+)", text)
    if not match or 0 in (width := int(match[1]), height := int(match[2])):
        raise argparse.ArgumentTypeError(f"size must look like 640x360, not {text!r}")
    return width, height


def sample_names(channels: int) -> list[str]:
    """canal0, canal1, ... zero-padded so that names sort in channel order."""
    width = len(str(channels - 1))
    return [f"canal{n:0{width}d}" for n in range(channels)]


def sample_inputs(channel: int, size: tuple[int, int], seconds_long: float,
                  seconds: float) -> tuple[list[str], list[str]]:
    """lavfi inputs and video filters for one synthetic channel.

    Everything is generated (test patterns, a tone), so the films carry no
    copyrighted content; the burned-in time, frame and block numbers let a
    viewer read continuity and block order off the screen.
    """
    width, height = size
    source = SAMPLE_SOURCES[channel % len(SAMPLE_SOURCES)]
    filters = []
    if channel >= len(SAMPLE_SOURCES):
        source = "testsrc2"
        filters.append(f"hue=h={channel * 67 % 360}")
    inputs = ["-f", "lavfi", "-i", f"{source}=size={width}x{height}:rate={SAMPLE_RATE}",
              "-f", "lavfi", "-i", f"sine=frequency={330 + 110 * channel}:beep_factor=4"]
    text = f"fontfile={FONT}:fontcolor=white:box=1:boxcolor=black@0.6:x=(w-text_w)/2"
    big, small = max(8, height // 4), max(6, height // 14)
    filters += [
        f"drawtext={text}:fontsize={big}:boxborderw={big // 8}:y=h/8:text='CH {channel}'",
        (f"drawtext={text}:fontsize={small}:boxborderw={small // 4}:y=h-2*text_h"
         f":text='%{{pts\\:hms}}  frame %{{frame_num}}  "
         f"block %{{eif\\:trunc(t/{seconds:g})\\:d\\:5}}'"),
    ]
    return inputs + ["-t", f"{seconds_long:g}"], filters


def blocks_of(seconds_long: float, seconds: float) -> int:
    """How many blocks a film of ``seconds_long`` makes (the last may be shorter)."""
    return math.ceil(round(seconds_long / seconds, 6))


def is_complete(blocks: Sequence[Path], name: str, count: int) -> bool:
    """Exactly blocks 0 to ``count - 1`` of ``name``, as a finished cut leaves them."""
    return [p.name for p in blocks] == [f"{name}_{n:05d}.mkv" for n in range(count)]


def make_samples(channels: int, seconds_long: float, size: tuple[int, int],
                 out: Path, seconds: float, force: bool) -> list[list[Path]]:
    """Synthesize and cut one sample film per channel, encoding straight to blocks.

    A sample film already complete in ``out`` (every block of that length) is
    kept, so the README's first step can run again; ``force`` makes it anew.
    Blocks of a sample name that are not such a film are refused without ``force``.
    """
    names = sample_names(channels)
    count = blocks_of(seconds_long, seconds)
    present = {name: existing_blocks(out, name) for name in names}
    done = [] if force else [n for n in names if is_complete(present[n], n, count)]
    if len(done) == len(names):
        log.info("the sample films %s are already in %s (%d blocks each); "
                 "--force makes them again", ", ".join(names), out, count)
        return [present[name] for name in names]
    refuse_overwrite(out, [n for n in names if n not in done], force)
    films = []
    for channel, name in enumerate(names):
        if name in done:
            log.info("%s: already in %s (%d blocks)", name, out, count)
            films.append(present[name])
            continue
        inputs, filters = sample_inputs(channel, size, seconds_long, seconds)
        films.append(cut(inputs, name, out, seconds, encode_args(seconds, filters),
                         seconds_long, force))
    return films


def build_parser() -> argparse.ArgumentParser:
    """The command line described in the module docstring."""
    parser = argparse.ArgumentParser(
        prog="separa.py",
        description="Cut films into self-contained Matroska blocks NAME_00000.mkv, ...")
    parser.add_argument("film", nargs="?", type=Path, help="film to cut")
    parser.add_argument("--name", help="block name prefix (default: the film's name)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help="output folder (default: filme/ next to separa.py)")
    parser.add_argument("--seconds", type=float, default=2.0,
                        help="block length in seconds (default: 2)")
    parser.add_argument("--copy", action="store_true",
                        help="only split, for films already with keyframes every --seconds")
    parser.add_argument("--force", action="store_true",
                        help="replace the blocks of a film already in --out")
    sample = parser.add_argument_group("sample films")
    sample.add_argument("--sample", action="store_true",
                        help="synthesize sample channels canal0, canal1, ... instead")
    sample.add_argument("--channels", type=int, default=2, help="default: 2")
    sample.add_argument("--seconds-long", type=float, default=60.0,
                        help="length of each sample film (default: 60)")
    sample.add_argument("--size", type=parse_size, default=(640, 360),
                        help="WxH of the sample films (default: 640x360)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status (errors print one line)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.sample == (args.film is not None):
        parser.error("give either a FILM or --sample")
    if args.seconds <= 0 or args.seconds_long <= 0 or args.channels < 1:
        parser.error("--seconds, --seconds-long and --channels must be positive")
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="separa: %(message)s")
    try:
        require_tools()
        if args.sample:
            make_samples(args.channels, args.seconds_long, args.size,
                                 args.out, args.seconds, args.force)
        else:
            cut_film(args.film, args.name, args.out, args.seconds, args.copy, args.force)
    except SeparaError as exc:
        print(f"separa: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        print("separa: interrupted, the film being cut was left out", file=sys.stderr)
        return 130
    return 0


def _interrupt_on_sigterm(signum, frame):
    """Treat SIGTERM like Ctrl-C so the temporary folder is still removed."""
    raise KeyboardInterrupt


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _interrupt_on_sigterm)
    sys.exit(main())
