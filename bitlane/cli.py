"""`bitlane`: generate text with a BitNet b1.58 checkpoint, inspect one, or make a random one.

    bitlane make-model /tmp/tiny --hidden-size 128 --layers 2
    bitlane info --model /tmp/tiny
    bitlane generate --model /tmp/tiny --prompt "In the beginning" --max-new-tokens 32
    bitlane generate --model /tmp/tiny --prompt-ids 1,2,3 --greedy --json
    bitlane generate --model /tmp/tiny --prompt "In the beginning" --backend sim --backend-opt preset=sim
    bitlane bench [driver golden ...]
    bitlane hw ...            (the hardware tools, hw/cli.py)
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

import torch

from bitlane import golden
from bitlane.backends import BACKENDS, OPTIONS_HELP
from bitlane.contract.protocol import BitlaneError

DESCRIPTION = """\
Run BitNet b1.58 language models (ternary weights, int8 activations).
A model is a Hugging Face "bitnet" checkpoint folder: config.json, model.safetensors
(or shards + model.safetensors.index.json), optionally tokenizer.json."""

EXAMPLES = """\
examples:
  bitlane info --model models/bitnet-kjv-h128
  bitlane generate --model models/bitnet-kjv-h128 --prompt "In the beginning" --top-k 40 --seed 0
  bitlane generate --model models/bitnet-kjv-h128 --prompt "In the beginning" --backend sim
  bitlane generate --model DIR --prompt-ids 1,2,3 --greedy --json
  bitlane generate --model models/bitnet-kjv-h128 --prompt "In the beginning" --backend int --greedy
  bitlane perplexity --model models/bitnet-kjv-h128 --backend int data/kjv/val.txt
  bitlane make-model /tmp/tiny --hidden-size 128 --layers 2

Run `bitlane COMMAND --help` for a command's options."""


def _ids(text: str) -> list[int]:
    try:
        return [int(x) for x in text.replace(" ", "").split(",") if x]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated token ids, got {text!r}") from None


def _option(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def _backend_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backend", choices=sorted(BACKENDS), default="golden",
                        help="where the model runs (golden: float model, exact integer products on the CPU; "
                             "int: the integer-only decoder reference of docs/arithmetic.md; model: functional "
                             "model of the accelerator; sim: Verilated gateware; serial: a board)")
    parser.add_argument("--backend-opt", type=_option, action="append", default=[], metavar="KEY=VALUE",
                        help=f"option for a device backend, repeatable: {OPTIONS_HELP}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bitlane", description=DESCRIPTION, epilog=EXAMPLES,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    gen = sub.add_parser("generate", help="generate tokens from a prompt, streamed to stdout",
                         description="Generate text (or token ids) from a prompt. The prompt, then the continuation, "
                                     "stream to stdout as they are produced (without a tokenizer: the new "
                                     "token ids); timing and a device backend's report go to stderr. --json "
                                     "prints one JSON object at the end instead.")
    gen.add_argument("--model", required=True, metavar="DIR", help="checkpoint folder")
    prompt = gen.add_mutually_exclusive_group(required=True)
    prompt.add_argument("--prompt", metavar="TEXT", help="prompt text (needs tokenizer.json; BOS is prepended "
                                                         "when the config has one and the tokenizer did not add it)")
    prompt.add_argument("--prompt-ids", type=_ids, metavar="1,2,3", help="prompt as token ids (no tokenizer needed)")
    gen.add_argument("--max-new-tokens", type=int, default=32, metavar="N", help="stop after N new tokens (32)")
    gen.add_argument("--greedy", action="store_true", help="always take the most likely token")
    gen.add_argument("--temperature", type=float, default=1.0, metavar="T",
                     help="sampling temperature (1.0; 0 = greedy)")
    gen.add_argument("--top-k", type=int, metavar="K", help="sample among the K most likely tokens")
    gen.add_argument("--top-p", type=float, metavar="P", help="sample among the most likely tokens holding mass P")
    gen.add_argument("--seed", type=int, metavar="S", help="random seed: same seed, same tokens")
    _backend_arguments(gen)
    gen.add_argument("--json", action="store_true",
                     help="print one JSON object: prompt_ids, generated_ids, text (with a tokenizer), timing")

    info = sub.add_parser("info", help="shape, parameter counts and memory of a checkpoint",
                          description="Print a checkpoint's shape, its ternary and float parameter counts and "
                                      "the memory they take with trits at 2 bits, after checking config.json "
                                      "against the safetensors headers (tensor names, dtypes, shapes).")
    info.add_argument("--model", required=True, metavar="DIR", help="checkpoint folder")
    info.add_argument("--json", action="store_true", help="print one JSON object")

    make = sub.add_parser("make-model", help="write a random-weight checkpoint of any shape",
                          description="Write a random-weight BitNet checkpoint (packed Hugging Face format, "
                                      "with a byte-level tokenizer.json when vocab-size >= 258) for tests and demos.")
    make.add_argument("dir", metavar="DIR", help="output folder")
    make.add_argument("--hidden-size", type=int, default=64, help="model width (64)")
    make.add_argument("--layers", type=int, default=2, help="decoder layers (2)")
    make.add_argument("--heads", type=int, help="attention heads (default: hidden-size / 32, at least 1)")
    make.add_argument("--kv-heads", type=int, help="key/value heads, < heads for grouped-query attention (= heads)")
    make.add_argument("--intermediate-size", type=int, help="MLP width (default: 8/3 hidden-size, multiple of 4)")
    make.add_argument("--vocab-size", type=int, default=258, help="vocabulary (258 = bytes + <s> + </s>)")
    make.add_argument("--act", choices=["relu2", "silu"], default="relu2",
                      help="MLP activation: relu2 (as bitnet-b1.58-2B-4T) or silu (SwiGLU)")
    make.add_argument("--tie", action="store_true", help="tie the LM head to the embeddings")
    make.add_argument("--max-positions", type=int, default=2048, help="max_position_embeddings (2048)")
    make.add_argument("--seed", type=int, default=0, help="random seed (0)")

    ppl = sub.add_parser("perplexity", help="perplexity of a text file under a model, on any backend",
                         description="Tokenize FILE with the model's tokenizer, score it in consecutive windows of "
                                     "the model's context (each starting with an empty context), and print "
                                     "`perplexity X over N tokens`. Progress goes to stderr. Every backend works, "
                                     "so accuracy is measured where the model actually runs.")
    ppl.add_argument("--model", required=True, metavar="DIR", help="checkpoint folder with tokenizer.json")
    _backend_arguments(ppl)
    ppl.add_argument("--window", type=int, metavar="N", help="tokens per window (default: the model's context)")
    ppl.add_argument("--batch-size", type=int, default=8, metavar="B",
                     help="windows of equal length scored in one call (8)")
    ppl.add_argument("file", metavar="FILE", help="UTF-8 text to score")

    bench = sub.add_parser("bench", help="run the benchmark scripts of bench/ (all, or the named ones)",
                           description="Run bench/NAME_bench.py for each NAME (default: every script there), "
                                       "each printing its figures.",
                           epilog=_bench_list(), formatter_class=argparse.RawDescriptionHelpFormatter)
    bench.add_argument("names", nargs="*", metavar="NAME", help="e.g. driver golden (default: all)")

    load = sub.add_parser("sdram-load", help="put a file into a device's SDRAM, verified by CRC, unless it is there",
                          description="Write FILE into the SDRAM of the device at --device from word --addr with a "
                                      "progress bar (bytes/s), then check the device's CRC-32 of the region. If the "
                                      "device already holds the file there (its CRC matches), nothing is written. "
                                      "A file larger than the SDRAM is refused before anything is written.")
    load.add_argument("file", metavar="FILE", help="the blob to load")
    load.add_argument("--device", required=True, metavar="URL",
                      help="model://ulx3s, sim://ulx3s or serial://DEVICE?baud=3000000 (a ULX3S)")
    load.add_argument("--addr", type=int, default=0, metavar="WORD", help="first 16-bit SDRAM word (0)")
    load.add_argument("--force", action="store_true", help="write even if the device already holds the file")

    sub.add_parser("hw", help="hardware tools (build, program, ...): see `bitlane hw --help`", add_help=False)
    return parser


def print_stream(tokens: Iterable[int], tokenizer, prompt_ids: list[int],
                 show: Callable[[str], str] = str) -> Iterator[int]:
    """Pass `tokens` through while printing them to stdout: the prompt, then the text each token
    completes (without a tokenizer: the new ids). The line is ended however the stream ends, so a
    device report or an error that follows on stderr starts on a line of its own."""
    streamer = golden.TextStreamer(tokenizer) if tokenizer is not None else None
    if streamer is not None:  # the continuation reads on from the prompt
        print(show(tokenizer.decode(prompt_ids, skip_special_tokens=True)), end="", flush=True)
    try:
        for token in tokens:
            print(show(streamer.push(token)) if streamer else f"{token} ", end="", flush=True)
            yield token
    finally:
        print(show(streamer.flush()) if streamer else "", flush=True)


def _utf8_prompt(text: str) -> str:
    """`text` if it is valid Unicode; a prompt of undecodable bytes (argv keeps them as surrogates) is refused."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError as e:
        bad = ord(text[e.start])  # undecodable argv byte b arrives as U+DC00 + b (surrogateescape)
        what = f"byte 0x{bad - 0xDC00:02x}" if 0xDC80 <= bad <= 0xDCFF else f"lone surrogate U+{bad:04X}"
        raise ValueError(f"--prompt is not valid UTF-8 text ({what} at character {e.start}); "
                         "pass UTF-8 text, or token ids with --prompt-ids") from None


def _load(path: str) -> golden.BitNetForCausalLM:
    return golden.load_model(path, progress=sys.stderr.isatty())


def cmd_generate(args: argparse.Namespace) -> int:
    if args.prompt is not None:
        _utf8_prompt(args.prompt)
    t0 = time.perf_counter()
    model = _load(args.model)
    tokenizer = golden.load_tokenizer(args.model)
    if args.prompt is not None:
        if tokenizer is None:
            raise ValueError(f"{args.model} has no tokenizer.json: use --prompt-ids")
        prompt_ids = golden.encode_prompt(tokenizer, model.config, args.prompt)
    else:
        prompt_ids = args.prompt_ids
    load_s = time.perf_counter() - t0

    generated: list[int] = []
    stamps: list[float] = []

    def stream(runner) -> Iterator[int]:
        return golden.generate_stream(runner, prompt_ids, args.max_new_tokens, greedy=args.greedy,
                                      temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                                      seed=args.seed)

    stream(model)  # checks every argument now, before a backend opens a device
    room = model.config.max_position_embeddings - len(prompt_ids)
    if args.max_new_tokens > room:  # generation stops at the end of the context: say so rather than stop silently
        print(f"bitlane generate: note: at most {room} new tokens fit in the model's context "
              f"(max_position_embeddings {model.config.max_position_embeddings}, prompt {len(prompt_ids)} tokens); "
              f"--max-new-tokens {args.max_new_tokens} will stop there", file=sys.stderr)
    setup = time.perf_counter()
    with BACKENDS[args.backend](model, **dict(args.backend_opt)) as runner:
        start = time.perf_counter()  # opening the device (a first simulator build, weight upload) is not generation
        tokens = stream(runner)
        for token in tokens if args.json else print_stream(tokens, tokenizer, prompt_ids):
            stamps.append(time.perf_counter())
            generated.append(token)
    decode_s = stamps[-1] - stamps[0] if len(stamps) > 1 else 0.0
    timing = {"load_s": round(load_s, 4),
              "device_setup_s": round(start - setup, 4),
              "first_token_s": round(stamps[0] - start, 4) if stamps else None,
              "total_s": round(time.perf_counter() - start, 4),
              "decode_tokens_per_s": round((len(stamps) - 1) / decode_s, 3) if decode_s > 0 else None}
    if args.json:
        result = {"prompt_ids": prompt_ids, "generated_ids": generated, "backend": args.backend, "timing": timing}
        if tokenizer is not None:
            result["prompt"] = tokenizer.decode(prompt_ids, skip_special_tokens=True)
            result["text"] = tokenizer.decode(generated, skip_special_tokens=True)
        print(json.dumps(result))
    else:
        rate = f", {timing['decode_tokens_per_s']} tokens/s" if timing["decode_tokens_per_s"] else ""
        print(f"[{len(generated)} tokens, {timing['total_s']} s{rate}, backend {args.backend}]", file=sys.stderr)
    return 0


def cmd_perplexity(args: argparse.Namespace) -> int:
    from bitlane.golden.perplexity import perplexity, text_ids

    model = _load(args.model)
    tokenizer = golden.load_tokenizer(args.model)
    if tokenizer is None:
        raise ValueError(f"{args.model} has no tokenizer.json: perplexity needs one to read {args.file}")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size {args.batch_size}: expected a whole number >= 1")
    ids = text_ids(tokenizer, args.file)
    with BACKENDS[args.backend](model, **dict(args.backend_opt)) as runner:
        ppl, n = perplexity(runner, ids, args.window, batch_size=args.batch_size, progress=True)
    print(f"perplexity {ppl:.4f} over {n} tokens")
    return 0


def _mib(nbytes: float) -> str:
    return f"{nbytes / 2**20:.2f} MiB"


def cmd_info(args: argparse.Namespace) -> int:
    config = golden.check_checkpoint(args.model)  # config against the safetensors headers: no tensor data read
    with torch.device("meta"):  # shapes only, no memory
        counts = golden.BitNetForCausalLM(config).num_parameters()
    ternary_bytes = counts["ternary"] * 2 / 8
    info = {
        "model": str(args.model),
        "config": golden.config_to_dict(config),
        "ternary_parameters": counts["ternary"],
        "float_parameters": counts["float"],
        "ternary_bytes_2bit": int(ternary_bytes),
        "float_bytes_bf16": counts["float"] * 2,
        "total_bytes_2bit_bf16": int(ternary_bytes) + counts["float"] * 2,
        "tokenizer": golden.load_tokenizer(args.model) is not None,
    }
    if args.json:
        print(json.dumps(info))
        return 0
    c = config
    print(f"model        {args.model}")
    print(f"shape        {c.num_hidden_layers} layers, hidden {c.hidden_size}, intermediate {c.intermediate_size} "
          f"({c.hidden_act}), heads {c.num_attention_heads} (kv {c.num_key_value_heads}, head_dim {c.head_dim}), "
          f"vocab {c.vocab_size}, {'tied' if c.tie_word_embeddings else 'untied'} embeddings, "
          f"max positions {c.max_position_embeddings}")
    print(f"ternary      {counts['ternary']:,} weights = {_mib(ternary_bytes)} at 2 bits/trit")
    print(f"float        {counts['float']:,} parameters (embeddings, norms, head, scales) = "
          f"{_mib(counts['float'] * 2)} bf16, {_mib(counts['float'] * 4)} fp32")
    print(f"total        {counts['ternary'] + counts['float']:,} parameters = "
          f"{_mib(info['total_bytes_2bit_bf16'])} (2-bit trits + bf16 floats)")
    print(f"tokenizer    {'tokenizer.json' if info['tokenizer'] else 'none (use --prompt-ids)'}")
    return 0


def cmd_make_model(args: argparse.Namespace) -> int:
    heads = args.heads or max(1, args.hidden_size // 32)
    intermediate = args.intermediate_size or -(-args.hidden_size * 8 // 3 // 4) * 4
    config = golden.BitNetConfig(
        vocab_size=args.vocab_size, hidden_size=args.hidden_size, intermediate_size=intermediate,
        num_hidden_layers=args.layers, num_attention_heads=heads, num_key_value_heads=args.kv_heads or heads,
        hidden_act=args.act, tie_word_embeddings=args.tie, max_position_embeddings=args.max_positions,
        bos_token_id=None, eos_token_id=None)
    path = golden.make_random_checkpoint(args.dir, config, seed=args.seed)
    print(f"wrote {path}")
    return 0


def _benchmarks() -> tuple[Path, dict[str, Path]]:
    bench_dir = Path(__file__).resolve().parents[1] / "bench"
    return bench_dir, {p.name.removesuffix("_bench.py"): p for p in sorted(bench_dir.glob("*_bench.py"))}


def _bench_list() -> str:
    """`bitlane bench --help`'s list: each benchmark with the first paragraph of its docstring."""
    import ast

    bench_dir, available = _benchmarks()
    if not available:
        return f"no benchmarks found in {bench_dir}"
    lines = []
    for name, path in available.items():
        try:
            doc = " ".join((ast.get_docstring(ast.parse(path.read_text())) or "").split("\n\n")[0].split())
        except (OSError, SyntaxError, ValueError):
            doc = ""
        lines.append(f"  {name:<10} {doc}".rstrip())
    return "benchmarks (bench/NAME_bench.py):\n" + "\n".join(lines)


def cmd_bench(args: argparse.Namespace) -> int:
    bench_dir, available = _benchmarks()
    unknown = [name for name in args.names if name not in available]
    if unknown:
        raise ValueError(f"no benchmark {', '.join(unknown)} in {bench_dir}; choose from {', '.join(available)}")
    status = 0
    for name in args.names or available:
        print(f"== bench/{available[name].name}", flush=True)
        status |= subprocess.run([sys.executable, str(available[name])]).returncode
    return status


def cmd_sdram_load(args: argparse.Namespace) -> int:
    from bitlane import connect
    from bitlane.sw.sdram import check_fits, load_blob

    size = os.path.getsize(args.file)
    with connect(args.device, log=lambda line: print(line, file=sys.stderr)) as device:
        check_fits(device.caps, size, args.addr, args.device)  # before reading a file that cannot fit
        with open(args.file, "rb") as f:
            result = load_blob(device, f.read(), args.addr, progress=True, force=args.force)
    print(result.summary())
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["hw"]:
        from bitlane.hw.cli import main as hw_main
        return hw_main(argv[1:])
    args = build_parser().parse_args(argv)
    if hasattr(sys.stdout, "reconfigure"):  # model text may hold anything; never die on encoding
        sys.stdout.reconfigure(errors="replace")
    command = {"generate": cmd_generate, "info": cmd_info, "make-model": cmd_make_model,
               "perplexity": cmd_perplexity, "bench": cmd_bench, "sdram-load": cmd_sdram_load}[args.command]
    try:
        return command(args)
    except BrokenPipeError:  # stdout closed early, e.g. piped into head: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # and no second error at exit
        return 1
    except (golden.CheckpointError, BitlaneError, ValueError, OSError) as e:
        print(f"bitlane {args.command}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # Ctrl-C: the device is closed on the way out; no traceback
        print(f"bitlane {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
