"""golden.corpus and golden.rdata on small made-up inputs (the real corpus needs apt, npm and pip)."""
import gzip
import struct
import zlib

from bitlane.golden.corpus import clean_gcide, detokenize_brown, split_units
from bitlane.golden.rdata import read_lazyload_db, unserialize


def _int(n):
    return struct.pack(">i", n)


def _charsxp(s):
    b = s.encode()
    return _int(0x00040009) + _int(len(b)) + b


def _strsxp(items):
    return _int(16) + _int(len(items)) + b"".join(_charsxp(s) for s in items)


def _header():
    return b"X\n" + _int(3) + _int(0x040201) + _int(0x030500) + _int(5) + b"UTF-8"


def test_unserialize_named_list_of_strings():
    # list(a = c("x", "y")): VECSXP with attributes (names)
    body = (_int(19 | (1 << 9)) + _int(1) + _strsxp(["x", "y"])
            + _int(2 | (1 << 10)) + _int(1) + _charsxp("names") + _strsxp(["a"]) + _int(254))
    obj = unserialize(gzip.compress(_header() + body))
    assert obj == [["x", "y"]] and obj.named() == {"a": ["x", "y"]}


def test_lazyload_db(tmp_path):
    entry = _header() + _strsxp(["It is a truth", "universally acknowledged"])
    blob = struct.pack(">I", len(entry)) + zlib.compress(entry)
    (tmp_path / "Rdata.rdb").write_bytes(blob)
    # index: list(variables = list(novel = c(0L, len)), references = list(), compressed = TRUE)
    offsets = _int(13) + _int(2) + _int(0) + _int(len(blob))
    variables = (_int(19 | (1 << 9)) + _int(1) + offsets
                 + _int(2 | (1 << 10)) + _int(1) + _charsxp("names") + _strsxp(["novel"]) + _int(254))
    index = (_int(19 | (1 << 9)) + _int(1) + variables
             + _int(2 | (1 << 10)) + _int(1) + _charsxp("names") + _strsxp(["variables"]) + _int(254))
    (tmp_path / "Rdata.rdx").write_bytes(gzip.compress(_header() + index))
    assert read_lazyload_db(tmp_path / "Rdata") == {"novel": ["It is a truth", "universally acknowledged"]}


def test_detokenize_brown():
    tagged = "The/at jury/nn said/vbd ,/, ``/`` it/pps is/bez n't/* so/rb ''/'' (/( twice/rb )/) ./."
    assert detokenize_brown(tagged) == 'The jury said, "it isn\'t so" (twice).'


def test_clean_gcide():
    raw = 'Affatuate \\Af*fat"u*ate\\, v. t. [L. ad + fatuus foolish.] To infatuate. [Obs.] --Milton. [1913 Webster]'
    assert clean_gcide(raw) == "Affatuate v. t. [L. ad + fatuus foolish.] To infatuate. [Obs.] --Milton."
    assert clean_gcide("See {Afeard}. [=a]b") == "See Afeard. ab"


def test_split_units_is_fixed():
    units = [[f"u{i}"] for i in range(45)]
    train, val = split_units(units)
    assert val == ["u10", "u30"] and len(train) == 43
