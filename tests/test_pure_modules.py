"""The client's pure parts stay pure: no socket, thread, clock or file in them or in what they import.

They are the decisions (the tree, the repair plan, the delivery gate, the
place checks, the peer codec); the threads and sockets around them are thin
adapters. The check reads the import statements (of the module and of every
project module it imports, transitively), so a stray ``import time`` fails here
before it becomes a hidden dependency on the wall clock.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

PURE = ["client.capacity", "client.commands", "client.core", "client.crosscheck", "client.delivery",
        "client.events", "client.flows", "client.forwarding", "client.inputs", "client.moves", "client.moving",
        "client.placement", "client.places", "client.peerproto", "client.relaying", "client.repair",
        "client.repairing", "client.roles", "client.seeking", "client.tree", "client.treenode",
        "client.window", "server.protocol"]

#: What pure code may not use: I/O, threads, clocks, processes.
FORBIDDEN = {"socket", "select", "selectors", "threading", "queue", "time", "asyncio", "os",
             "subprocess", "pathlib", "shutil", "signal", "urllib", "http", "logging"}


def imports_of(module: str) -> set[str]:
    path = ROOT / (module.replace(".", "/") + ".py")
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def is_project(name: str) -> bool:
    return (ROOT / (name.replace(".", "/") + ".py")).is_file()


@pytest.mark.parametrize("module", PURE)
def test_a_pure_module_imports_nothing_of_io_threads_or_clocks(module):
    seen, todo, found = set(), [module], {}
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        for name in imports_of(current):
            if name.split(".")[0] in FORBIDDEN:
                found.setdefault(current, set()).add(name)
            elif is_project(name):
                todo.append(name)
    assert found == {}, f"{module} reaches I/O, threads or clocks through {found}"


def test_the_check_sees_imports_at_module_level_and_inside_functions():
    """The reader itself (else the test above proves nothing): client.links imports socket at
    the top, client.peerproto imports client.treenode inside a method."""
    assert {"socket", "threading"} <= imports_of("client.links")
    assert "client.treenode" in imports_of("client.peerproto")
