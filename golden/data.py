"""Training corpus: the King James Bible from Debian's `bible-kjv` packages.

    python -m bitlane.golden.data [--out data/kjv] [--vocab-size 4096]
    python -m bitlane.golden.data --corpus english [--out data/english]   # multi-source: golden/corpus.py

fetches the two Debian packages with `apt-get download` (running
`apt-get update` once if apt has no package lists yet), unpacks them with
`dpkg -x` into `<out>/debs/` (never into `/`), and runs the packaged `bible`
program to print every verse.  The text of the Authorized (King James) Version
of 1611 is in the public domain; the `bible` program is GPL-2+ (we only run it,
we do not ship it).

The corpus is then split by chapter, fixed and deterministic: every 20th
chapter (counted across the whole Bible, 1,189 chapters) is validation, so the
validation set samples all books and shares no verse with training.  A
byte-level BPE tokenizer is trained on the training split only, and both
splits are encoded to flat uint16 token files:

    <out>/train.txt, val.txt      one verse per line, references stripped
    <out>/tokenizer.json          byte-level BPE (Hugging Face `tokenizers`)
    <out>/train.bin, val.bin      uint16 token ids; each verse ends in "\\n"
    <out>/meta.json               sizes, vocabulary, sha256 of every file
"""
from __future__ import annotations

import argparse
import hashlib
import json
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

DEBIAN_PACKAGES = ("bible-kjv", "bible-kjv-text")
VALIDATION_EVERY = 20  # every 20th chapter goes to validation
VALIDATION_OFFSET = 10  # ... starting with chapter 10, so Genesis 1 stays in training
EOS_TOKEN = "<|endoftext|>"
VERSES_IN_KJV = 31102

# `bible -f` prints one verse per line: "Ge1:1 In the beginning ...".
VERSE_LINE = re.compile(r"^(?P<book>[1-3]?[A-Za-z]+)(?P<chapter>\d+):(?P<verse>\d+) (?P<text>.+)$")


class CorpusError(RuntimeError):
    """Fetching or parsing the corpus failed; the message says which step and file."""


@dataclass(frozen=True)
class Verse:
    book: str
    chapter: int
    verse: int
    text: str


def _run(cmd: list[str], cwd: Path | None = None) -> str:
    try:
        done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False)
    except FileNotFoundError as exc:
        raise CorpusError(f"cannot run {cmd[0]!r}: {exc}; this step needs Debian's apt-get and dpkg") from exc
    if done.returncode != 0:
        raise CorpusError(f"{' '.join(cmd)} failed with exit code {done.returncode}:\n{done.stderr.strip()}")
    return done.stdout


def fetch_debs(deb_dir: Path) -> list[Path]:
    """Download the Debian packages into deb_dir (once) and return their paths."""
    deb_dir.mkdir(parents=True, exist_ok=True)
    found = [next(iter(sorted(deb_dir.glob(f"{name}_*.deb"))), None) for name in DEBIAN_PACKAGES]
    if all(found):
        return found  # type: ignore[return-value]
    try:
        _run(["apt-get", "download", *DEBIAN_PACKAGES], cwd=deb_dir)
    except CorpusError:
        # A fresh machine has no package lists yet: fetch them once and retry.
        _run(["apt-get", "update"])
        _run(["apt-get", "download", *DEBIAN_PACKAGES], cwd=deb_dir)
    debs = [next(iter(sorted(deb_dir.glob(f"{name}_*.deb"))), None) for name in DEBIAN_PACKAGES]
    missing = [name for name, deb in zip(DEBIAN_PACKAGES, debs) if deb is None]
    if missing:
        raise CorpusError(f"apt-get download left no .deb for {missing} in {deb_dir}")
    return debs  # type: ignore[return-value]


def print_bible(deb_dir: Path) -> str:
    """Unpack the packages under deb_dir/root and let `bible` print all verses."""
    root = deb_dir / "root"
    for deb in fetch_debs(deb_dir):
        _run(["dpkg", "-x", str(deb), str(root)])
    program = root / "usr/bin/bible"
    data_dir = root / "usr/lib"
    if not (data_dir / "bible.data").is_file():
        raise CorpusError(f"{data_dir / 'bible.data'} missing after unpacking {DEBIAN_PACKAGES}")
    # -f: formatting off (one verse per line); -p: where bible.data lies.
    return _run([str(program), "-f", "-p", str(data_dir), "gen1:1-rev22:21"])


def parse_verses(text: str, expected: int = VERSES_IN_KJV) -> list[Verse]:
    """Parse `bible -f` output into verses, checking that all `expected` verses came through."""
    verses = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        match = VERSE_LINE.match(line)
        if match is None:
            raise CorpusError(f"bible output line {number} is not 'BookC:V text': {line[:80]!r}")
        verses.append(Verse(match["book"], int(match["chapter"]), int(match["verse"]),
                            " ".join(match["text"].split())))
    if len(verses) != expected:
        raise CorpusError(f"bible printed {len(verses)} verses, expected {expected}")
    return verses


def split_by_chapter(verses: list[Verse]) -> tuple[list[str], list[str]]:
    """Fixed split: every VALIDATION_EVERY-th chapter of the whole Bible is validation."""
    train: list[str] = []
    val: list[str] = []
    chapter_index = -1
    previous: tuple[str, int] | None = None
    for verse in verses:
        if (verse.book, verse.chapter) != previous:
            chapter_index += 1
            previous = (verse.book, verse.chapter)
        target = val if chapter_index % VALIDATION_EVERY == VALIDATION_OFFSET else train
        target.append(verse.text)
    return train, val


def train_tokenizer(train_file: Path, vocab_size: int) -> Tokenizer:
    """Byte-level BPE on the training split only (no unknown tokens possible)."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train([str(train_file)], trainer)
    return tokenizer


def encode_lines(tokenizer: Tokenizer, lines: list[str]) -> np.ndarray:
    """Token ids of the lines, each followed by its newline, as one flat uint16 array."""
    if tokenizer.get_vocab_size() > np.iinfo(np.uint16).max + 1:
        raise CorpusError(f"vocabulary of {tokenizer.get_vocab_size()} does not fit uint16 token files")
    ids = [token for encoding in tokenizer.encode_batch([line + "\n" for line in lines]) for token in encoding.ids]
    return np.asarray(ids, dtype=np.uint16)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def prepare(out: Path, vocab_size: int = 4096) -> dict:
    """Build every file of the corpus under out and return the metadata written to meta.json."""
    out.mkdir(parents=True, exist_ok=True)
    verses = parse_verses(print_bible(out / "debs"))
    train, val = split_by_chapter(verses)
    (out / "train.txt").write_text("".join(line + "\n" for line in train), encoding="utf-8")
    (out / "val.txt").write_text("".join(line + "\n" for line in val), encoding="utf-8")
    tokenizer = train_tokenizer(out / "train.txt", vocab_size)
    tokenizer.save(str(out / "tokenizer.json"))
    train_ids = encode_lines(tokenizer, train)
    val_ids = encode_lines(tokenizer, val)
    train_ids.tofile(out / "train.bin")
    val_ids.tofile(out / "val.bin")
    meta = {
        "source": "Debian packages " + ", ".join(DEBIAN_PACKAGES) + " (King James Version, public domain)",
        "split": f"chapter index % {VALIDATION_EVERY} == {VALIDATION_OFFSET} -> validation",
        "vocab_size": tokenizer.get_vocab_size(),
        "eos_token": EOS_TOKEN,
        "verses": {"train": len(train), "val": len(val)},
        "tokens": {"train": int(train_ids.size), "val": int(val_ids.size)},
        "bytes": {"train": (out / "train.txt").stat().st_size, "val": (out / "val.txt").stat().st_size},
        "sha256": {name: _sha256(out / name)
                   for name in ("train.txt", "val.txt", "tokenizer.json", "train.bin", "val.bin")},
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    shutil.rmtree(out / "debs" / "root")  # the unpacked packages are no longer needed
    return meta


def load_tokens(data_dir: Path, split: str) -> np.ndarray:
    """The uint16 token file of a split ("train" or "val") written by prepare()."""
    path = Path(data_dir) / f"{split}.bin"
    if not path.is_file():
        raise CorpusError(f"{path} not found: run `python -m bitlane.golden.data --out {data_dir}` first")
    return np.fromfile(path, dtype=np.uint16)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", choices=["kjv", "english"], default="kjv",
                        help="kjv: the King James Bible (the shipped bitnet-kjv models); english: the "
                             "multi-source corpus of golden/corpus.py (default: kjv)")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: data/<corpus>)")
    parser.add_argument("--vocab-size", type=int, default=4096, help="BPE vocabulary size (default: 4096)")
    args = parser.parse_args(argv)
    out = args.out or Path("data") / args.corpus
    try:
        if args.corpus == "english":
            from .corpus import prepare_english

            meta = prepare_english(out, args.vocab_size)
            keys = ("vocab_size", "sources", "tokens", "bytes")
        else:
            meta = prepare(out, args.vocab_size)
            keys = ("vocab_size", "verses", "tokens", "bytes")
    except CorpusError as e:
        raise SystemExit(f"golden.data: {e}") from None
    print(json.dumps({key: meta[key] for key in keys}, indent=2))


if __name__ == "__main__":
    main()
