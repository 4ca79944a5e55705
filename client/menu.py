"""The client's interactive menu: a thin front end over the node (stdlib ``cmd``).

Every command reads the node's snapshot or calls one node method; nothing
here decides anything. Background threads log to a file while the menu runs
(``log`` shows its end), so no log line lands on the prompt.
"""

from __future__ import annotations

import cmd
import logging
from collections import deque
from pathlib import Path

from client.node import Node
from server.protocol import MAX_CHANNELS

log = logging.getLogger(__name__)


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

    def cmdloop(self, intro=None) -> None:
        """Run the menu; Ctrl-C ends it on a fresh line, not on the prompt's."""
        try:
            super().cmdloop(intro)
        except KeyboardInterrupt:
            self._say()
            raise

    def onecmd(self, line: str) -> bool:
        """Run one command; a failure in it is logged and the menu stays."""
        try:
            return super().onecmd(line)
        except Exception as exc:
            log.exception("menu command %r failed", line)
            self._say(f"internal error: {exc!r} (the traceback is in the log)")
            return False

    def emptyline(self) -> bool:
        return False

    def default(self, line: str) -> bool:
        self._say(f"unknown command: {line.split()[0]} (type help)")
        return False

    def _no_argument(self, name: str, arg: str) -> bool:
        """True when ``arg`` is empty; else says that ``name`` takes none."""
        if arg.strip():
            self._say(f"usage: {name} (it takes no argument; got {arg.strip()!r})")
            return False
        return True

    def do_help(self, arg: str) -> None:
        """help [COMMAND]: the commands, one line each; or one command's description."""
        if arg.strip():
            super().do_help(arg)
            return
        for name in sorted(n[3:] for n in self.get_names() if n.startswith("do_") and n != "do_EOF"):
            doc = (getattr(self, f"do_{name}").__doc__ or "").strip().splitlines()[0]
            usage, _, what = doc.partition(": ")
            self._say(f"  {usage:<14} {what}")
        self._say("  Ctrl-D         same as quit")

    def do_connections(self, arg: str) -> None:
        """connections: who sends to this client and whom it sends to (IP:port)."""
        if not self._no_argument("connections", arg):
            return
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
        if not self._no_argument("files", arg):
            return
        waiting = self.node.store.waiting()
        for name, size in waiting:
            self._say(f"{name}  {_size(size)}")
        self._say(f"{len(waiting)} file(s) waiting in {self.node.store.folder}")

    def do_status(self, arg: str) -> None:
        """status: role, channel, blocks, bytes in and out, rejoins, seconds behind live."""
        if not self._no_argument("status", arg):
            return
        s = self.node.snapshot()
        if s["state"] in ("direct", "attached"):
            role = {"direct": "direct client of the server", "attached": "relayed by a peer"}[s["state"]]
            self._say(f"state: {role}; channel {s['channel']}; depth {s['depth']}")
        elif s["state"] == "idle":
            self._say(f"state: idle, in no channel (last: channel {s['channel']}); "
                      "channel N joins one")
        else:
            self._say(f"state: {s['state']}; channel {s['channel']}")
        if s["problem"]:
            self._say(f"problem: {s['problem']}")
        if not s["server_reachable"]:
            self._say(f"server {s['parent_server']} not reachable "
                      f"({s['server_failures']} failed request(s)); still trying")
        self._say(f"blocks received: {s['blocks_received']} ({_size(s['bytes_received'])}); "
                  f"sent: {_size(s['bytes_sent'])}; rejoins: {s['rejoins']}")
        self._say(_behind_line(s))
        if s["store"]["disk_refusing"]:
            self._say(f"store: not storing ({s['store']['disk_refusing']}), "
                      f"{s['store']['blocks_not_stored']} block(s) not stored; relaying goes on")
        self._say(f"web view: {self.web_url or 'off (--http-port 0)'}")

    def do_tree(self, arg: str) -> None:
        """tree: this client's whole subtree, one client a line, indented by depth."""
        if not self._no_argument("tree", arg):
            return
        s = self.node.snapshot()
        depth = s["depth"]
        self._say(f"{s['ip']}:{s['peer_port']}  depth {depth}" if depth else
                  f"{s['ip']}:{s['peer_port']}  ({s['state']})")

        def draw(nodes, level):
            for node in nodes:
                at = f"  depth {depth + level}" if depth else ""
                self._say(f"{'   ' * level}{node['addr']}{at}")
                draw(node["children"], level + 1)

        draw(s["tree"], 1)
        self._say(f"{len(s['members'])} client(s) below this one")

    def do_channel(self, arg: str) -> None:
        """channel N: leave this channel (children are handed over) and join channel N."""
        try:
            channel = int(arg)
            if not 0 <= channel < MAX_CHANNELS:
                raise ValueError
        except ValueError:
            channels = self.node.server_channels()
            have = (f"the server has channels 0-{channels - 1}" if channels else
                    "the server cannot be asked which channels it has now")
            self._say(f"usage: channel N ({have})")
            return
        if self.node.wanted_channel == channel:
            self._say(f"already on channel {channel}")
            return
        problem = self.node.check_channel(channel)
        if problem is not None:
            now = self.node.wanted_channel
            self._say(f"cannot switch: {problem}; " +
                      (f"staying on channel {now}" if now is not None else "still in no channel"))
            return
        self.node.switch_channel(channel)
        self._say(f"switching to channel {channel}")

    def do_leave(self, arg: str) -> None:
        """leave: leave the channel (server, parent and children are told); channel N joins again."""
        if not self._no_argument("leave", arg):
            return
        if self.node.leave_channel():
            self._say("leaving the channel")
        else:
            self._say("not in a channel (channel N joins one)")

    def do_log(self, arg: str) -> None:
        """log [N]: the last N lines of this client's log (default 20)."""
        if self.log_file is None:
            self._say("logging goes to the terminal")
            return
        if arg.strip() and not arg.strip().isdigit():
            self._say(f"usage: log [N] (N a whole number of lines; got {arg.strip()!r})")
            return
        count = int(arg) if arg.strip() else 20
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
        return self._no_argument("quit", arg)

    def do_EOF(self, arg: str) -> bool:
        """Ctrl-D: same as quit."""
        self._say()
        return True
