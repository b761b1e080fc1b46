"""Train a BitNet b1.58 model (quantization-aware) or its float twin on the corpus of golden.data.

    python -m bitlane.golden.data --out data/kjv                       # corpus + tokenizer, once
    python -m bitlane.golden.train --data data/kjv --out runs/t256 --linear bitlinear --hidden-size 256
    python -m bitlane.golden.train --data data/kjv --out runs/f256 --linear float     --hidden-size 256

Both runs build the same LLaMA-shaped network (golden.model.BitNetForCausalLM: RMSNorm, RoPE,
SubLN, relu2-gated MLP, tied embeddings); the only difference is BitLinear versus nn.Linear.
BitLinear trains as in the BitNet b1.58 paper: latent float weights, absmean ternary weights
and per-token absmax int8 activations in the forward pass, straight-through estimator in the
backward pass, all in float32 (TF32 matmuls on GPU). The float baseline may use bf16 autocast.

Schedules (the papers' recipes, scaled down to a few thousand steps):
- bitlinear: two stages. Stage 1 (first half): linear warmup, then the learning rate decays
  linearly from --lr to 0.8 * --lr while weight decay follows a half cosine from
  --weight-decay (0.1) to 0. Stage 2 (second half, the "cooldown"): the learning rate drops
  at once to 0.4 * --lr and decays linearly to 0; weight decay is off.
- float: linear warmup, cosine decay of the learning rate to 0.1 * --lr, constant weight decay
  (the LLaMA recipe).

A run folder holds `log.jsonl` (one JSON record per logged step and per evaluation),
`state.pt` (latent weights, optimizer and data order: running the same command again resumes
from it), and at the end `result.json` (validation loss and perplexity of the model as shipped,
token count, time, sample generations) and the model: for bitlinear a packed Hugging Face
BitNet folder `hf/` with the tokenizer, for float `model.safetensors` + `config.json`.
--time-limit stops a run cleanly (state saved) so that the same command continues it later.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from tokenizers import Tokenizer

from .checkpoint import config_to_dict, save_model
from .data import EOS_TOKEN, CorpusError, load_tokens
from .generate import generate
from .model import BitNetConfig, BitNetForCausalLM

SAMPLE_PROMPTS = ("In the beginning", "And Jesus said unto them,", "The LORD is my shepherd;")
# The multi-source corpus (golden/corpus.py): one prompt in the voice of each of its sources.
ENGLISH_PROMPTS = ("It is a truth universally acknowledged", "The committee said that", "To be, or not to be:",
                   "The LORD is my shepherd;", "Of Mans First Disobedience,", "Love, n.")


class TrainError(RuntimeError):
    """A run that cannot start or continue: the message names the file and what was expected."""


@dataclass
class TrainConfig:
    data: str = "data/kjv"
    out: str = "runs/bitnet"
    linear: Literal["bitlinear", "float"] = "bitlinear"
    # model shape (HF BitNetConfig names)
    hidden_size: int = 256
    intermediate_size: int = 768
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    seq_len: int = 256
    # optimisation
    steps: int = 2000
    batch_size: int = 32
    lr: float = 3e-3
    weight_decay: float = 0.1
    warmup: int = 100
    grad_clip: float = 1.0
    seed: int = 1337
    # bookkeeping
    log_every: int = 25
    eval_every: int = 250
    save_every: int = 500
    time_limit: float = 0.0  # seconds; 0 = none
    prompts: str = ""  # sample prompts separated by "|"; empty: SAMPLE_PROMPTS or, for a multi-source corpus, ENGLISH_PROMPTS
    compile: bool = False  # torch.compile the training forward pass
    eval_tokens: int = 0  # periodic evaluations on about this many validation tokens (evenly spread); 0 = all
    device: str = "cuda" if torch.cuda.is_available() else "cpu"
    bf16: bool = True  # autocast for the float baseline on CUDA; BitLinear always trains in float32

    def model_config(self, vocab_size: int, eos_token_id: int) -> BitNetConfig:
        return BitNetConfig(
            vocab_size=vocab_size, hidden_size=self.hidden_size, intermediate_size=self.intermediate_size,
            num_hidden_layers=self.num_hidden_layers, num_attention_heads=self.num_attention_heads,
            num_key_value_heads=self.num_attention_heads, hidden_act="relu2",
            max_position_embeddings=self.seq_len, rope_theta=10000.0, tie_word_embeddings=True,
            bos_token_id=None, eos_token_id=eos_token_id)


def schedule(cfg: TrainConfig, step: int) -> tuple[float, float]:
    """(learning rate, weight decay) for the optimizer step `step` (0-based)."""
    warm = min(1.0, (step + 1) / max(1, cfg.warmup))
    if cfg.linear == "float":
        progress = min(1.0, max(0.0, (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)))
        return cfg.lr * warm * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))), cfg.weight_decay
    half = cfg.steps // 2
    if step < half:
        progress = step / max(1, half)
        return (cfg.lr * warm * (1 - 0.2 * progress),
                cfg.weight_decay * 0.5 * (1 + math.cos(math.pi * progress)))
    progress = (step - half) / max(1, cfg.steps - half)
    return 0.4 * cfg.lr * (1 - progress), 0.0


def random_batch(tokens: np.ndarray, cfg: TrainConfig, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """batch_size random windows of seq_len + 1 tokens: inputs and next-token targets."""
    starts = rng.integers(0, tokens.size - cfg.seq_len - 1, size=cfg.batch_size)
    windows = torch.from_numpy(np.stack([tokens[s:s + cfg.seq_len + 1] for s in starts]).astype(np.int64))
    windows = windows.to(cfg.device, non_blocking=True)
    return windows[:, :-1], windows[:, 1:]


def autocast(cfg: TrainConfig):
    if cfg.linear == "float" and cfg.bf16 and cfg.device.startswith("cuda"):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


@torch.no_grad()
def evaluate(model: BitNetForCausalLM, tokens: np.ndarray, cfg: TrainConfig) -> float:
    """Mean next-token cross-entropy over the whole split in consecutive seq_len windows (eval mode:
    BitLinear runs its exact integer path, so this is the loss of the model as exported)."""
    was_training = model.training
    model.eval()
    precision = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")  # the integer path's float matmul must be exact
    n_windows = (tokens.size - 1) // cfg.seq_len
    total, count = 0.0, 0
    for first in range(0, n_windows, cfg.batch_size):
        starts = range(first * cfg.seq_len, min(n_windows, first + cfg.batch_size) * cfg.seq_len, cfg.seq_len)
        windows = torch.from_numpy(np.stack([tokens[s:s + cfg.seq_len + 1] for s in starts]).astype(np.int64))
        windows = windows.to(cfg.device)
        with autocast(cfg):
            logits = model(windows[:, :-1])
        total += F.cross_entropy(logits.float().flatten(0, 1), windows[:, 1:].flatten(), reduction="sum").item()
        count += windows[:, 1:].numel()
    torch.set_float32_matmul_precision(precision)
    model.train(was_training)
    return total / count


def eval_subset(tokens: np.ndarray, cfg: TrainConfig) -> np.ndarray:
    """About cfg.eval_tokens tokens of the split in evenly spaced runs of 8 windows (all when 0 or
    more than the split), so that a quick evaluation still samples every source of the corpus."""
    if not cfg.eval_tokens or cfg.eval_tokens >= tokens.size:
        return tokens
    chunk = 8 * cfg.seq_len + 1
    count = max(1, cfg.eval_tokens // chunk)
    starts = np.linspace(0, tokens.size - chunk, count).astype(np.int64)
    return np.concatenate([tokens[s:s + chunk] for s in starts])


def optimizer_for(model: BitNetForCausalLM, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW; matrices (latent BitLinear weights, embeddings) decay, norm gains do not."""
    matrices = [p for p in model.parameters() if p.ndim >= 2]
    gains = [p for p in model.parameters() if p.ndim < 2]
    return torch.optim.AdamW([{"params": matrices, "weight_decay": cfg.weight_decay},
                              {"params": gains, "weight_decay": 0.0}],
                             lr=cfg.lr, betas=(0.9, 0.95), eps=1e-8, fused=cfg.device.startswith("cuda"))


def prompts_for(cfg: TrainConfig) -> tuple[str, ...]:
    if cfg.prompts:
        return tuple(cfg.prompts.split("|"))
    return ENGLISH_PROMPTS if (Path(cfg.data) / "val_kjv.bin").is_file() else SAMPLE_PROMPTS


def samples(model: BitNetForCausalLM, tokenizer: Tokenizer, cfg: TrainConfig) -> list[dict]:
    """Greedy and sampled continuations of SAMPLE_PROMPTS (40 tokens each, stopping at a newline)."""
    newline = tokenizer.token_to_id("Ċ")  # ByteLevel's spelling of "\n"
    stop = {newline} if newline is not None else set()
    out = []
    for prompt in prompts_for(cfg):
        ids = tokenizer.encode(prompt).ids
        row = {"prompt": prompt}
        for mode, options in (("greedy", dict(greedy=True)),
                              ("sampled", dict(temperature=0.8, top_k=40, seed=cfg.seed))):
            with autocast(cfg):
                new = generate(model, ids, 40, eos_token_ids=stop, **options)
            row[mode] = tokenizer.decode(new).rstrip("\n")
        out.append(row)
    return out


def export(model: BitNetForCausalLM, cfg: TrainConfig, out: Path, tokenizer: Tokenizer) -> None:
    """bitlinear: packed HF BitNet folder out/hf (+ tokenizer); float: out/model.safetensors + config.json."""
    model = model.to("cpu")
    if cfg.linear == "bitlinear":
        path = save_model(model, out / "hf", tokenizer=tokenizer)
        (path / "tokenizer_config.json").write_text(json.dumps(
            {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": EOS_TOKEN,
             "model_max_length": cfg.seq_len}, indent=2) + "\n")
    else:
        tensors = {name: p.detach().contiguous().clone() for name, p in model.named_parameters()}
        save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
        (out / "config.json").write_text(json.dumps(
            {**config_to_dict(model.config), "quantization_config": None}, indent=2) + "\n")


def _without_time_limit(config: dict) -> dict:
    return {k: v for k, v in config.items() if k != "time_limit"}


def train(cfg: TrainConfig) -> dict:
    """Run (or resume) training as configured; returns the result written to result.json."""
    data, out = Path(cfg.data), Path(cfg.out)
    meta_file = data / "meta.json"
    if not meta_file.is_file():
        raise TrainError(f"{meta_file} not found: run `python -m bitlane.golden.data --out {data}` first")
    try:
        meta = json.loads(meta_file.read_text())
        tokenizer = Tokenizer.from_file(str(data / "tokenizer.json"))
    except Exception as e:  # json and tokenizers raise their own types for unreadable files
        raise TrainError(f"{data}: cannot read meta.json / tokenizer.json ({e}); "
                         f"rerun `python -m bitlane.golden.data --out {data}`") from None
    train_tokens, val_tokens = load_tokens(data, "train"), load_tokens(data, "val")
    if tokenizer.get_vocab_size() != meta["vocab_size"]:
        raise TrainError(f"{data / 'tokenizer.json'} has {tokenizer.get_vocab_size()} tokens, "
                         f"{meta_file} says {meta['vocab_size']}")
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    torch.set_float32_matmul_precision("high")  # TF32 on GPU; quantizers stay float32 either way
    # golden.model builds RoPE tables and masks with factory functions: make them on the device.
    with torch.device(cfg.device):
        model = BitNetForCausalLM(cfg.model_config(meta["vocab_size"], tokenizer.token_to_id(EOS_TOKEN)),
                                  quantized=cfg.linear == "bitlinear")
        optimizer = optimizer_for(model, cfg)
        rng = np.random.default_rng(cfg.seed)
        state_file, log_file = out / "state.pt", out / "log.jsonl"
        step, elapsed = 0, 0.0
        if state_file.exists():
            state = torch.load(state_file, map_location=cfg.device, weights_only=False)
            if _without_time_limit(state["config"]) != _without_time_limit(dataclasses.asdict(cfg)):
                raise TrainError(f"{state_file} was written by a run with another configuration; "
                                 "use a new --out folder")
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            rng.bit_generator.state = state["rng"]
            step, elapsed = state["step"], state["elapsed"]
            print(f"resuming {out} at step {step}")
        elif log_file.exists():
            log_file.unlink()

        def save_state() -> None:
            torch.save({"config": dataclasses.asdict(cfg), "model": model.state_dict(),
                        "optimizer": optimizer.state_dict(), "rng": rng.bit_generator.state,
                        "step": step, "elapsed": elapsed}, state_file)

        def log(record: dict) -> None:
            with log_file.open("a") as f:
                f.write(json.dumps(record) + "\n")

        counts = model.num_parameters() if cfg.linear == "bitlinear" else \
            {"float": sum(p.numel() for p in model.parameters())}
        print(f"{cfg.linear} model: {counts} parameters, {train_tokens.size} training tokens")
        model.train()
        forward = torch.compile(model) if cfg.compile else model
        started = time.perf_counter() - elapsed
        while step < cfg.steps:
            lr, wd = schedule(cfg, step)
            optimizer.param_groups[0]["lr"] = optimizer.param_groups[1]["lr"] = lr
            optimizer.param_groups[0]["weight_decay"] = wd
            inputs, targets = random_batch(train_tokens, cfg, rng)
            with autocast(cfg):
                logits = forward(inputs)
            loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            step += 1
            elapsed = time.perf_counter() - started
            if step % cfg.log_every == 0 or step == cfg.steps:
                record = {"step": step, "tokens": step * cfg.batch_size * cfg.seq_len, "loss": loss.item(),
                          "lr": lr, "weight_decay": wd, "seconds": round(elapsed, 2)}
                log(record)
                print(json.dumps(record), flush=True)
            if step % cfg.eval_every == 0 or step == cfg.steps:
                val = evaluate(model, eval_subset(val_tokens, cfg), cfg)
                log({"step": step, "tokens": step * cfg.batch_size * cfg.seq_len, "val_loss": val})
                print(f"step {step}: val loss {val:.4f}, perplexity {math.exp(val):.2f}", flush=True)
            if step % cfg.save_every == 0 and step < cfg.steps:
                save_state()
            if cfg.time_limit and elapsed > cfg.time_limit and step < cfg.steps:
                save_state()
                print(f"time limit reached at step {step}; run the same command again to resume")
                return {"stopped_at_step": step}
        save_state()
        val = evaluate(model, val_tokens, cfg)
        # A multi-source corpus (golden/corpus.py) also has each source's validation split alone.
        by_source = {file.stem[4:]: math.exp(evaluate(model, np.fromfile(file, dtype=np.uint16), cfg))
                     for file in sorted(data.glob("val_*.bin"))}

    # Samples and export on the CPU, where golden.generate keeps its tensors and random generator.
    model = model.to("cpu").eval()
    torch.set_float32_matmul_precision("highest")
    cfg_cpu = dataclasses.replace(cfg, device="cpu")
    result = {
        "linear": cfg.linear, "config": dataclasses.asdict(cfg), "parameters": counts,
        "steps": step, "train_tokens_seen": step * cfg.batch_size * cfg.seq_len,
        "corpus_train_tokens": int(train_tokens.size), "val_tokens": int(val_tokens.size),
        "val_loss": val, "val_perplexity": math.exp(val),
        **({"val_perplexity_by_source": by_source} if by_source else {}), "train_seconds": round(elapsed, 1),
        "device": torch.cuda.get_device_name() if cfg.device.startswith("cuda") else cfg.device,
        "samples": samples(model, tokenizer, cfg_cpu),
    }
    export(model, cfg, out, tokenizer)
    (out / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


HELP = {
    "data": "folder written by `python -m bitlane.golden.data`",
    "out": "run folder (log.jsonl, state.pt, result.json, the exported model); an existing state.pt is resumed",
    "linear": "BitLinear (ternary QAT) or nn.Linear (float baseline)",
    "steps": "optimizer steps (the schedules are laid out over them)",
    "lr": "peak learning rate",
    "weight_decay": "peak weight decay (stage 1 only for bitlinear)",
    "time_limit": "stop cleanly after this many seconds of training, saving state.pt; 0 = no limit",
    "bf16": "bf16 autocast for the float baseline on CUDA",
    "prompts": "sample prompts for result.json, separated by '|' (default: by corpus)",
    "eval_tokens": "periodic evaluations use about this many validation tokens spread over the split "
                   "(the final one always uses all); 0 = all",
    "compile": "torch.compile the training forward pass (evaluation and export stay eager)",
}


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    parser = argparse.ArgumentParser(prog="python -m bitlane.golden.train", description=__doc__.split("\n\n")[0],
                                     epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    defaults = TrainConfig()
    for field in dataclasses.fields(TrainConfig):
        flag = "--" + field.name.replace("_", "-")
        default = getattr(defaults, field.name)
        text = f"{HELP[field.name]} (default: {default})" if field.name in HELP else f"default: {default}"
        if field.name == "linear":
            parser.add_argument(flag, choices=["bitlinear", "float"], default=default, help=text)
        elif isinstance(default, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=text)
        else:
            parser.add_argument(flag, type=type(default), default=default, help=text)
    return TrainConfig(**vars(parser.parse_args(argv)))


def main(argv: list[str] | None = None) -> None:
    try:
        result = train(parse_args(argv))
    except (TrainError, CorpusError) as e:
        raise SystemExit(f"golden.train: {e}") from None
    print(json.dumps({k: v for k, v in result.items() if k != "config"}, indent=2))


if __name__ == "__main__":
    main()
