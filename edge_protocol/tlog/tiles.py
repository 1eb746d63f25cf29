"""The static layout of C2SP tlog-tiles (c2sp.org/tlog-tiles): tile paths, which tiles a growing tree
changes, hash tile bytes and entry bundles.

A tile at level L (0..63) and index N holds up to 256 consecutive hashes of stored level 8·L: tile N
at level 0 holds leaf hashes N·256 .. N·256+255, at level 1 the hashes of complete 256-leaf subtrees,
and so on. Its bytes are the 32-byte hashes concatenated. A full tile has 256; the rightmost ones of a
tree are *partial*, W = floor(size / 256^L) mod 256 hashes, and their path says so::

    tile/<L>/<N>[.p/<W>]          a hash tile
    tile/entries/<N>[.p/<W>]      the entry bundle of level-0 tile N: the leaves themselves

<N> is written in 3-digit groups, all but the last prefixed "x" (1234067 → x001/x234/067). An entry
bundle is each entry as a big-endian uint16 length and its bytes, so an entry is at most 65,535 bytes.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from edge_protocol.errors import TlogError
from edge_protocol.tlog.merkle import HASH_SIZE, MAX_TREE_SIZE, HashReader, read_stored, stored_hash_index

TILE_HEIGHT = 8  # tlog-tiles: "Full tiles MUST be exactly 256 hashes wide"
TILE_WIDTH = 1 << TILE_HEIGHT
MAX_TILE_LEVEL = 63  # tlog-tiles: <L> "between 0 and 63"
ENTRY_BUNDLE = -1  # the level of an entry bundle (tile/entries/...), as Go's tlog writes data tiles
MAX_ENTRY_SIZE = 0xFFFF  # tlog-tiles: entries are "big-endian uint16 length-prefixed"
_MAX_PATH = 200  # tile/63/ + six x-groups + .p/255 is under 50 characters; anything longer is not a tile
_GROUP = re.compile("x[0-9]{3}")
_LAST = re.compile("[0-9]{3}")
_WIDTH = re.compile("[1-9][0-9]{0,2}")
_LEVEL = re.compile("0|[1-9][0-9]?")


@dataclass(frozen=True)
class Tile:
    """A hash tile (level >= 0) or an entry bundle (level :data:`ENTRY_BUNDLE`) of ``width`` items."""

    level: int
    index: int
    width: int = TILE_WIDTH

    def __post_init__(self) -> None:
        for what, value in (("level", self.level), ("index", self.index), ("width", self.width)):
            if not isinstance(value, int) or isinstance(value, bool):
                raise TlogError(f"tile {what} is not an integer")
        if not (self.level == ENTRY_BUNDLE or 0 <= self.level <= MAX_TILE_LEVEL):
            raise TlogError(f"tile level {self.level} is outside 0..{MAX_TILE_LEVEL}")
        if not 1 <= self.width <= TILE_WIDTH:
            raise TlogError(f"tile width {self.width} is outside 1..{TILE_WIDTH}")
        if self.index < 0 or self.start > MAX_TREE_SIZE:
            raise TlogError(f"tile index {self.index} is outside any tree of at most 2^63-1 leaves")

    @property
    def start(self) -> int:
        """The first leaf index the tile spans (tlog-tiles "start index")."""
        return self.index << (TILE_HEIGHT * (max(self.level, 0) + 1))

    @property
    def path(self) -> str:
        groups = []
        n = self.index
        while True:
            groups.append(f"{n % 1000:03d}")
            n //= 1000
            if n == 0:
                break
        digits = "/".join([f"x{g}" for g in reversed(groups[1:])] + [groups[0]])
        level = "entries" if self.level == ENTRY_BUNDLE else str(self.level)
        partial = f".p/{self.width}" if self.width < TILE_WIDTH else ""
        return f"tile/{level}/{digits}{partial}"


def parse_tile_path(path: str) -> Tile:
    """The tile a path names; only the one spelling :attr:`Tile.path` writes is accepted."""
    if not isinstance(path, str) or len(path) > _MAX_PATH:
        raise TlogError("not a tile path")
    parts = path.split("/")
    if len(parts) < 3 or parts[0] != "tile":
        raise TlogError(f"{path!r} is not a tile path (tile/<L>/<N>[.p/<W>])")
    if parts[1] == "entries":
        level = ENTRY_BUNDLE
    elif _LEVEL.fullmatch(parts[1]):
        level = int(parts[1])
    else:
        raise TlogError(f"tile path {path!r} has a bad level {parts[1]!r}")
    digits = parts[2:]
    width = TILE_WIDTH
    if len(digits) >= 2 and digits[-2].endswith(".p"):
        if not _WIDTH.fullmatch(digits[-1]) or int(digits[-1]) >= TILE_WIDTH:
            raise TlogError(f"tile path {path!r} has a bad partial width {digits[-1]!r}")
        width = int(digits[-1])
        digits = [*digits[:-2], digits[-2][: -len(".p")]]
    if not _LAST.fullmatch(digits[-1]) or not all(_GROUP.fullmatch(g) for g in digits[:-1]):
        raise TlogError(f"tile path {path!r} has a bad index (3-digit groups, all but the last with 'x')")
    index = 0
    for g in digits:
        index = index * 1000 + int(g.lstrip("x"))
    tile = Tile(level, index, width)
    if tile.path != path:  # e.g. x000/001: a leading zero group has another spelling
        raise TlogError(f"tile path {path!r} is not in canonical form ({tile.path!r})")
    return tile


def new_tiles(old_size: int, new_size: int) -> list[Tile]:
    """The hash tiles to publish when the tree grows from ``old_size`` to ``new_size`` leaves: every tile
    that is new or wider, lowest level first. (Their entry bundles: :func:`new_entry_bundles`.)"""
    for what, value in (("old tree size", old_size), ("new tree size", new_size)):
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_TREE_SIZE:
            raise TlogError(f"{what} is not an integer in 0..2^63-1")
    if old_size > new_size:
        raise TlogError(f"tree size {new_size} is smaller than the earlier tree size {old_size}")
    tiles = []
    level = 0
    while new_size >> (TILE_HEIGHT * level) > 0:
        old_n = old_size >> (TILE_HEIGHT * level)  # hashes at stored level 8·level
        new_n = new_size >> (TILE_HEIGHT * level)
        if old_n != new_n:
            tiles += [Tile(level, n) for n in range(old_n >> TILE_HEIGHT, new_n >> TILE_HEIGHT)]
            if new_n % TILE_WIDTH:
                tiles.append(Tile(level, new_n >> TILE_HEIGHT, new_n % TILE_WIDTH))
        level += 1
    return tiles


def new_entry_bundles(old_size: int, new_size: int) -> list[Tile]:
    """The entry bundles to publish when the tree grows from ``old_size`` to ``new_size``: one for each
    new or wider level-0 tile."""
    return [Tile(ENTRY_BUNDLE, t.index, t.width) for t in new_tiles(old_size, new_size) if t.level == 0]


def read_tile(tile: Tile, read_hashes: HashReader) -> bytes:
    """The bytes of a hash tile: its ``width`` stored hashes, concatenated, read in one call."""
    if tile.level == ENTRY_BUNDLE:
        raise TlogError("an entry bundle holds entries, not hashes: use entry_bundle")
    first = tile.index << TILE_HEIGHT
    level = TILE_HEIGHT * tile.level
    return b"".join(
        read_stored(read_hashes, [stored_hash_index(level, first + i) for i in range(tile.width)])
    )


def parse_hash_tile(data: bytes, tile: Tile) -> list[bytes]:
    """The hashes in the bytes of ``tile``: exactly ``width`` of them."""
    if tile.level == ENTRY_BUNDLE:
        raise TlogError("an entry bundle holds entries, not hashes: use parse_entry_bundle")
    if len(data) != tile.width * HASH_SIZE:
        raise TlogError(f"{tile.path} is {len(data)} bytes, not {tile.width} hashes of {HASH_SIZE}")
    return [data[i : i + HASH_SIZE] for i in range(0, len(data), HASH_SIZE)]


def entry_bundle(entries: Sequence[bytes]) -> bytes:
    """An entry bundle: each entry as a big-endian uint16 length and its bytes."""
    if not 1 <= len(entries) <= TILE_WIDTH:
        raise TlogError(f"an entry bundle holds 1 to {TILE_WIDTH} entries, not {len(entries)}")
    out = bytearray()
    for i, entry in enumerate(entries):
        if len(entry) > MAX_ENTRY_SIZE:
            raise TlogError(f"entry {i} is {len(entry)} bytes; a bundle entry is at most {MAX_ENTRY_SIZE}")
        out += len(entry).to_bytes(2, "big") + entry
    return bytes(out)


def parse_entry_bundle(data: bytes, width: int | None = None) -> list[bytes]:
    """The entries in an entry bundle; with ``width``, exactly that many are required."""
    entries: list[bytes] = []
    at = 0
    while at < len(data):
        if len(entries) == TILE_WIDTH:
            raise TlogError(f"entry bundle holds more than {TILE_WIDTH} entries")
        if at + 2 > len(data):
            raise TlogError(f"entry bundle is truncated in the length of entry {len(entries)}")
        size = int.from_bytes(data[at : at + 2], "big")
        if at + 2 + size > len(data):
            raise TlogError(f"entry bundle is truncated in entry {len(entries)} ({size} bytes announced)")
        entries.append(bytes(data[at + 2 : at + 2 + size]))
        at += 2 + size
    if not entries:
        raise TlogError("entry bundle is empty")
    if width is not None and len(entries) != width:
        raise TlogError(f"entry bundle holds {len(entries)} entries, expected {width}")
    return entries
