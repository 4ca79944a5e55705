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


class Menu(cmd.Cmd):
    """relaytv client. Type help or ? to list commands."""

    prompt = "relaytv> "

    def __init__(self, node: Node, log_file: Path | None = None, **kwargs):
        super().__init__(**kwargs)
        self.node = node
        self.log_file = log_file
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
        """status: role, channel, blocks, bytes in and out, rejoins."""
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

    def do_quit(self, arg: str) -> bool:
        """quit: leave the channel and exit."""
        return self._no_argument("quit", arg)

    def do_EOF(self, arg: str) -> bool:
        """Ctrl-D: same as quit."""
        self._say()
        return True
