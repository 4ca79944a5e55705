"""The client's interactive menu: a thin front end over the node (stdlib ``cmd``).

Every command reads the node's snapshot or calls one node method; nothing
here decides anything. Background threads log to a file while the menu runs
(``log`` shows its end), so no log line lands on the prompt.
"""

from __future__ import annotations

import cmd
from collections import deque
from pathlib import Path

from client.node import Node


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _behind_line(s: dict) -> str:
    """``behind live: 3.2 s at 1.12x`` from the snapshot's player fields."""
    player = s.get("player")
    if player is None or s.get("behind_live_s") is None:
        return "behind live: - (no player)"
    line = f"behind live: {s['behind_live_s']:.1f} s at {s['play_rate']:.2f}x"
    if player["stale"]:
        line += f" (the player has said nothing for {player['age_s']:.0f} s)"
    return line


class Menu(cmd.Cmd):
    """relaytv client. Type help or ? to list commands."""

    prompt = "relaytv> "

    def __init__(self, node: Node, log_file: Path | None = None, web_url: str | None = None,
                 library=None, **kwargs):
        super().__init__(**kwargs)
        self.node = node
        self.web_url = web_url
        self.log_file = log_file
        self.library = library  # a client.libraryapp.LibraryService
        self.intro = (f"relaytv client {node.config.ip}, channel {node.config.channel}, "
                      f"up to {node.config.max_children} children. Type help for commands.")

    def _say(self, text: str = "") -> None:
        self.stdout.write(text + "\n")

    def emptyline(self) -> bool:
        return False

    def default(self, line: str) -> bool:
        self._say(f"unknown command: {line.split()[0]} (type help)")
        return False

    def do_connections(self, arg: str) -> None:
        """connections: who sends to this client and whom it sends to (IP:port)."""
        s = self.node.snapshot()
        parent = s["parent"]
        if parent == "server":
            source = f"server {s['parent_server']} (channel server, push port {s['push_port']})"
        elif parent:
            source = f"{parent['ip']}:{parent['port']} (relay at depth {s['depth'] - 1})"
        else:
            source = f"none ({s['state']})"
        self._say(f"receiving from: {source}")
        self._say(f"this client:    {s['ip']}:{s['peer_port']} at depth {s['depth']}, "
                  f"{len(s['children'])}/{s['max_children']} children")
        if not s["children"]:
            self._say("sending to:     nobody")
        for child in s["children"]:
            self._say(f"sending to:     {child['ip']}:{child['port']} (depth {s['depth'] + 1}, "
                      f"{child['blocks_sent']} blocks, {_size(child['bytes_sent'])} sent)")

    def do_files(self, arg: str) -> None:
        """files: the received files waiting for display, oldest first."""
        waiting = self.node.store.waiting()
        for name, size in waiting:
            self._say(f"{name}  {_size(size)}")
        self._say(f"{len(waiting)} file(s) waiting in {self.node.store.folder}")

    def do_status(self, arg: str) -> None:
        """status: role, channel, blocks, bytes in and out, rejoins, seconds behind live."""
        s = self.node.snapshot()
        role = {"direct": "direct client of the server", "attached": "relayed by a peer"}.get(
            s["state"], s["state"])
        self._say(f"state: {role}; channel {s['channel']}; depth {s['depth']}")
        self._say(f"blocks received: {s['blocks_received']} ({_size(s['bytes_received'])}); "
                  f"sent: {_size(s['bytes_sent'])}; rejoins: {s['rejoins']}")
        self._say(_behind_line(s))
        if s["store"]["disk_refusing"]:
            self._say(f"store: not storing ({s['store']['disk_refusing']}), "
                      f"{s['store']['blocks_not_stored']} block(s) not stored; relaying goes on")
        self._say(f"web view: {self.web_url or 'off (--http-port 0)'}")

    def do_tree(self, arg: str) -> None:
        """tree: this client's subtree (its children and everyone below them)."""
        s = self.node.snapshot()
        self._say(f"{s['ip']}:{s['peer_port']} (depth {s['depth']})")
        for child in s["children"]:
            self._say(f"  {child['ip']}:{child['port']} ({child['below']} below)")
        self._say(f"{len(s['members'])} client(s) below this one: " + (", ".join(s["members"]) or "-"))

    def do_channel(self, arg: str) -> None:
        """channel N: leave this channel (children are handed over) and join channel N."""
        try:
            channel = int(arg)
            if not 0 <= channel <= 9:
                raise ValueError
        except ValueError:
            self._say("usage: channel N (0-9)")
            return
        self.node.switch_channel(channel)
        self._say(f"switching to channel {channel}")

    def do_leave(self, arg: str) -> None:
        """leave: leave the channel (server, parent and children are told); `channel N` joins again."""
        self.node.leave_channel()
        self._say("leaving the channel")

    def do_log(self, arg: str) -> None:
        """log [N]: the last N lines of this client's log (default 20)."""
        if self.log_file is None:
            self._say("logging goes to the terminal")
            return
        count = int(arg) if arg.strip().isdigit() else 20
        try:
            with open(self.log_file, errors="replace") as f:
                for line in deque(f, maxlen=count):
                    self._say(line.rstrip("\n"))
        except OSError as exc:
            self._say(f"cannot read {self.log_file}: {exc}")

    def do_search(self, arg: str) -> None:
        """search WORD: films and files of the library whose name contains WORD."""
        from client.library import TrackerError
        try:
            found = self.library.search(arg.strip())
        except TrackerError as exc:
            self._say(str(exc))
            return
        for film in found:
            self._say(f"{film['name']}@{film['version']}  {film['kind']}, {film['blocks']} blocks, "
                      f"{_size(film['size'])}, {len(film['holders'])} holder(s), "
                      f"every block on at least {min(film['replication'], default=0)}")
        self._say(f"{len(found)} found")

    def do_get(self, arg: str) -> None:
        """get NAME[@VERSION]: download from up to 3 holders at once (in the background)."""
        if not arg.strip():
            self._say("usage: get NAME[@VERSION]")
            return
        self.library.get(arg.strip())
        self._say(f"getting {arg.strip()} into {self.library.library.folder} (`library` shows it)")

    def do_play(self, arg: str) -> None:
        """play NAME: play a downloaded film in its own player, keeping its blocks."""
        self._say(self.library.play(arg.strip()))

    def do_library(self, arg: str) -> None:
        """library: what this client holds and offers, and its downloads."""
        for item in self.library.library.describe():
            self._say(f"{item['name']}@{item['version']}  {item['kind']}, {item['held']}/"
                      f"{item['blocks']} blocks ({item['origin']}), {item['served']} served")
        for wanted, state in self.library.downloads().items():
            self._say(f"download {wanted}: {state}")
        agent = self.library.agent.state
        self._say(f"tracker {self.library.tracker}: "
                  + ("registered" if agent.registered else "not registered")
                  + (f" ({agent.last_error})" if agent.last_error else ""))

    def do_quit(self, arg: str) -> bool:
        """quit: leave the channel and exit."""
        return True

    def do_EOF(self, arg: str) -> bool:
        """Ctrl-D: same as quit."""
        self._say()
        return True
