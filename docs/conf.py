"""Sphinx configuration of the relaytv documentation (``make docs``)."""

import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
sys.path.insert(0, str(DOCS.parent))          # server, client, player, bench, separa
sys.path.insert(0, str(DOCS / "_ext"))        # relaytv_docs

project = "relaytv"
author = "relaytv"
copyright = "relaytv authors"
release = version = "0.1.0"

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.graphviz",
    "sphinx.ext.viewcode",
    "relaytv_docs",
]

exclude_patterns = ["_build", "_ext", "Thumbs.db", ".DS_Store"]
templates_path = []
html_theme = "alabaster"
html_static_path = ["_static"] if (DOCS / "_static").is_dir() else []
html_theme_options = {"description": "live TV through a tree of viewers", "fixed_sidebar": True}

# Importing a module for autodoc must not need libvlc: the player imports vlc
# lazily anyway; mocking it keeps the docs buildable on a machine without VLC.
autodoc_mock_imports = ["vlc"]
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_preserve_defaults = True

graphviz_output_format = "svg"
graphviz_dot_args = ["-Gfontname=Helvetica", "-Nfontname=Helvetica", "-Efontname=Helvetica"]


# Docstrings are plain prose with ``code`` markup. A regex character class
# such as [A-Za-z0-9_-] in one would read as a reStructuredText reference
# ("0-9_"): show such a class as code rather than failing the build on it.
import re  # noqa: E402

_CHAR_CLASS = re.compile(r"(?<![`\\])(\[[A-Za-z0-9_\-]*_[A-Za-z0-9_\-]*\])(?!`)")


def _protect_char_classes(app, what, name, obj, options, lines):
    lines[:] = [_CHAR_CLASS.sub(r"``\1``", line) for line in lines]


def setup(app):
    app.connect("autodoc-process-docstring", _protect_char_classes)
