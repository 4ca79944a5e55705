"""The player in a real X11 window on a virtual screen (Xvfb), checked with a screenshot."""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from bench.cluster import REPO, wait_until

ARTIFACTS = REPO / "test-artifacts"
SCREEN = (1280, 720)

pytestmark = pytest.mark.skipif(not (shutil.which("Xvfb") and shutil.which("ffmpeg")),
                                reason="needs Xvfb and ffmpeg")


def _free_display() -> int:
    for n in random.sample(range(100, 1000), 900):
        if not (Path(f"/tmp/.X11-unix/X{n}").exists() or Path(f"/tmp/.X{n}-lock").exists()):
            return n
    raise RuntimeError("no free X display number")


@pytest.fixture
def xvfb():
    """A virtual screen ``:N``; yields N. Xvfb is always stopped afterwards."""
    for _attempt in range(3):
        n = _free_display()
        proc = subprocess.Popen(["Xvfb", f":{n}", "-screen", "0", f"{SCREEN[0]}x{SCREEN[1]}x24",
                                 "-nolisten", "tcp"],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        try:
            wait_until(lambda: proc.poll() is not None or Path(f"/tmp/.X11-unix/X{n}").exists(),
                       10, f"Xvfb :{n}")
            if proc.poll() is None:
                break  # up; otherwise another server took the number first: try again
        except BaseException:
            proc.kill()
            proc.wait()
            raise
    else:
        pytest.fail("Xvfb would not start")
    try:
        yield n
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def screenshot(display: int, path: Path) -> bytes:
    """Grab the screen into ``path`` (PNG); return its pixels as RGB bytes."""
    subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-f", "x11grab",
                    "-video_size", f"{SCREEN[0]}x{SCREEN[1]}", "-i", f":{display}",
                    "-frames:v", "1", str(path)], check=True, timeout=20)
    return subprocess.run(["ffmpeg", "-loglevel", "error", "-i", str(path), "-f", "rawvideo",
                           "-pix_fmt", "rgb24", "-"],
                          check=True, capture_output=True, timeout=20).stdout


def picture_box(rgb: bytes, width: int, height: int) -> tuple[int, int, int, int] | None:
    """Bounding box ``(x0, y0, x1, y1)`` of the rows with many non-black pixels.

    Rows with only a few lit pixels (the X cursor in the middle of the screen)
    do not count.
    """
    xs, ys = [], []
    for y in range(0, height, 2):
        row = rgb[y * width * 3:(y + 1) * width * 3]
        lit = [x for x in range(0, width, 2) if max(row[3 * x:3 * x + 3]) > 24]
        if len(lit) >= 40:
            xs += (lit[0], lit[-1])
            ys.append(y)
    if not ys:
        return None
    return min(xs), min(ys), max(xs) + 2, max(ys) + 2


def region_stats(rgb: bytes, width: int, box) -> tuple[float, int]:
    """Mean brightness (0-255) and number of distinct coarse colours in ``box``."""
    x0, y0, x1, y1 = box
    total, count, colours = 0, 0, set()
    for y in range(y0, y1):
        row = rgb[(y * width + x0) * 3:(y * width + x1) * 3]
        total += sum(row)
        count += len(row)
        colours.update(zip(row[0::3 * 4], row[1::3 * 4], row[2::3 * 4]))
    coarse = {(r >> 4, g >> 4, b >> 4) for r, g, b in colours}
    return total / count, len(coarse)


def test_the_film_shows_in_a_window(films, tmp_path, xvfb):
    store = tmp_path / "store"
    store.mkdir()
    for i in range(3):
        shutil.copyfile(films / f"canal0_{i:05d}.mkv", store / f"canal0_{i:05d}.mkv")
    log_path = tmp_path / "player.log"
    env = dict(os.environ, DISPLAY=f":{xvfb}")
    with open(log_path, "wb") as log:
        player = subprocess.Popen([sys.executable, "-m", "player", str(store), "--aout=dummy",
                                   "--log-level", "DEBUG"],
                                  cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                  stderr=subprocess.STDOUT)
    try:
        def playing_second_block():
            assert player.poll() is None, log_path.read_text()
            return "playing canal0_00001.mkv" in log_path.read_text()
        wait_until(playing_second_block, 10, "the second block")  # the window was reused
        ARTIFACTS.mkdir(exist_ok=True)
        shot = ARTIFACTS / "player-window.png"
        width, height = SCREEN

        def picture_on_screen():
            # VLC says "playing" when it starts the block; its first frame may reach
            # the screen a moment later on a busy machine: shoot until it is there.
            rgb = screenshot(xvfb, shot)
            return rgb if picture_box(rgb, width, height) is not None else None
        try:
            rgb = wait_until(picture_on_screen, 1.5, "a picture in the window", interval=0.1)
        except TimeoutError:
            raise AssertionError("the screen is black") from None
        assert "played canal0_00001.mkv" not in log_path.read_text(), "shot taken too late"
    finally:
        player.send_signal(signal.SIGTERM)
        rc = player.wait(timeout=10)
    log = log_path.read_text()
    assert rc == 0, log
    assert "--vout=xcb_x11" in log and "--avcodec-hw=none" in log

    assert len(rgb) == width * height * 3
    x0, y0, x1, y1 = box = picture_box(rgb, width, height)
    # The film is 320x180 and VLC shows it at its own size.
    assert x1 - x0 >= 280 and y1 - y0 >= 150, box
    brightness, colours = region_stats(rgb, width, box)
    assert brightness > 40, brightness
    assert colours > 30, colours
