"""Sphinx directives that render relaytv facts from the code, so the docs cannot drift.

* ``.. program-help:: module:function`` -- the ``--help`` text of a program,
  produced by its own argparse parser (``function`` is either a parser
  factory such as ``build_parser`` or a ``parse_args(argv)`` function, which
  is called with ``["--help"]``).
* ``.. peer-frames::`` -- the table of peer protocol frames, built from
  :data:`client.peerproto.JSON_MESSAGES`, :class:`client.peerproto.Block`, the frames of a
  block in parts
  and the dataclass fields of each message.
* ``.. peer-bounds::`` -- the protocol constants and bounds, read from the module.
* ``.. package-modules:: package`` -- one ``automodule`` per module of a
  package (``__main__`` excluded), so a new module is documented at once.
* ``.. sequence::`` -- a sequence diagram (graphviz) from lines
  ``A -> B: message``; ``A -> A: text`` is a step taken by A alone.
* ``.. menu-commands::`` -- the client menu's commands, from their docstrings.
* ``.. role-diagram:: NAME`` -- one peer connection role of
  :data:`client.roles.ROLES` as a graphviz digraph: its states as nodes,
  the frames that may arrive as edge labels.
* ``:pyval:`module.NAME``` -- the value of a constant, as code.

Each of them records the source files of the modules it read as dependencies
of the page, so an incremental ``make docs`` rebuilds the page when the code
changes (without that, a page whose ``.rst`` did not change kept a stale
table).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import io
import os
import pkgutil
import sys
import typing

from docutils import nodes
from docutils.parsers.rst import Directive, directives
from docutils.statemachine import StringList
from sphinx.util.nodes import nested_parse_with_titles


def _import(path: str):
    """``pkg.module:name`` or ``pkg.module.NAME`` -> the object."""
    if ":" in path:
        module, _, name = path.partition(":")
    else:
        module, _, name = path.rpartition(".")
    obj = importlib.import_module(module)
    for part in name.split("."):
        obj = getattr(obj, part)
    return obj


def _note_modules(env, *names: str) -> None:
    """Rebuild the current page when the source of any of these modules changes."""
    if env is None:
        return
    for name in names:
        module = sys.modules.get(name) or importlib.import_module(name)
        path = getattr(module, "__file__", None)
        if path:
            env.note_dependency(os.path.abspath(path))


def _target_module(path: str) -> str:
    return path.partition(":")[0] if ":" in path else path.rpartition(".")[0]


def program_help(target: str) -> str:
    """The ``--help`` output of the parser behind ``target``, at a fixed width."""
    func = _import(target)
    saved_argv0, saved_columns = sys.argv[0], os.environ.get("COLUMNS")
    sys.argv[0] = ""
    os.environ["COLUMNS"] = "88"
    out = io.StringIO()
    try:
        if func.__name__.endswith("parser"):
            parser = func()
            if not isinstance(parser, argparse.ArgumentParser):
                raise TypeError(f"{target} did not return an ArgumentParser")
            return parser.format_help()
        with contextlib.redirect_stdout(out):
            try:
                func(["--help"])
            except SystemExit:
                pass
        return out.getvalue()
    finally:
        sys.argv[0] = saved_argv0
        if saved_columns is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = saved_columns


class ProgramHelp(Directive):
    required_arguments = 1

    def run(self):
        try:
            text = program_help(self.arguments[0])
        except Exception as exc:
            raise self.error(f"program-help {self.arguments[0]}: {type(exc).__name__}: {exc}") from None
        if not text.strip():
            raise self.error(f"{self.arguments[0]} printed no help")
        _note_modules(getattr(self.state.document.settings, "env", None),
                      _target_module(self.arguments[0]))
        block = nodes.literal_block(text, text)
        block["language"] = "text"
        return [block]


def _summary(cls) -> str:
    doc = (cls.__doc__ or "").strip().split("\n\n")[0]
    return " ".join(doc.split())


def _type_name(annotation) -> str:
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", str(annotation))
    return text.replace("typing.", "")


def _fields(cls) -> str:
    parts = []
    for f in dataclasses.fields(cls):
        text = f"``{f.name}``: {_type_name(f.type)}"
        if f.default is not dataclasses.MISSING:
            text += f" = ``{f.default!r}``"
        parts.append(text)
    return "; ".join(parts) or "(none)"


def _table(header: list[str], rows: list[list[str]], widths: str) -> list[str]:
    lines = [".. list-table::", "   :header-rows: 1", f"   :widths: {widths}", ""]
    for row in [header, *rows]:
        lines.append(f"   * - {row[0]}")
        lines.extend(f"     - {cell}" for cell in row[1:])
    return lines


class _Generated(Directive):
    """A directive whose output is reStructuredText made from the code."""

    #: modules whose source the output depends on (the page is rebuilt when one changes)
    MODULES: tuple[str, ...] = ()

    def lines(self) -> list[str]:
        raise NotImplementedError

    def run(self):
        container = nodes.container()
        source = self.state_machine.get_source_and_line(self.lineno)[0]
        content = StringList()
        try:
            lines = self.lines()
        except Exception as exc:  # an import error in the code: one clear warning, not a crash
            raise self.error(f"{self.name}: {type(exc).__name__}: {exc}") from None
        _note_modules(getattr(self.state.document.settings, "env", None), *self.MODULES)
        for line in lines:
            content.append(line, source)
        nested_parse_with_titles(self.state, content, container, self.content_offset)
        return container.children


class PeerFrames(_Generated):
    MODULES = ("client.peerproto",)

    def lines(self):
        pp = importlib.import_module("client.peerproto")
        binary = (pp.Block, pp.BlockStart, pp.BlockPart, pp.BlockEnd)
        classes = sorted([*pp.JSON_MESSAGES.values(), *binary], key=lambda c: c.TYPE)
        rows = []
        for cls in classes:
            encoding = "binary" if cls in binary else "JSON"
            rows.append([str(cls.TYPE), f":class:`~client.peerproto.{cls.__name__}`",
                         encoding, _fields(cls), _summary(cls)])
        return _table(["type", "frame", "payload", "fields", "meaning"], rows, "6 12 8 40 34")


class PeerBounds(_Generated):
    """Every public upper-case constant (int or str) of the client's protocol modules."""

    MODULES = ("client.peerproto", "client.tree", "client.node", "client.joining")

    def lines(self):
        rows = []
        for name in self.MODULES:
            module = importlib.import_module(name)
            for const, value in vars(module).items():
                if (const.isupper() and not const.startswith("_")
                        and isinstance(value, (int, str)) and not isinstance(value, bool)):
                    rows.append([f":data:`{name}.{const}`", f"``{value!r}``"])
        pp = importlib.import_module("client.peerproto")
        rows.append(["frame header", f"``{pp.HEADER.format}`` ({pp.HEADER.size} bytes: type, length)"])
        rows.append(["block payload header",
                     f"``{pp.BLOCK_HEADER.format}`` ({pp.BLOCK_HEADER.size} bytes: seq, digest)"])
        rows.append(["BlockStart payload",
                     f"``{pp.START_FORMAT.format}`` ({pp.START_FORMAT.size} bytes: seq)"])
        rows.append(["BlockEnd payload",
                     f"``{pp.END_FORMAT.format}`` ({pp.END_FORMAT.size} bytes: size, digest)"])
        return _table(["name", "value"], rows, "40 60")


class PackageModules(_Generated):
    required_arguments = 1

    def lines(self):
        name = self.arguments[0]
        module = importlib.import_module(name)
        if not hasattr(module, "__path__"):
            return [f".. automodule:: {name}", "   :members:", "   :undoc-members:",
                    "   :show-inheritance:", ""]
        names = [name] + sorted(f"{name}.{m.name}" for m in pkgutil.iter_modules(module.__path__)
                                if m.name != "__main__")
        out = []
        for full in names:
            title = f"``{full}``"
            out += [title, "-" * len(title), "",
                    f".. automodule:: {full}",
                    "   :members:", "   :undoc-members:", "   :show-inheritance:", ""]
        return out


class MenuCommands(_Generated):
    """The client menu's commands, from the ``do_*`` methods of :class:`client.menu.Menu`."""

    MODULES = ("client.menu",)

    def lines(self):
        menu = importlib.import_module("client.menu").Menu
        rows = []
        for name in sorted(n for n in dir(menu) if n.startswith("do_") and n != "do_help"):
            doc = " ".join((getattr(menu, name).__doc__ or "").split())
            usage, _, meaning = doc.partition(": ")
            rows.append([f"``{usage or name[3:]}``", meaning or doc])
        rows.append(["``help`` / ``?``", "the list of commands; ``help CMD`` describes one"])
        return _table(["command", "what it does"], rows, "25 75")


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def sequence_dot(lines: list[str]) -> str:
    """A graphviz sequence diagram: one column per participant, one row per step."""
    participants: list[str] = []
    steps: list[tuple[str, str, str]] = []
    for line in lines:
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("participants:"):
            participants.extend(p.strip() for p in line.split(":", 1)[1].split(","))
            continue
        arrow, _, label = line.partition(":")
        src, _, dst = arrow.partition("->")
        src, dst = src.strip(), dst.strip()
        if not src or not dst:
            raise ValueError(f"not 'A -> B: label': {line!r}")
        for p in (src, dst):
            if p not in participants:
                participants.append(p)
        steps.append((src, dst, label.strip()))
    ids = {p: f"p{i}" for i, p in enumerate(participants)}
    out = ["digraph sequence {", "  rankdir=TB; newrank=true; nodesep=0.3; ranksep=0.18; splines=line;",
           '  node [fontname="Helvetica", fontsize=10]; edge [fontname="Helvetica", fontsize=9];']
    out.append("  { rank=same; " + " ".join(
        f'{ids[p]} [shape=box, style="rounded,filled", fillcolor="#eeeeee", label={_quote(p)}];'
        for p in participants) + " }")
    for a, b in zip(participants, participants[1:]):
        out.append(f"  {ids[a]} -> {ids[b]} [style=invis, minlen=4];")
    rows = len(steps) + 1
    for i in range(rows):
        out.append("  { rank=same; " + " ".join(
            f"{ids[p]}_{i} [shape=point, width=0.04, height=0.04, color=\"#999999\"];"
            for p in participants) + " }")
    for p in participants:
        chain = [ids[p]] + [f"{ids[p]}_{i}" for i in range(rows)]
        out.append("  " + " -> ".join(chain) +
                   ' [arrowhead=none, style=dashed, color="#999999", weight=1000];')
    for i, (src, dst, label) in enumerate(steps):
        text = _quote(f"{i + 1}. {label}")
        if src == dst:
            out.append(f'  {ids[src]}_{i} [shape=box, width=0, height=0, margin="0.05,0.02", '
                       f'style=filled, fillcolor="#f6f6ff", color="#9999cc", fontsize=9, label={text}];')
        else:
            out.append(f"  {ids[src]}_{i} -> {ids[dst]}_{i} [constraint=false, label={text}];")
    out.append("}")
    return "\n".join(out)


class Sequence(_Generated):
    has_content = True
    option_spec = {"caption": directives.unchanged}

    def lines(self):
        try:
            dot = sequence_dot(list(self.content))
        except ValueError as exc:
            raise self.error(str(exc))
        out = [".. graphviz::"]
        if "caption" in self.options:
            out.append(f"   :caption: {self.options['caption']}")
        out.append("")
        out.extend("   " + line for line in dot.splitlines())
        return out


def role_dot(role) -> str:
    """A role's table as a digraph: one node per state, one edge per (state, next state)."""
    ids = {state: f"s{i}" for i, state in enumerate(role.table)}
    out = [f"digraph role_{role.name} {{", "  rankdir=LR; nodesep=0.4; ranksep=0.9;",
           '  node [shape=box, style="rounded,filled", fillcolor="#eef3fb", fontsize=10];',
           "  edge [fontsize=8];",
           '  start [shape=circle, label="", width=0.15, style=filled, fillcolor=black];']
    for state, node in ids.items():
        out.append(f"  {node} [label={_quote(state)}];")
    edges: dict[tuple[str, str], list[str]] = {}
    for state, moves in role.table.items():
        for frame, after in moves.items():
            edges.setdefault((state, after), []).append(frame)
    if any(after not in ids for _, after in edges):
        out.append('  end [shape=doublecircle, label="", width=0.12, style=filled, fillcolor=black];')
    out.append(f"  start -> {ids[role.start]};")
    for (state, after), frames in edges.items():
        label = '"' + "\\n".join(frames) + '"'  # (frame names: no quote, no backslash)
        out.append(f"  {ids[state]} -> {ids.get(after, 'end')} [label={label}];")
    out.append("}")
    return "\n".join(out)


class RoleDiagram(_Generated):
    """One role of :mod:`client.roles`, drawn from its table."""

    required_arguments = 1
    option_spec = {"caption": directives.unchanged}
    MODULES = ("client.roles", "client.peerproto")

    def lines(self):
        role = importlib.import_module("client.roles").ROLES[self.arguments[0]]
        caption = self.options.get("caption", f"Role ``{role.name}``: {role.doc}.")
        out = [".. graphviz::", f"   :caption: {caption}", ""]
        out.extend("   " + line for line in role_dot(role).splitlines())
        return out


def pyval_role(name, rawtext, text, lineno, inliner, options=None, content=None):
    try:
        value = _import(text)
    except (ImportError, AttributeError) as exc:
        msg = inliner.reporter.error(f"pyval: cannot find {text}: {exc}", line=lineno)
        return [inliner.problematic(rawtext, rawtext, msg)], [msg]
    _note_modules(getattr(inliner.document.settings, "env", None), _target_module(text))
    return [nodes.literal(rawtext, repr(value))], []


def setup(app):
    app.add_directive("program-help", ProgramHelp)
    app.add_directive("peer-frames", PeerFrames)
    app.add_directive("peer-bounds", PeerBounds)
    app.add_directive("package-modules", PackageModules)
    app.add_directive("sequence", Sequence)
    app.add_directive("menu-commands", MenuCommands)
    app.add_directive("role-diagram", RoleDiagram)
    app.add_role("pyval", pyval_role)
    # env_version: bumped when the directives' output changes, so that Sphinx
    # re-reads every page once instead of reusing pages read by the old code.
    return {"version": "3", "env_version": 3,
            "parallel_read_safe": True, "parallel_write_safe": True}
