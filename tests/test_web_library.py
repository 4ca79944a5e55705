"""The library in the web view of real clients: ``/api/library`` against its schema, a film's VOD
playlist read by ffmpeg, bad names refused, and the page playing a film from its start.

A tracker, a channel server, a client sharing the 30-block ``long_film`` and a
client that downloads it with the menu's ``get`` serve every test of this
module; each test awaits conditions, never sleeps.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.error
import urllib.request

import pytest

from bench.cluster import Cluster, session_ports, wait_until
from client import vod
from client.library import Item, TrackerClient
from server.manifest import of_blocks
from tests.library_helpers import TRACKER_PORT, start_tracker

HTTP_PORT = session_ports().http
FILM = "canal0"

# The documented schema of /api/library's films (docs/guide/web.rst): field -> type(s).
LIBRARY_FILM = {"name": str, "version": str, "origin": str, "blocks": int, "bytes": int,
                "duration": float, "mime": (str, type(None)), "playlist": str, "segments": str}


def check(schema: dict, value: dict, where: str) -> None:
    assert set(value) == set(schema), f"{where}: fields {sorted(set(value) ^ set(schema))}"
    for key, kind in schema.items():
        ok = isinstance(value[key], kind) and not isinstance(value[key], bool)
        if kind is float and isinstance(value[key], int):
            ok = True
        assert ok, f"{where}.{key} = {value[key]!r} is not {kind}"


def url(proc, path: str) -> str:
    return f"http://{proc.ip}:{HTTP_PORT}{path}"


def get(proc, path: str) -> bytes:
    with urllib.request.urlopen(url(proc, path), timeout=20) as answer:
        return answer.read()


def get_json(proc, path: str) -> dict:
    return json.loads(get(proc, path))


def films_of(proc) -> list[dict]:
    try:
        return get_json(proc, "/api/library")["films"]
    except OSError:
        return []


# -- pure: the playlist and the look-up (no sockets) ------------------------------------------

class FakeLibrary:
    def __init__(self, *items):
        self._items = list(items)

    def items(self):
        return list(self._items)


def film_item(name: str, durations: list[float], have=None, origin="share") -> Item:
    blocks = [bytes([i]) * 10 for i in range(len(durations))]
    manifest = of_blocks(name, "film", blocks, durations=durations)
    return Item(manifest, set(range(len(blocks))) if have is None else have,
                lambda i: blocks[i], None, origin)


def test_the_vod_playlist_has_real_durations_running_offsets_and_an_end():
    item = film_item("canal0", [2.0, 2.5, 1.75])
    film = vod.Film(item, None)
    lines = film.playlist().splitlines()
    assert lines[:5] == ["#EXTM3U", "#EXT-X-VERSION:3", "#EXT-X-PLAYLIST-TYPE:VOD",
                         "#EXT-X-TARGETDURATION:3", "#EXT-X-MEDIA-SEQUENCE:0"]
    assert lines[5:] == ["#EXTINF:2.000,", f"/library/{item.version}/0.ts",
                         "#EXTINF:2.500,", f"/library/{item.version}/1.ts",
                         "#EXTINF:1.750,", f"/library/{item.version}/2.ts", "#EXT-X-ENDLIST"]
    assert [film.ts_offset(i) for i in range(3)] == [0.0, 2.0, 4.5]
    assert film.to_json()["duration"] == 6.25


def test_films_are_found_in_the_library_table_by_version_or_name_only():
    whole = film_item("canal0", [2.0, 2.0])
    partial = film_item("other", [2.0, 2.0], have={0}, origin="replica")
    library = FakeLibrary(whole, partial)
    assert vod.find_film(library, whole.version) is whole
    assert vod.find_film(library, "canal0") is whole
    assert [i.manifest.name for i in vod.complete_films(library)] == ["canal0"]
    for bad in ("other", partial.version, "../canal0", "..", ".canal0", "canal0/..", "",
                "nosuch", "/etc/passwd"):
        assert vod.find_film(library, bad) is None, bad
    assert vod.find_film(None, "canal0") is None and vod.complete_films(None) == []
    assert vod.SEGMENT.match(f"/library/{whole.version}/1.ts")
    for path in (f"/library/{whole.version}/../1.ts", f"/library/{whole.version}/1.mkv",
                 "/library/canal0/1.ts", f"/library/{whole.version}/123456.ts"):
        assert not vod.SEGMENT.match(path), path


# -- real processes ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def library(tmp_path_factory, films, long_film):
    """(holder, downloader): the first shares long_film, the second got it with ``get``."""
    workdir = tmp_path_factory.mktemp("web-library")
    with Cluster(workdir, films) as cluster:
        tracker = start_tracker(cluster, workdir / "catalogue.db")
        server = cluster.start_server("--tracker-port", "0")
        where = f"{tracker.ip}:{TRACKER_PORT}"
        share = shutil.copytree(long_film, workdir / "share")
        holder = cluster.start_client(server, "--tracker", where, "--share", str(share))
        wait_until(lambda: len(films_of(holder)) == 1, 60, "the holder's web view listing the film")
        api = TrackerClient(tracker.ip, TRACKER_PORT)
        wait_until(lambda: any(f["name"] == FILM and f["holders"] for f in api.search(FILM)), 60,
                   "the tracker listing the holder")
        downloader = cluster.start_client(server, "--menu", "--tracker", where,
                                          stdin=subprocess.PIPE)
        downloader.popen.stdin.write(f"get {FILM}\n".encode())
        downloader.popen.stdin.flush()
        wait_until(lambda: films_of(downloader), 120,
                   "the downloader's web view listing the downloaded film")
        yield holder, downloader
        downloader.popen.stdin.close()


def test_api_library_lists_shared_and_downloaded_films_by_its_schema(library):
    holder, downloader = library
    for proc, origin in ((holder, "share"), (downloader, "download")):
        films = get_json(proc, "/api/library")["films"]
        assert len(films) == 1, films
        film = films[0]
        check(LIBRARY_FILM, film, "/api/library films[0]")
        assert (film["name"], film["origin"], film["blocks"]) == (FILM, origin, 30)
        assert 58 <= film["duration"] <= 62, film
        assert film["mime"].startswith("video/mp4; codecs="), film
        assert film["playlist"] == f"/library/{film['version']}.m3u8"
    assert get_json(holder, "/api/library")["films"][0]["version"] == films[0]["version"]


def test_ffmpeg_reads_the_vod_playlist_and_each_segment_is_remuxed_once(library):
    holder, downloader = library
    for proc in (holder, downloader):
        film = get_json(proc, "/api/library")["films"][0]
        text = get(proc, film["playlist"]).decode()
        lines = text.splitlines()
        assert lines[0] == "#EXTM3U" and "#EXT-X-PLAYLIST-TYPE:VOD" in lines, text
        assert lines[-1] == "#EXT-X-ENDLIST", text
        durations = [float(x.split(":")[1].rstrip(",")) for x in lines if x.startswith("#EXTINF:")]
        assert len(durations) == 30 and abs(sum(durations) - film["duration"]) < 0.1, durations
        assert get(proc, f"/library/{FILM}.m3u8").decode() == text  # by name, too
        before = get_json(proc, "/api/stats")["web"]["remux"]["remuxed"]
        run = subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-i", url(proc, film["playlist"]),
                              "-t", "7", "-f", "null", "-", "-progress", "pipe:1"],
                             capture_output=True, text=True, timeout=90)
        assert run.returncode == 0, run.stderr
        frames = [int(x.split("=")[1]) for x in run.stdout.splitlines() if x.startswith("frame=")]
        assert frames and frames[-1] >= 150, run.stdout[-500:]  # 7 s at 25 fps: four segments
        remuxed = get_json(proc, "/api/stats")["web"]["remux"]["remuxed"]
        assert remuxed - before >= 3
        # Continuous timestamps: segment 5 starts where the five before it end.
        segment = get(proc, f"{film['segments']}5.ts")
        probe = subprocess.run(["ffprobe", "-v", "error", "-show_entries", "format=start_time",
                                "-of", "default=nw=1:nk=1", "-"], input=segment,
                               capture_output=True, timeout=30)
        start = float(probe.stdout.decode().strip())
        assert abs(start - sum(durations[:5])) < 0.5, (start, durations[:5])
        # Asked again (it is cached): not remuxed again.
        again = get_json(proc, "/api/stats")["web"]["remux"]["remuxed"]
        assert get(proc, f"{film['segments']}5.ts") == segment
        assert get_json(proc, "/api/stats")["web"]["remux"]["remuxed"] == again


@pytest.mark.parametrize("path", [
    "/library/../etc/passwd.m3u8", "/library/..%2f..%2fetc%2fpasswd.m3u8",
    "/library/nosuchfilm.m3u8", "/library/.canal0.m3u8", "/library/0123456789abcdef.m3u8",
    "/library/0123456789abcdef/0.ts", "/library/0123456789abcdef/0.mp4",
    "/library/{version}/30.ts", "/library/{version}/99999.mp4", "/library/{version}/-1.ts",
    "/library/{version}/../0.ts", "/library/{version}.m3u8/0.ts", "/library/{version}/0.mkv"])
def test_bad_film_names_and_blocks_get_404(library, path):
    holder, _ = library
    version = get_json(holder, "/api/library")["films"][0]["version"]
    with pytest.raises(urllib.error.HTTPError) as refused:
        get(holder, path.format(version=version))
    assert refused.value.code == 404, path
    assert get_json(holder, "/api/status")["blocks_received"] >= 1  # and the client goes on


@pytest.mark.timeout(240)
def test_the_page_plays_a_downloaded_film_from_its_start_and_goes_back_to_live(library, browser):
    _, downloader = library
    browser.get(url(downloader, "/"))
    play = wait_until(lambda: browser.find_elements("css selector", "#library button.play"), 30,
                      "the library panel listing the film")
    assert len(play) == 1
    play[0].click()

    def vod():
        return browser.execute_script(
            "const v = document.getElementById('vod'), l = document.getElementById('video');"
            "return {t: v.currentTime, hidden: v.hidden, live_hidden: l.hidden,"
            " dropped: v.getVideoPlaybackQuality().droppedVideoFrames,"
            " total: v.getVideoPlaybackQuality().totalVideoFrames, ...window.relaytvLibrary};")
    film = get_json(downloader, "/api/library")["films"][0]
    started = wait_until(lambda: (p := vod())["t"] > 0 and p, 40, "the film starting")
    assert started["film"] == film["version"] and started["t"] < 4, started  # from its start
    played = wait_until(lambda: (p := vod())["t"] >= 6 and p, 60, "6 s of the film")
    assert not played["hidden"] and played["live_hidden"], played
    assert played["errors"] == 0 and played["appended"] >= 3, played
    assert played["dropped"] <= max(5, played["total"] // 20), played
    browser.find_element("id", "back-live").click()
    wait_until(lambda: browser.execute_script(
        "return !document.getElementById('video').hidden"
        " && document.getElementById('video').currentTime > 0.5"), 40, "live playing again")
