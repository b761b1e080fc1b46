"""golden/train.py on a tiny made-up corpus, on the CPU: the loss falls, a resumed run equals an
uninterrupted one bit for bit, and the exported ternary model loads and matches training."""
import dataclasses
import json
import math
import random

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from bitlane import golden
from bitlane.golden.data import EOS_TOKEN, encode_lines, train_tokenizer
from bitlane.golden.train import TrainConfig, TrainError, evaluate, schedule, train

SUBJECTS = ["the king", "the people", "my son", "the prophet", "his servants", "the children"]
VERBS = ["went up to", "spake unto", "came into", "dwelt in", "looked upon", "departed from"]
OBJECTS = ["the city", "the house of the LORD", "the wilderness", "Jerusalem", "the mountain", "the sea"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A data folder as golden.data writes it, from 2,000 sentences of a small grammar."""
    rng = random.Random(0)
    lines = [f"And {rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)}." for _ in range(2000)]
    out = tmp_path_factory.mktemp("corpus")
    (out / "train.txt").write_text("".join(line + "\n" for line in lines[:1800]))
    tokenizer = train_tokenizer(out / "train.txt", vocab_size=320)
    tokenizer.save(str(out / "tokenizer.json"))
    encode_lines(tokenizer, lines[:1800]).tofile(out / "train.bin")
    encode_lines(tokenizer, lines[1800:]).tofile(out / "val.bin")
    (out / "meta.json").write_text(json.dumps({"vocab_size": tokenizer.get_vocab_size(), "eos_token": EOS_TOKEN}))
    return out


def tiny(corpus, out, **changes) -> TrainConfig:
    return dataclasses.replace(TrainConfig(
        data=str(corpus), out=str(out), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, seq_len=32, batch_size=8, steps=60, warmup=5, lr=1e-2, log_every=1,
        eval_every=30, save_every=1000, device="cpu"), **changes)


@pytest.mark.parametrize("linear", ["bitlinear", "float"])
def test_loss_falls(corpus, tmp_path, linear):
    result = train(tiny(corpus, tmp_path, linear=linear))
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    first_loss = next(r["loss"] for r in log if "loss" in r)
    assert first_loss > math.log(320) - 0.5  # starts near uniform over the vocabulary
    assert result["val_loss"] < first_loss - 2.0
    assert result["val_perplexity"] == pytest.approx(math.exp(result["val_loss"]))
    assert [r["step"] for r in log if "val_loss" in r] == [30, 60]


def test_resume_is_bit_exact(corpus, tmp_path):
    straight = train(tiny(corpus, tmp_path / "straight", steps=12))
    stopped = train(tiny(corpus, tmp_path / "resumed", steps=12, time_limit=1e-9))
    assert stopped == {"stopped_at_step": 1}
    resumed = train(tiny(corpus, tmp_path / "resumed", steps=12))
    assert resumed["val_loss"] == straight["val_loss"]
    a = load_file(tmp_path / "straight" / "hf" / "model.safetensors")
    b = load_file(tmp_path / "resumed" / "hf" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_resume_refuses_another_configuration(corpus, tmp_path):
    train(tiny(corpus, tmp_path, steps=4, time_limit=1e-9))
    with pytest.raises(TrainError, match="another configuration"):
        train(tiny(corpus, tmp_path, steps=4, lr=1e-3))


def test_exported_model_is_the_trained_model(corpus, tmp_path):
    """The packed export, loaded by golden.load_model, has the validation loss that training reported."""
    cfg = tiny(corpus, tmp_path, steps=20)
    result = train(cfg)
    model = golden.load_model(tmp_path / "hf")
    val = evaluate(model, np.fromfile(corpus / "val.bin", dtype=np.uint16), cfg)
    assert val == pytest.approx(result["val_loss"], abs=1e-5)
    assert golden.load_tokenizer(tmp_path / "hf").get_vocab_size() == 320


def test_schedules():
    ternary = TrainConfig(linear="bitlinear", steps=1000, warmup=100, lr=1.0, weight_decay=0.1)
    assert schedule(ternary, 99) == pytest.approx((1.0 * (1 - 0.2 * 99 / 500), 0.1 * 0.5 * (1 + math.cos(math.pi * 99 / 500))))
    assert schedule(ternary, 499)[0] > 0.8 and schedule(ternary, 500) == (pytest.approx(0.4), 0.0)  # cooldown drop
    assert schedule(ternary, 999)[0] == pytest.approx(0.4 / 500)
    baseline = TrainConfig(linear="float", steps=1000, warmup=100, lr=1.0, weight_decay=0.1)
    assert schedule(baseline, 0) == (pytest.approx(0.01), 0.1)
    assert schedule(baseline, 99) == (pytest.approx(1.0), 0.1)
    assert schedule(baseline, 1000)[0] == pytest.approx(0.1)


def test_bible_output_parsing_and_chapter_split():
    """golden.data on `bible -f`-style output (the real corpus needs apt, so this is made up)."""
    from bitlane.golden.data import CorpusError, parse_verses, split_by_chapter

    lines = [f"{book}{chapter}:{verse} Verse {verse} of {book} {chapter}."
             for book in ("Ge", "1Ki") for chapter in range(1, 21) for verse in range(1, 4)]
    verses = parse_verses("\n".join(lines) + "\n", expected=120)
    assert (verses[60].book, verses[60].chapter, verses[60].verse) == ("1Ki", 1, 1)
    train_lines, val_lines = split_by_chapter(verses)
    # chapters 0..39 overall; indices 10 and 30 (Ge 11 and 1Ki 11) are validation
    assert val_lines == [f"Verse {v} of {b} 11." for b in ("Ge", "1Ki") for v in (1, 2, 3)]
    assert len(train_lines) == 114 and not set(train_lines) & set(val_lines)
    with pytest.raises(CorpusError, match="expected 31102"):
        parse_verses("\n".join(lines))
    with pytest.raises(CorpusError, match="line 2 is not"):
        parse_verses("Ge1:1 In the beginning\nnot a verse\n", expected=2)
