"""Verified places: a joiner takes a place only once others than the one offering it agree.

A relay that accepts a join names its depth and its ancestors
(:class:`client.peerproto.Accept`). A liar could claim a depth-1 place (and
so draw newcomers and climbers) while hanging deep in the tree, or anywhere
else. Before the move, the joiner checks the claim with independent parties:

* the top of the chain (the parent itself when it claims depth 1) must be in
  the server's ``11X`` list of direct clients;
* the depth must match the chain's length;
* each ancestor must confirm, when asked directly (``Vouch``), that the next
  one in the chain is its child now.

The rule is pure: the server's list and the question to an ancestor are
passed in, so that it is tested without sockets.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Iterable

from client.peerproto import Addr

#: Ancestors asked at most, nearest first (a chain deeper than this is trusted above).
MAX_VOUCHES = 12


def place_problem(parent: Addr, depth: int, path: tuple[Addr, ...], listed: Iterable[str] | None,
                  vouch: Callable[[Addr, Addr], bool | None]) -> str | None:
    """Why the place ``parent`` offers (at ``depth``, below ``path``) is not verified; None: it is.

    ``listed``: the IPs the server lists as direct clients (None: the server
    could not be asked; the top of the chain is then not checked).
    ``vouch(ancestor, child)``: True/False as the ancestor answers, None
    when it does not answer.
    """
    chain = (*path, parent)
    if depth != len(path) + 1:
        return f"{parent} claims depth {depth} below a chain of {len(path)}"
    if listed is not None and chain[0].ip not in set(listed):
        if not path:
            return f"{parent} claims a depth-1 place, but the server does not list it"
        return f"{parent} names {chain[0]} at depth 1, but the server does not list it"
    for ancestor, child in vouch_links(parent, path):
        answer = vouch(ancestor, child)
        if answer is None:
            return f"{ancestor} could not be asked to confirm {child} as its child"
        if not answer:
            return f"{ancestor} does not confirm {child} as its child"
    return None


def vouch_links(parent: Addr, path: tuple[Addr, ...]) -> list[tuple[Addr, Addr]]:
    """The ``(ancestor, child)`` pairs :func:`place_problem` asks about, nearest first.

    A joiner asks them all at once (each over its own connection) and then
    judges: one after another, a deep place cost a round trip per ancestor,
    each through uplinks that may be full.
    """
    chain = (*path, parent)
    return list(reversed(list(zip(chain, chain[1:]))[-MAX_VOUCHES:]))


#: Swap offers a child may decline in a row before its free places are no longer advertised.
DECLINES_LIMIT = 3


def advertised(children: dict, declines: dict) -> dict:
    """The children's views as this relay passes them on: a child that declined
    :data:`DECLINES_LIMIT` swap offers in a row keeps its place, but its free
    places are not advertised (a liar that draws climbers and never moves up
    draws no more)."""
    return {addr: view if declines.get(addr, 0) < DECLINES_LIMIT
            else dataclasses.replace(view, free=0, places=())
            for addr, view in children.items()}
