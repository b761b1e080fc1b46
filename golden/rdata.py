"""Read R's serialization format (XDR, versions 2 and 3) and lazy-load databases without R.

Enough of the format for the data of CRAN packages as Debian ships them (`r-cran-*`):
`data/Rdata.rdx` is a gzip-compressed serialized index (a named list of variables, each an
integer pair: offset and length into `Rdata.rdb`); each `.rdb` entry is a 4-byte big-endian
uncompressed length followed by a zlib stream (or a type byte, then zlib/bzip2/xz) holding one
serialized object.

    from bitlane.golden.rdata import read_lazyload_db
    objects = read_lazyload_db(Path(".../janeaustenr/data/Rdata"))   # {"emma": [...lines...], ...}

Vectors come back as Python lists (strings as `str`, NA as None), pairlists and attributes as
dicts; environments, closures and bytecode are not needed for data and raise RDataError.
"""
from __future__ import annotations

import bz2
import gzip
import lzma
import struct
import zlib
from pathlib import Path


class RDataError(ValueError):
    """The bytes are not R serialization this reader understands (the message says where)."""


NILSXP, SYMSXP, LISTSXP, CLOSXP, ENVSXP, PROMSXP, LANGSXP = 0, 1, 2, 3, 4, 5, 6
CHARSXP, LGLSXP, INTSXP, REALSXP, CPLXSXP, STRSXP, VECSXP, EXPRSXP, RAWSXP = 9, 10, 13, 14, 15, 16, 19, 20, 24
REFSXP, NILVALUE_SXP, GLOBALENV_SXP, EMPTYENV_SXP, BASEENV_SXP = 255, 254, 253, 242, 241
NA_INTEGER = -2**31


class RList(list):
    """An R vector/list with its attributes (names, class, ...) in `.attributes`."""

    attributes: dict

    def __init__(self, items=(), attributes=None):
        super().__init__(items)
        self.attributes = attributes or {}

    def named(self) -> dict:
        names = self.attributes.get("names")
        if names is None or len(names) != len(self):
            raise RDataError("list has no names attribute")
        return dict(zip(names, self))


class _Reader:
    def __init__(self, data: bytes):
        self.data, self.pos, self.refs = data, 0, []

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise RDataError(f"truncated at byte {self.pos} (wanted {n} more)")
        chunk = self.data[self.pos:self.pos + n]
        self.pos += n
        return chunk

    def int(self) -> int:
        return struct.unpack(">i", self.take(4))[0]

    def length(self) -> int:
        n = self.int()
        if n == -1:
            hi, lo = self.int(), self.int()
            n = (hi << 32) + lo
        return n

    def header(self) -> None:
        if self.take(2) != b"X\n":
            raise RDataError("not XDR serialization (expected 'X\\n')")
        version = self.int()
        self.int(), self.int()  # writer's R version, minimal reader version
        if version == 3:
            self.take(self.int())  # native encoding name
        elif version != 2:
            raise RDataError(f"serialization version {version} not supported")

    def attributes(self) -> dict:
        pairs = self.item()
        return pairs if isinstance(pairs, dict) else {}

    def item(self):
        flags = self.int()
        kind, has_attr, has_tag = flags & 0xFF, bool(flags & (1 << 9)), bool(flags & (1 << 10))
        if kind == NILVALUE_SXP:
            return None
        if kind in (GLOBALENV_SXP, EMPTYENV_SXP, BASEENV_SXP):
            return None
        if kind == REFSXP:
            index = flags >> 8 or self.int()
            return self.refs[index - 1]
        if kind == SYMSXP:
            name = self.item()
            self.refs.append(name)
            return name
        if kind == CHARSXP:
            n = self.int()
            return None if n == -1 else self.take(n).decode("utf-8", errors="replace")
        if kind in (LISTSXP, LANGSXP):
            out: dict = {}
            index = 0
            while True:  # a pairlist: attr?, tag?, car, cdr (iterated while the cdr is a pairlist)
                attrs = self.attributes() if has_attr else {}
                tag = self.item() if has_tag else None
                out[tag if tag is not None else index] = self.item()
                del attrs
                index += 1
                flags = self.int()
                kind, has_attr, has_tag = flags & 0xFF, bool(flags & (1 << 9)), bool(flags & (1 << 10))
                if kind == NILVALUE_SXP:
                    return out
                if kind not in (LISTSXP, LANGSXP):
                    self.pos -= 4
                    out["..cdr"] = self.item()
                    return out
        if kind in (LGLSXP, INTSXP):
            n = self.length()
            values = [None if v == NA_INTEGER else v for v in struct.unpack(f">{n}i", self.take(4 * n))]
        elif kind == REALSXP:
            n = self.length()
            values = list(struct.unpack(f">{n}d", self.take(8 * n)))
        elif kind == RAWSXP:
            values = self.take(self.length())
        elif kind in (STRSXP, VECSXP, EXPRSXP):
            values = [self.item() for _ in range(self.length())]
        else:
            raise RDataError(f"R object type {kind} at byte {self.pos - 4} is not supported")
        return RList(values, self.attributes() if has_attr else None) if not isinstance(values, bytes) else values


def unserialize(data: bytes):
    """One R object from serialized bytes (optionally gzip-compressed, as saveRDS writes)."""
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    reader = _Reader(data)
    reader.header()
    return reader.item()


def _decompress_entry(blob: bytes) -> bytes:
    """One lazy-load database entry: 4-byte length, then zlib (or a type byte + stream)."""
    expected = struct.unpack(">I", blob[:4])[0]
    body = blob[4:]
    if body[:1] == b"Z":
        raw = zlib.decompress(body[1:])
    elif body[:1] == b"2":
        raw = bz2.decompress(body[1:])
    elif body[:1] == b"X":
        raw = lzma.decompress(body[1:])
    elif body[:1] == b"0":
        raw = body[1:]
    else:
        raw = zlib.decompress(body)
    if len(raw) != expected:
        raise RDataError(f"entry decompressed to {len(raw)} bytes, header says {expected}")
    return raw


def read_lazyload_db(stem: Path) -> dict:
    """{variable name: object} of an R lazy-load database `<stem>.rdx` + `<stem>.rdb`."""
    stem = Path(stem)
    index = unserialize((stem.with_suffix(".rdx")).read_bytes())
    if not isinstance(index, RList):
        raise RDataError(f"{stem}.rdx: index is not a list")
    variables = index.named()["variables"].named()
    db = stem.with_suffix(".rdb").read_bytes()
    out = {}
    for name, (offset, length) in variables.items():
        out[name] = unserialize(_decompress_entry(db[offset:offset + length]))
    return out
