"""separa.py against real ffmpeg: block count, lengths, independence, safety.

Films are synthesized with ffmpeg's lavfi sources in temporary folders, a few
seconds each, so the whole file runs in seconds.
"""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

import separa

SEPARA = Path(separa.__file__)


def ffmpeg(*args: str) -> None:
    """Run ffmpeg quietly, failing the test on error."""
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", *args], check=True)


def run_separa(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """separa.py as a user runs it: a separate process, real exit status and stderr."""
    return subprocess.run([sys.executable, str(SEPARA), *map(str, args)],
                          capture_output=True, text=True, timeout=60, env=env, check=False)


def duration(path: Path) -> float:
    """The container duration of a file as ffprobe reports it."""
    out = subprocess.run(["ffprobe", "-v", "error", "-show_entries", "format=duration",
                          "-of", "csv=p=0", str(path)],
                         capture_output=True, text=True, check=True).stdout
    return float(out)


def stream_types(path: Path) -> list[str]:
    """The codec types (video, audio) of a file's streams."""
    out = subprocess.run(["ffprobe", "-v", "error", "-show_entries", "stream=codec_type",
                          "-of", "csv=p=0", str(path)],
                         capture_output=True, text=True, check=True).stdout
    return out.split()


def assert_decodes_alone(block: Path) -> None:
    """The block decodes with no error and its video starts on a keyframe."""
    result = subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-xerror",
                             "-i", str(block), "-f", "null", "-"],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0 and result.stderr == "", (block, result.stderr)
    first = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v:0",
                            "-read_intervals", "%+#1", "-show_entries", "packet=flags",
                            "-of", "csv=p=0", str(block)],
                           capture_output=True, text=True, check=True).stdout
    assert first.startswith("K"), (block, first)


def assert_one_line_error(result: subprocess.CompletedProcess, code: int, *words: str):
    """A failed run printed one clear line, no traceback, and exited with ``code``."""
    assert result.returncode == code, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("separa: error:"), result.stderr
    for word in words:
        assert word in lines[0]


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> Path:
    """Input films: 7 s with B-frames and one keyframe (like a camera file),
    7 s with a keyframe every 2 s (ready for --copy), 3 s without audio."""
    folder = tmp_path_factory.mktemp("sources")
    lavfi = ["-f", "lavfi", "-i", "testsrc2=size=320x180:rate=25",
             "-f", "lavfi", "-i", "sine=frequency=440:beep_factor=4", "-t", "7"]
    ffmpeg(*lavfi, "-c:v", "libx264", "-g", "250", "-pix_fmt", "yuv420p",
           "-c:a", "aac", str(folder / "film7.mp4"))
    ffmpeg(*lavfi, "-c:v", "libx264", "-preset", "veryfast", "-tune", "zerolatency",
           "-g", "50", "-keyint_min", "50", "-sc_threshold", "0", "-pix_fmt", "yuv420p",
           "-c:a", "aac", "-ac", "2", str(folder / "keyed.mkv"))
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=320x180:rate=25", "-t", "3",
           "-c:v", "libx264", "-pix_fmt", "yuv420p", str(folder / "mute.mp4"))
    (folder / "notes.txt").write_text("not a film\n")
    return folder


@pytest.fixture(scope="module")
def cut7(sources, tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path]:
    """film7.mp4 cut once with the default settings, shared by the read-only tests."""
    out = tmp_path_factory.mktemp("cut7")
    return run_separa(sources / "film7.mp4", "--out", out), out


def test_seven_seconds_make_four_blocks_named_in_order(cut7):
    result, out = cut7
    assert result.returncode == 0, result.stderr
    names = sorted(p.name for p in out.iterdir())
    assert names == [f"film7_{n:05d}.mkv" for n in range(4)]


def test_full_blocks_last_two_seconds_and_the_last_is_shorter(cut7):
    _, out = cut7
    lengths = [duration(p) for p in sorted(out.glob("film7_*.mkv"))]
    assert all(abs(d - 2.0) < 0.1 for d in lengths[:-1]), lengths
    assert 0.9 < lengths[-1] < 1.2, lengths


def test_every_block_decodes_on_its_own(cut7):
    _, out = cut7
    for block in sorted(out.glob("film7_*.mkv")):
        assert stream_types(block) == ["video", "audio"]
        assert_decodes_alone(block)


def test_refuses_to_overwrite_and_force_replaces(sources, tmp_path):
    old = {"x_00000.mkv": b"old 0", "x_00009.mkv": b"old 9", "x_other_00000.mkv": b"other"}
    for name, data in old.items():
        (tmp_path / name).write_bytes(data)

    refused = run_separa(sources / "film7.mp4", "--name", "x", "--out", tmp_path)
    assert_one_line_error(refused, 1, "--force")
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == old

    forced = run_separa(sources / "film7.mp4", "--name", "x", "--out", tmp_path, "--force")
    assert forced.returncode == 0, forced.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "x_00000.mkv", "x_00001.mkv", "x_00002.mkv", "x_00003.mkv", "x_other_00000.mkv"]
    assert (tmp_path / "x_other_00000.mkv").read_bytes() == b"other"
    assert_decodes_alone(tmp_path / "x_00000.mkv")


def test_missing_input_is_one_line_error(tmp_path):
    result = run_separa(tmp_path / "nothing.mp4", "--out", tmp_path / "out")
    assert_one_line_error(result, 2, "nothing.mp4", "not found")


def test_text_file_is_not_a_video(sources, tmp_path):
    result = run_separa(sources / "notes.txt", "--out", tmp_path)
    assert_one_line_error(result, 2, "notes.txt", "not a video")
    assert list(tmp_path.iterdir()) == []


def test_output_that_is_a_file_is_one_line_error(sources, tmp_path):
    target = tmp_path / "a-file"
    target.write_text("")
    result = run_separa(sources / "mute.mp4", "--out", target)
    assert_one_line_error(result, 1, "a-file")


def test_missing_ffmpeg_names_the_debian_package(sources, tmp_path):
    env = {**os.environ, "PATH": str(tmp_path)}
    result = run_separa(sources / "mute.mp4", "--out", tmp_path / "out", env=env)
    assert_one_line_error(result, 1, "ffmpeg", "apt-get install ffmpeg")


def test_film_without_audio(sources, tmp_path):
    result = run_separa(sources / "mute.mp4", "--out", tmp_path)
    assert result.returncode == 0, result.stderr
    blocks = sorted(tmp_path.glob("mute_*.mkv"))
    assert len(blocks) == 2
    for block in blocks:
        assert stream_types(block) == ["video"]
        assert_decodes_alone(block)


def test_copy_splits_a_film_with_keyframes_every_two_seconds(sources, tmp_path):
    result = run_separa(sources / "keyed.mkv", "--copy", "--out", tmp_path)
    assert result.returncode == 0, result.stderr
    assert "not 2 s long" not in result.stderr
    blocks = sorted(tmp_path.glob("keyed_*.mkv"))
    assert len(blocks) == 4
    assert all(abs(duration(b) - 2.0) < 0.1 for b in blocks[:-1])
    for block in blocks:
        assert_decodes_alone(block)


def test_copy_refuses_a_film_with_keyframes_ten_seconds_apart(tmp_path):
    film = tmp_path / "sparse.mp4"
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=160x90:rate=25", "-t", "22",
           "-c:v", "libx264", "-preset", "ultrafast", "-g", "250", "-keyint_min", "250",
           "-sc_threshold", "0", "-pix_fmt", "yuv420p", str(film))
    out = tmp_path / "out"
    result = run_separa(film, "--copy", "--out", out)
    assert result.returncode == 2, result.stderr
    last = result.stderr.splitlines()[-1]        # after the progress steps
    assert last.startswith("separa: error:") and "--copy" in last and "keyframes" in last, last
    assert "Traceback" not in result.stderr
    assert list(out.iterdir()) == [], "blocks of the wrong length were written"


def test_a_folder_given_as_the_film_is_named_a_folder(tmp_path):
    result = run_separa(tmp_path, "--out", tmp_path / "out")
    assert_one_line_error(result, 2, "is a folder")


def test_progress_on_a_terminal_ends_its_line_before_the_next_message(sources, tmp_path):
    """On a terminal the progress line is rewritten with a carriage return;
    the line the terminal shows last must not have the final message glued on."""
    import pty
    main, side = pty.openpty()
    proc = subprocess.Popen([sys.executable, str(SEPARA), str(sources / "mute.mp4"),
                             "--out", str(tmp_path)], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=side)
    os.close(side)
    output = b""
    while True:
        try:
            chunk = os.read(main, 4096)
        except OSError:                  # EIO: the terminal's other side closed
            break
        if not chunk:
            break
        output += chunk
    os.close(main)
    assert proc.wait(timeout=60) == 0, output
    text = output.decode().replace("\r\n", "\n")
    assert "\r" in text, text                     # the live progress was there
    shown = [line.rsplit("\r", 1)[-1] for line in text.split("\n") if line]
    progress = [line for line in shown if line.startswith("mute:") and line.endswith("%")]
    assert progress, shown
    assert all(line in progress or "%" not in line for line in shown), shown
    assert len(sorted(tmp_path.glob("mute_*.mkv"))) == 2


def sample_run(out: Path, *extra: str) -> subprocess.CompletedProcess:
    return run_separa("--sample", "--channels", "2", "--seconds-long", "4", "--size", "160x90",
                      "--out", out, *extra)


def identities(folder: Path) -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in folder.iterdir()}


def test_sample_again_keeps_complete_films_and_exits_0(tmp_path):
    assert sample_run(tmp_path).returncode == 0
    before = identities(tmp_path)
    assert len(before) == 4
    again = sample_run(tmp_path)
    assert again.returncode == 0, again.stderr
    assert identities(tmp_path) == before

    more = run_separa("--sample", "--channels", "3", "--seconds-long", "4", "--size", "160x90",
                      "--out", tmp_path)
    assert more.returncode == 0, more.stderr
    after = identities(tmp_path)
    assert {k: after[k] for k in before} == before              # canal0, canal1 kept
    assert sorted(set(after) - set(before)) == ["canal2_00000.mkv", "canal2_00001.mkv"]

    forced = sample_run(tmp_path, "--force")
    assert forced.returncode == 0, forced.stderr
    remade = identities(tmp_path)
    assert all(remade[k] != before[k] for k in before)


def test_sample_refuses_blocks_that_are_not_that_sample_film(tmp_path):
    assert sample_run(tmp_path).returncode == 0
    before = identities(tmp_path)
    longer = run_separa("--sample", "--channels", "2", "--seconds-long", "8", "--size", "160x90",
                        "--out", tmp_path)
    assert_one_line_error(longer, 1, "--force")
    assert identities(tmp_path) == before


def test_sample_makes_distinct_channels(tmp_path):
    result = run_separa("--sample", "--channels", "3", "--seconds-long", "4",
                        "--size", "160x90", "--out", tmp_path)
    assert result.returncode == 0, result.stderr
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [f"canal{c}_{n:05d}.mkv" for c in range(3) for n in range(2)]
    frames = []
    for channel in range(3):
        block = tmp_path / f"canal{channel}_00001.mkv"
        assert stream_types(block) == ["video", "audio"]
        assert_decodes_alone(block)
        frames.append(subprocess.run(
            ["ffmpeg", "-v", "error", "-i", str(block), "-frames:v", "1",
             "-f", "rawvideo", "-pix_fmt", "gray", "-"],
            capture_output=True, check=True).stdout)
    for a in range(3):
        for b in range(a + 1, 3):
            differing = sum(x != y for x, y in zip(frames[a], frames[b]))
            assert differing > len(frames[a]) // 4, (a, b)


def test_sample_names_sort_in_channel_order():
    names = separa.sample_names(12)
    assert names[:2] == ["canal00", "canal01"] and sorted(names) == names
    assert separa.sample_names(2) == ["canal0", "canal1"]


def test_name_is_sanitized():
    assert separa.sanitize_name("Mi película (1999).v2") == "Mi_pel_cula_1999_v2"
    with pytest.raises(separa.SeparaError):
        separa.sanitize_name("???")


def test_interrupt_leaves_no_block_and_no_temp_folder(sources, tmp_path, monkeypatch):
    def interrupt(self, seconds_done):
        raise KeyboardInterrupt

    monkeypatch.setattr(separa.Progress, "__call__", interrupt)
    assert separa.main([str(sources / "film7.mp4"), "--out", str(tmp_path)]) == 130
    assert list(tmp_path.iterdir()) == []


def test_progress_off_a_terminal_reports_coarse_steps(caplog):
    progress = separa.Progress("film", 100.0, stream=io.StringIO())
    with caplog.at_level(logging.INFO, logger="separa"):
        for second in range(0, 101, 5):
            progress(second)
    assert [r.getMessage() for r in caplog.records] == [
        "film: 25 %", "film: 50 %", "film: 75 %", "film: 100 %"]
