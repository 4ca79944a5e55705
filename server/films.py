"""Finding the films and their blocks in the film folder.

A film ``NAME`` is the set of files ``NAME_00000.mkv``, ``NAME_00001.mkv``, ...
(five digits, numbered from 0 without gaps), as ``separa.py`` writes them.
Films are sorted by name; channel ``i`` broadcasts film ``i`` (repeating the
list when there are more channels than films).

Every problem is a :class:`FilmError` whose message fits on one line and says
what to do.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

BLOCK_NAME = re.compile(r"(?P<name>.+)_(?P<number>\d{5})\.mkv")
MAKE_SAMPLES = "python separa.py --sample"


class FilmError(Exception):
    """The film folder cannot be used; the message says why and what to do."""


@dataclass(frozen=True)
class Film:
    """A film: its name and its block files, in order."""

    name: str
    blocks: tuple[Path, ...]

    def __len__(self) -> int:
        return len(self.blocks)

    def block(self, index: int) -> Path:
        """The file of block ``index``, wrapping around at the end of the film."""
        return self.blocks[index % len(self.blocks)]

    def read_block(self, index: int) -> bytes:
        """The bytes of block ``index`` (wrapping around)."""
        return self.block(index).read_bytes()


def group_blocks(names: list[str]) -> dict[str, list[tuple[int, str]]]:
    """Group file names into films: ``{NAME: [(number, file name), ...]}``, sorted.

    Names that are not ``NAME_NNNNN.mkv`` are left out.
    """
    films: dict[str, list[tuple[int, str]]] = {}
    for file_name in names:
        match = BLOCK_NAME.fullmatch(file_name)
        if match:
            films.setdefault(match["name"], []).append((int(match["number"]), file_name))
    return {name: sorted(films[name]) for name in sorted(films)}


def check_numbering(name: str, numbered: list[tuple[int, str]]) -> None:
    """Raise :class:`FilmError` unless the blocks are numbered 0, 1, 2, ... without gaps."""
    for expected, (number, file_name) in enumerate(numbered):
        if number != expected:
            raise FilmError(f"film {name!r}: block {expected:05d} is missing "
                            f"(next is {file_name}); cut it again with separa.py")


def find_films(folder: Path) -> list[Film]:
    """All films of ``folder``, sorted by name; :class:`FilmError` when there are none."""
    folder = Path(folder)
    if not folder.exists():
        raise FilmError(f"film folder {folder} does not exist; "
                        f"make the sample films with: {MAKE_SAMPLES}")
    if not folder.is_dir():
        raise FilmError(f"film folder {folder} is not a folder")
    try:
        names = [p.name for p in folder.iterdir() if p.is_file()]
    except OSError as exc:
        raise FilmError(f"cannot read film folder {folder}: {exc.strerror or exc}") from None
    grouped = group_blocks(names)
    if not grouped:
        raise FilmError(f"film folder {folder} holds no blocks (NAME_00000.mkv, ...); "
                        f"make the sample films with: {MAKE_SAMPLES}")
    films = []
    for name, numbered in grouped.items():
        check_numbering(name, numbered)
        films.append(Film(name, tuple(folder / file_name for _, file_name in numbered)))
    return films


def assign_films(films: list[Film], channels: int) -> list[Film]:
    """The film of each channel: channel ``i`` gets film ``i mod len(films)``."""
    if not films:
        raise FilmError("no films to assign")
    return [films[i % len(films)] for i in range(channels)]
