"""Generation: KV cache vs recomputation, sampling options, seeds, stopping, streaming."""
import pytest
import torch

from bitlane import golden


@pytest.fixture(scope="module")
def model(make_checkpoint):
    return golden.load_model(make_checkpoint(seed=11, tie_word_embeddings=False, hidden_act="silu"))


def test_cache_and_recompute_give_same_tokens(model):
    prompt = [256, 72, 101, 108, 108, 111]
    for options in (dict(greedy=True), dict(temperature=0.9, top_k=50, seed=3)):
        with_cache = golden.generate(model, prompt, 40, eos_token_ids=set(), **options)
        without = golden.generate(model, prompt, 40, eos_token_ids=set(), use_cache=False, **options)
        assert with_cache == without and len(with_cache) == 40


def test_cached_logits_close_to_full_forward(model):
    ids = torch.randint(0, 300, (1, 30), generator=torch.Generator().manual_seed(1))
    cache = model.new_cache()
    with torch.no_grad():
        full = model(ids)
        stepped = torch.cat([model(ids[:, :10], cache=cache)] + [model(ids[:, t:t + 1], cache=cache)
                                                                  for t in range(10, 30)], dim=1)
    torch.testing.assert_close(stepped, full, rtol=0, atol=1e-4)


def test_seeded_sampling_is_reproducible_and_varies_with_seed(model):
    runs = {seed: golden.generate(model, [1, 2, 3], 30, seed=seed, eos_token_ids=set()) for seed in (0, 0, 1)}
    assert golden.generate(model, [1, 2, 3], 30, seed=0, eos_token_ids=set()) == runs[0]
    assert runs[0] != runs[1]


def test_top_k_1_and_tiny_top_p_and_zero_temperature_are_greedy(model):
    greedy = golden.generate(model, [5, 6], 20, greedy=True, eos_token_ids=set())
    for options in (dict(top_k=1), dict(top_p=1e-6), dict(temperature=0.0)):
        assert golden.generate(model, [5, 6], 20, seed=9, eos_token_ids=set(), **options) == greedy


def test_sample_next_respects_top_k_and_top_p():
    logits = torch.tensor([0.0, 3.0, 2.9, -1.0, 2.0])  # probabilities .021 .427 .386 .008 .157
    gen = torch.Generator().manual_seed(0)
    top_k = {golden.sample_next(logits, top_k=2, generator=gen) for _ in range(300)}
    assert top_k == {1, 2}
    # nucleus: the most likely tokens until their mass reaches top_p (1 and 2 hold .813)
    assert {golden.sample_next(logits, top_p=0.8, generator=gen) for _ in range(300)} == {1, 2}
    assert {golden.sample_next(logits, top_p=0.85, generator=gen) for _ in range(300)} == {1, 2, 4}
    assert golden.sample_next(logits, greedy=True) == 1


def test_stops_on_eos_and_streams_in_order(model):
    greedy = golden.generate(model, [7], 30, greedy=True, eos_token_ids=set())
    eos = greedy[4]
    seen = []
    out = golden.generate(model, [7], 30, greedy=True, eos_token_ids={eos}, on_token=seen.append)
    assert out == seen == greedy[: greedy.index(eos) + 1]
    stream = golden.generate_stream(model, [7], 3, greedy=True, eos_token_ids=set())
    assert next(stream) == greedy[0]
    assert list(stream) == greedy[1:3]


def test_stops_at_max_position_embeddings(make_checkpoint):
    small = golden.load_model(make_checkpoint(seed=1, max_position_embeddings=12))
    assert len(golden.generate(small, [1, 2, 3, 4, 5], 100, greedy=True, eos_token_ids=set())) == 7


def test_rejects_bad_prompts(model):
    with pytest.raises(ValueError, match="at least one"):
        golden.generate(model, [], 5)
    with pytest.raises(ValueError, match="0..299"):
        golden.generate(model, [300], 5)


def test_text_streamer_holds_back_partial_utf8_and_prompt_gets_bos():
    tokenizer = golden.byte_level_tokenizer()
    streamer = golden.TextStreamer(tokenizer)
    pieces = [streamer.push(t) for t in "aé€".encode()]  # 1 + 2 + 3 bytes
    assert pieces == ["a", "", "é", "", "", "€"]
    streamer.push(0xE2)  # a lone lead byte stays held back until flush
    assert streamer.flush() == "\ufffd"
    config = golden.BitNetConfig(vocab_size=258, hidden_size=8, intermediate_size=8, num_hidden_layers=1,
                                 num_attention_heads=1, num_key_value_heads=1, bos_token_id=256)
    assert golden.encode_prompt(tokenizer, config, "Hi") == [256, 72, 105]
    no_bos = golden.BitNetConfig(**{**config.__dict__, "bos_token_id": None})
    assert golden.encode_prompt(tokenizer, no_bos, "Hi") == [72, 105]


@pytest.mark.parametrize("prompt,options,message", [
    ([1] * 256, {}, r"a prompt of 256 tokens leaves no room for new ones: .* is 256"),
    ([1], dict(max_new_tokens=-1), r"max_new_tokens = -1: expected >= 0"),
    ([1], dict(temperature=-0.5), r"temperature = -0.5: expected >= 0"),
    ([1], dict(top_k=0), r"top_k = 0: expected >= 1"),
    ([1], dict(top_p=0.0), r"top_p = 0.0: expected in \(0, 1\]"),
    ([1], dict(top_p=1.5), r"top_p = 1.5: expected in \(0, 1\]"),
])
def test_bad_arguments_are_refused_before_the_first_token(model, prompt, options, message):
    with pytest.raises(ValueError, match=message):
        golden.generate_stream(model, prompt, **options)  # raises on the call, not on the first next()
