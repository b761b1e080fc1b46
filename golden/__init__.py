"""Golden model of bitlane: a PyTorch BitNet b1.58 reference whose every BitLinear call can be
compared bit for bit with the accelerator.

    from bitlane import golden
    model = golden.load_model("path/to/checkpoint")       # HF "bitnet" folder, packed or float
    logits = model(input_ids)                              # [B, T] -> [B, T, vocab] float32
    ids = golden.generate(model, prompt_ids, 32, greedy=True)
    with golden.trace(model) as records: model(input_ids)  # int8 q, trits, int32 acc per call
    model.set_int_matmul(fn)                               # route every integer product through fn
"""
from .checkpoint import (CheckpointError, check_checkpoint, config_from_dict, config_to_dict, load_config, load_model,
                         load_tokenizer, pack_trits, save_model, unpack_codes)
from .generate import TextStreamer, encode_prompt, generate, generate_stream, sample_next
from .model import (BitLinear, BitLinearRecord, BitNetConfig, BitNetForCausalLM, IntMatmul, KVCache,
                    default_int_matmul, quantize_activations, quantize_weights)
from .random_model import byte_level_tokenizer, make_random_checkpoint
from .trace import trace

__all__ = [
    "BitLinear", "BitLinearRecord", "BitNetConfig", "BitNetForCausalLM", "CheckpointError", "IntMatmul",
    "KVCache", "TextStreamer", "byte_level_tokenizer", "check_checkpoint", "config_from_dict", "config_to_dict",
    "default_int_matmul", "encode_prompt", "generate", "generate_stream", "load_config", "load_model",
    "load_tokenizer", "make_random_checkpoint", "pack_trits", "quantize_activations", "quantize_weights",
    "sample_next", "save_model", "trace", "unpack_codes",
]
