"""Separate hosts on one machine: network namespaces joined by a bridge, with an upload cap.

Used by the overlay benchmark (``python -m bench --netns``). Every host (the
server, each client) gets its own network namespace with loopback up and one
veth link to a bridge that lives in a namespace of its own::

    rtv<pid>-s  (server, 10.231.0.1)  --veth--+
    rtv<pid>-c0 (client, 10.231.1.2)  --veth--+-- bridge rtv<pid>-br in namespace rtv<pid>-br
    rtv<pid>-c1 (client, 10.231.1.3)  --veth--+
    ...

Addresses of 10.231.0.0/16 exist only inside these namespaces, and no link
reaches the namespace the tool was started from: traffic never leaves them.
Each client host's link has a token bucket on its way out
(``tc qdisc add dev <link> root tbf rate <X>mbit burst 32kbit latency 400ms``):
its upload cap. The server is not capped unless asked.

Every namespace and link is named with the prefix ``rtv<pid>-`` of the
process that made it, and :meth:`Topology.close` deletes them all (deleting
the bridge's namespace destroys every veth pair). Leftovers of runs that were
killed outright::

    python -m bench.netns --list
    python -m bench.netns --cleanup             # of runs whose process is gone
    python -m bench.netns --cleanup --all       # of every run, also running ones
    python -m bench.netns --cleanup --prefix rtv1234-

Needs root (or CAP_SYS_ADMIN and CAP_NET_ADMIN) and iproute2 (``ip``, ``tc``).
Processes are started inside a namespace with ``ip netns exec NS cmd ...``,
which execs the command: its process id is the one ``subprocess.Popen`` sees.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass

NAME_BASE = "rtv"
SUBNET = "10.231"
PREFIX_LENGTH = 16
SERVER_IP = f"{SUBNET}.0.1"
IFNAMSIZ = 15                     # longest interface name Linux accepts
_PREFIX_RE = re.compile(rf"^({NAME_BASE}(\d+)-)")


def parse_caps(text: str) -> list[float]:
    """``"16"`` or ``"2,8,20"``: one upload cap for every client, or caps spread over them.

    Mbit/s, each >= 0 (0: no cap). ValueError with the reason otherwise.
    """
    try:
        caps = [float(x) for x in text.split(",")]
    except ValueError:
        raise ValueError(f"not MBIT or MBIT1,MBIT2,... (numbers >= 0): {text!r}") from None
    if not caps or min(caps) < 0:
        raise ValueError(f"not MBIT or MBIT1,MBIT2,... (numbers >= 0): {text!r}")
    return caps


def cap_of(caps: list[float], index: int, count: int) -> float | None:
    """Client ``index``'s cap of ``count``: the list split into equal runs, in order.

    ``[2, 8, 20]`` over 30 clients: clients 0-9 get 2, 10-19 get 8, 20-29 get 20.
    Clients beyond ``count`` (none in a normal run) get the last cap. None: no cap.
    """
    cap = caps[min(index * len(caps) // max(count, 1), len(caps) - 1)]
    return cap or None


def describe_caps(caps: list[float]) -> str:
    """``16 Mbit/s``, ``2/8/20 Mbit/s in equal parts`` or ``no cap``."""
    if not any(caps):
        return "no cap"
    if len(caps) == 1:
        return f"{caps[0]:g} Mbit/s"
    return "/".join(f"{c:g}" for c in caps) + " Mbit/s in equal parts"


class NetnsError(RuntimeError):
    """A namespace or link could not be made; the message names the command."""


def unavailable() -> str | None:
    """Why namespaces cannot be made here (not root, no iproute2), or None."""
    if os.geteuid() != 0:
        return "--netns requires root (network namespaces, veth links and tc need it); " \
               "run as root, e.g. with sudo"
    missing = [tool for tool in ("ip", "tc") if not shutil.which(tool)]
    if missing:
        return f"--netns needs iproute2 ({', '.join(missing)} not found); " \
               "install it: apt-get install iproute2"
    return None


def prefix_of(pid: int | None = None) -> str:
    """The name prefix of a run: ``rtv<pid>-``."""
    return f"{NAME_BASE}{pid if pid is not None else os.getpid()}-"


def client_address(index: int) -> str:
    """Client ``index``'s address: 10.231.1.2, 10.231.1.3, ... 10.231.1.251, 10.231.2.2, ..."""
    if not 0 <= index < 250 * 250:
        raise ValueError(f"client index out of range: {index}")
    return f"{SUBNET}.{1 + index // 250}.{index % 250 + 2}"


def run(*argv: str) -> str:
    """Run an ``ip``/``tc`` command; raise :class:`NetnsError` with its message on failure."""
    proc = subprocess.run(argv, capture_output=True, text=True)
    if proc.returncode != 0:
        raise NetnsError(f"{' '.join(argv)}: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc.stdout


def namespaces() -> list[str]:
    """Names of every network namespace ``ip netns`` knows."""
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def root_links() -> list[str]:
    """Names of the links in the current network namespace."""
    out = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    names = []
    for line in out.splitlines():
        parts = line.split(":", 2)
        if len(parts) >= 2:
            names.append(parts[1].strip().split("@")[0])
    return names


@dataclass
class Host:
    """One namespace: its name, address, link (inside it), the bridge's end, its cap."""

    key: str                      # "s" for the server, "c<i>" for client i
    ns: str
    ip: str
    link: str
    bridge_port: str
    upload_mbit: float | None

    @property
    def exec_prefix(self) -> list[str]:
        """The argv prefix that runs a command inside this host."""
        return ["ip", "netns", "exec", self.ns]


class Topology:
    """A bridge in its own namespace and hosts attached to it; all removed by :meth:`close`.

    Use it as a context manager, or call :meth:`close` in a ``finally``.
    """

    def __init__(self, prefix: str | None = None, upload_mbit: float | list[float] | None = 8.0,
                 server_upload_mbit: float | None = None, burst: str = "32kbit",
                 latency: str = "400ms", clients: int = 1):
        self.prefix = prefix or prefix_of()
        #: One cap for every client, or a list spread over ``clients`` clients (:func:`cap_of`).
        self.upload_mbit = upload_mbit
        self.clients = clients
        self.server_upload_mbit = server_upload_mbit
        self.burst, self.latency = burst, latency
        self.bridge_ns = self._name("br")
        self.bridge = self._name("br")
        self.hosts: dict[str, Host] = {}
        self.by_ip: dict[str, Host] = {}
        self._made: list[str] = []           # namespaces made, in order
        self._started = False

    def _name(self, suffix: str) -> str:
        name = self.prefix + suffix
        if len(name) > IFNAMSIZ:
            raise NetnsError(f"name {name!r} is longer than {IFNAMSIZ} characters "
                             "(too many hosts for this prefix)")
        return name

    def _add_ns(self, name: str) -> None:
        run("ip", "netns", "add", name)
        self._made.append(name)
        run("ip", "-n", name, "link", "set", "lo", "up")

    def start(self) -> "Topology":
        """Make the bridge's namespace and the bridge."""
        if not self._started:
            reason = unavailable()
            if reason:
                raise NetnsError(reason)
            self._started = True
            self._add_ns(self.bridge_ns)
            run("ip", "-n", self.bridge_ns, "link", "add", self.bridge, "type", "bridge")
            run("ip", "-n", self.bridge_ns, "link", "set", self.bridge, "up")
        return self

    def add_host(self, key: str, ip: str, upload_mbit: float | None) -> Host:
        """A namespace named ``<prefix><key>`` with ``ip``/16, linked to the bridge."""
        self.start()
        if key in self.hosts:
            return self.hosts[key]
        host = Host(key, self._name(key), ip, self._name(key), self._name("p" + key.lstrip("c")),
                    upload_mbit)
        self._add_ns(host.ns)
        # Both ends are made where they belong: no link ever appears in our own namespace.
        run("ip", "-n", self.bridge_ns, "link", "add", host.bridge_port, "type", "veth",
            "peer", "name", host.link, "netns", host.ns)
        run("ip", "-n", self.bridge_ns, "link", "set", host.bridge_port, "master", self.bridge)
        run("ip", "-n", self.bridge_ns, "link", "set", host.bridge_port, "up")
        run("ip", "-n", host.ns, "addr", "add", f"{ip}/{PREFIX_LENGTH}", "dev", host.link)
        run("ip", "-n", host.ns, "link", "set", host.link, "up")
        if upload_mbit:
            run("tc", "-n", host.ns, "qdisc", "add", "dev", host.link, "root", "tbf",
                "rate", f"{upload_mbit:g}mbit", "burst", self.burst, "latency", self.latency)
        self.hosts[key] = host
        self.by_ip[ip] = host
        return host

    def add_server(self) -> Host:
        return self.add_host("s", SERVER_IP, self.server_upload_mbit)

    def add_client(self, index: int) -> Host:
        caps = self.upload_mbit if isinstance(self.upload_mbit, list) else [self.upload_mbit or 0]
        return self.add_host(f"c{index}", client_address(index), cap_of(caps, index, self.clients))

    def exec_prefix(self, ip: str) -> list[str]:
        """The argv prefix for a process with address ``ip`` (for :class:`bench.cluster.Cluster`)."""
        return self.by_ip[ip].exec_prefix

    def qdisc(self, key: str) -> str:
        """``tc qdisc show`` of a host's link."""
        host = self.hosts[key]
        return run("tc", "-n", host.ns, "qdisc", "show", "dev", host.link)

    def describe(self) -> dict:
        return {"prefix": self.prefix, "bridge_namespace": self.bridge_ns,
                "subnet": f"{SUBNET}.0.0/{PREFIX_LENGTH}", "server_ip": SERVER_IP,
                "hosts": len(self.hosts), "upload_mbit": self.upload_mbit,
                "server_upload_mbit": self.server_upload_mbit,
                "qdisc": f"tbf rate <cap>mbit burst {self.burst} latency {self.latency}"}

    def close(self) -> list[str]:
        """Delete every namespace this topology made, and any other one with its prefix.

        Signals are held off meanwhile, so that a second Ctrl-C does not leave
        half of them. Returns the names that could not be deleted (normally none).
        """
        held = {}
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            try:
                held[sig] = signal.signal(sig, signal.SIG_IGN)
            except ValueError:           # not the main thread
                pass
        try:
            return cleanup(self.prefix, also_running=True, first=list(reversed(self._made)))
        finally:
            self._made.clear()
            self.hosts.clear()
            self.by_ip.clear()
            self._started = False
            for sig, handler in held.items():
                signal.signal(sig, handler)

    def __enter__(self) -> "Topology":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def leftovers(prefix: str | None = None, also_running: bool = False) -> list[str]:
    """Namespaces named by this tool (``rtv<pid>-...``): those of ``prefix``, or of every
    run whose process is gone (and of running ones too with ``also_running``)."""
    found = []
    for name in namespaces():
        m = _PREFIX_RE.match(name)
        if not m:
            continue
        if prefix is not None:
            if name.startswith(prefix):
                found.append(name)
        elif also_running or not _pid_alive(int(m.group(2))):
            found.append(name)
    return found


def cleanup(prefix: str | None = None, also_running: bool = False,
            first: list[str] | None = None) -> list[str]:
    """Delete leftover namespaces (see :func:`leftovers`) and links with the same prefixes
    in the current namespace (none are ever made there; a safeguard). Host namespaces go
    before the bridge's. Returns the names that could not be deleted."""
    names = list(dict.fromkeys((first or []) + leftovers(prefix, also_running)))
    names.sort(key=lambda n: n.endswith("-br"))          # hosts first, bridges last
    prefixes = {prefix} if prefix else {_PREFIX_RE.match(n).group(1) for n in names
                                        if _PREFIX_RE.match(n)}
    failed = []
    for name in names:
        proc = subprocess.run(["ip", "netns", "delete", name], capture_output=True, text=True)
        if proc.returncode != 0 and name in namespaces():
            failed.append(name)
    for link in root_links():
        if any(link.startswith(p) for p in prefixes):
            subprocess.run(["ip", "link", "delete", link], capture_output=True)
    return failed


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.netns",
                                description="List or remove the network namespaces that "
                                            "python -m bench --netns left behind.")
    p.add_argument("--list", action="store_true", help="list them")
    p.add_argument("--cleanup", action="store_true", help="delete them")
    p.add_argument("--prefix", default=None, help="only those of this prefix (e.g. rtv1234-)")
    p.add_argument("--all", action="store_true",
                   help="also those of runs still going (default: only of runs whose process is gone)")
    args = p.parse_args(argv)
    if not (args.list or args.cleanup):
        p.error("say --list or --cleanup")
    reason = unavailable()
    if reason:
        print(f"bench.netns: {reason.replace('--netns', 'this')}", file=sys.stderr)
        return 2
    names = leftovers(args.prefix, args.all)
    if args.list:
        print("\n".join(names) if names else "(none)")
        return 0
    failed = cleanup(args.prefix, args.all)
    for name in names:
        if name not in failed:
            print(f"deleted {name}")
    for name in failed:
        print(f"could not delete {name}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
