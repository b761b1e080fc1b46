"""The trained BitNet b1.58 models shipped in models/ (golden/train.py on the KJV and the multi-source
English corpus, docs/training.md).

The greedy continuations below were recorded from the shipped weights when they were trained
(they are also in the run's result.json); they pin the weights, the tokenizer and the golden
integer path together. The comparison with transformers' BitNetForCausalLM is computed here.
"""
import json
from pathlib import Path

import pytest
import torch

from bitlane import golden

MODELS = Path(__file__).resolve().parent.parent / "models"

# model folder -> (prompt, greedy continuation up to and including the first newline, or 40 tokens)
GREEDY = {
    "bitnet-kjv-h256": [("And Jesus said unto them,", " What shall ye do unto you?\n"),
                        ("The LORD is my shepherd;", " and I will not hear my face.\n")],
    "bitnet-kjv-h128": [("And Jesus said unto them,", " Ye are ye not able to do all things.\n")],
    "bitnet-english-h512": [("It is a truth universally acknowledged", " to be a very good-willing man.\n"),
                            ("The LORD is my shepherd;", " and I will not be my people.\n")],
}
# ternary weights per decoder layer: 4 attention projections (h x h) + gate, up, down (h x i each)
SHAPES = {"bitnet-kjv-h256": (256, 768, 4), "bitnet-kjv-h128": (128, 384, 4),
          "bitnet-english-h512": (512, 1536, 7)}


@pytest.fixture(scope="module", params=sorted(GREEDY))
def shipped(request):
    path = MODELS / request.param
    return request.param, path, golden.load_model(path), golden.load_tokenizer(path)


def test_shape_and_trit_count(shipped):
    name, path, model, tokenizer = shipped
    hidden, intermediate, layers = SHAPES[name]
    config = json.loads((path / "config.json").read_text())
    assert (config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"]) == SHAPES[name]
    assert tokenizer.get_vocab_size() == config["vocab_size"] == 4096
    assert model.config.bos_token_id is None and model.config.eos_token_id == tokenizer.token_to_id("<|endoftext|>")
    per_layer = 4 * hidden * hidden + 3 * hidden * intermediate
    assert model.num_parameters()["ternary"] == layers * per_layer
    for _, layer in model.bitlinear_layers():
        assert set(layer.trits.unique().tolist()) == {-1, 0, 1}


def test_greedy_continuation(shipped):
    name, _, model, tokenizer = shipped
    newline = tokenizer.token_to_id("Ċ")
    for prompt, expected in GREEDY[name]:
        new = golden.generate(model, tokenizer.encode(prompt).ids, 40, greedy=True, eos_token_ids={newline})
        assert tokenizer.decode(new) == expected, prompt


def test_logits_match_transformers(shipped):
    transformers = pytest.importorskip("transformers")
    _, path, model, tokenizer = shipped
    hf = transformers.BitNetForCausalLM.from_pretrained(path, dtype=torch.float32,
                                                        attn_implementation="eager").eval()
    assert type(hf.model.layers[0].self_attn.q_proj).__name__ == "BitLinear"  # packed ternary, not dense
    ids = torch.tensor([tokenizer.encode("In the beginning God created the heaven and the earth. "
                                         "And the earth was without form, and void;").ids])
    with torch.no_grad():
        expected = hf(ids).logits
        got = model(ids)
    assert got.shape == expected.shape
    assert (got - expected).abs().max().item() <= 1e-4
