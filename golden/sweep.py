"""The ternary-vs-float size sweep: BitNet b1.58 and its float twin at several sizes, same data,
tokens and schedule, as in the BitNet b1.58 paper's comparison with LLaMA.

    python -m golden.sweep commands --data data/english --out runs/sweep   # the golden.train commands
    python -m golden.sweep run --data data/english --out runs/sweep        # run them all at once (one GPU)
    python -m golden.sweep report runs/sweep --png docs/sweep.png          # markdown table + chart

Every run is one `python -m golden.train` process (the sizes are in SIZES); `run` starts them
concurrently, since the small ones are bound by kernel launches and share one GPU well, and
writes each one's output to `<out>/<run>.out`.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

# name: (hidden, intermediate, layers, heads, peak lr ternary, peak lr float); head_dim 64 throughout.
# h128 and h256 are the shapes of the shipped KJV models (and their learning rates).
SIZES = {
    "h128": (128, 384, 4, 2, 4e-3, 2e-3),
    "h256": (256, 768, 4, 4, 3e-3, 1.5e-3),
    "h384": (384, 1152, 5, 6, 2.5e-3, 1.2e-3),
    "h512": (512, 1536, 7, 8, 2e-3, 1e-3),
}
# BitNet b1.58 paper (Ma et al. 2024, Table 1): validation perplexity, LLaMA FP16 vs BitNet b1.58,
# same data (RedPajama, 100B tokens).
PAPER = {"700M": (7e8, 12.33, 12.87), "1.3B": (1.3e9, 11.25, 11.29), "3B": (3e9, 10.04, 9.91)}


def commands(data: str, out: str, steps: int, batch_size: int, seed: int, extra: list[str]) -> dict[str, list[str]]:
    shared = ["--data", data, "--seq-len", "256", "--batch-size", str(batch_size), "--steps", str(steps),
              "--warmup", "100", "--seed", str(seed), "--log-every", "50", "--eval-every", str(max(1, steps // 8)),
              "--save-every", str(steps), "--eval-tokens", "200000", "--compile"]
    runs = {}
    for size, (hidden, inter, layers, heads, lr_t, lr_f) in SIZES.items():
        shape = ["--hidden-size", str(hidden), "--intermediate-size", str(inter),
                 "--num-hidden-layers", str(layers), "--num-attention-heads", str(heads)]
        for linear, prefix, lr in (("bitlinear", "t", lr_t), ("float", "f", lr_f)):
            name = prefix + size[1:]
            runs[name] = [sys.executable, "-m", "golden.train", *shared, *shape, "--linear", linear,
                          "--lr", str(lr), "--out", f"{out}/{name}", *extra]
    return runs


def cost(name: str) -> float:
    """Rough relative GPU time of a run: its parameter count, ternary runs 1.3x (fake quantization)."""
    hidden, inter, layers = SIZES["h" + name[1:]][:3]
    return layers * (4 * hidden * hidden + 3 * hidden * inter) * (1.3 if name[0] == "t" else 1.0) + 4096 * hidden


def run_all(runs: dict[str, list[str]], out: Path, gpus: int) -> int:
    """Start every run at once, spread over `gpus` GPUs (CUDA_VISIBLE_DEVICES) by estimated cost."""
    out.mkdir(parents=True, exist_ok=True)
    procs = {}
    load = [0.0] * max(1, gpus)
    for name in sorted(runs, key=cost, reverse=True):  # largest first: the longest runs start earliest
        gpu = load.index(min(load))
        load[gpu] += cost(name)
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        if gpus > 1:
            env["CUDA_VISIBLE_DEVICES"] = str(gpu)
        print(f"{name}: GPU {gpu if gpus else 'none'}", flush=True)
        procs[name] = subprocess.Popen(runs[name], stdout=(out / f"{name}.out").open("w"),
                                       stderr=subprocess.STDOUT, env=env)
    started, failed = time.time(), 0
    for name, proc in procs.items():
        code = proc.wait()
        failed += code != 0
        print(f"{name}: exit {code} after {time.time() - started:.0f} s", flush=True)
    return failed


def read_results(root: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in sorted(root.glob("*/result.json"))}


def total_params(result: dict) -> int:
    return sum(result["parameters"].values())


def table(results: dict[str, dict]) -> str:
    rows = ["| size | layers × hidden | parameters (ternary + float) | training tokens (epochs) | val ppl, ternary "
            "| val ppl, float | ratio ternary / float | best val ppl during training, ternary / float |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for size in SIZES:
        t, f = results.get("t" + size[1:]), results.get("f" + size[1:])
        if t is None or f is None:
            continue
        c = t["config"]
        epochs = t["train_tokens_seen"] / t["corpus_train_tokens"]
        best = [math.exp(min(r["val_loss"] for r in r_log)) for r_log in (t["_val"], f["_val"])]
        rows.append(f"| {size} | {c['num_hidden_layers']} × {c['hidden_size']} | {total_params(t) / 1e6:.1f}M "
                    f"({t['parameters']['ternary'] / 1e6:.1f}M + {t['parameters']['float'] / 1e6:.1f}M) "
                    f"| {t['train_tokens_seen'] / 1e6:.1f}M ({epochs:.1f}) | **{t['val_perplexity']:.2f}** "
                    f"| {f['val_perplexity']:.2f} | {t['val_perplexity'] / f['val_perplexity']:.3f} "
                    f"| {best[0]:.2f} / {best[1]:.2f} |")
    return "\n".join(rows)


def plot(results: dict[str, dict], png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, paper) = plt.subplots(1, 2, figsize=(11, 4.2), gridspec_kw={"width_ratios": [3, 2]})
    for prefix, label, style in (("t", "BitNet b1.58 (ternary)", "o-"), ("f", "float twin (bf16)", "s--")):
        points = sorted((total_params(r), r["val_perplexity"]) for name, r in results.items() if name[0] == prefix)
        ax.plot([p / 1e6 for p, _ in points], [v for _, v in points], style, label=label)
    ax.set_xscale("log")
    ax.set_xlabel("parameters (millions, log scale)")
    ax.set_ylabel("validation perplexity")
    ax.set_title("bitlane sweep: multi-source English corpus")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    sizes = [v[0] / 1e9 for v in PAPER.values()]
    paper.plot(sizes, [v[2] for v in PAPER.values()], "o-", label="BitNet b1.58")
    paper.plot(sizes, [v[1] for v in PAPER.values()], "s--", label="LLaMA (FP16)")
    paper.set_xscale("log")
    paper.set_xticks(sizes, list(PAPER))
    paper.set_xlabel("parameters")
    paper.set_title("for reference: the paper's Table 1 (100B tokens)")
    paper.grid(True, which="both", alpha=0.3)
    paper.legend()
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)


def report(root: Path, png: Path | None) -> str:
    results = read_results(root)
    for name, result in results.items():
        log = [json.loads(line) for line in (root / name / "log.jsonl").read_text().splitlines()]
        result["_val"] = [r for r in log if "val_loss" in r]
    if png is not None:
        plot(results, png)
    return table(results)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m golden.sweep", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("action", choices=["commands", "run", "report"])
    parser.add_argument("root", nargs="?", type=Path, help="report: the sweep's folder")
    parser.add_argument("--data", default="data/english")
    parser.add_argument("--out", default="runs/sweep")
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=1337)
    parser.add_argument("--only", default="", help="comma-separated run names (t128,f128,...); default all")
    parser.add_argument("--png", type=Path, default=None, help="report: write the chart here")
    args, extra = parser.parse_known_args(argv)
    if args.action == "report":
        print(report(args.root or Path(args.out), args.png))
        return
    runs = commands(args.data, args.out, args.steps, args.batch_size, args.seed, extra)
    if args.only:
        runs = {k: v for k, v in runs.items() if k in args.only.split(",")}
    if args.action == "commands":
        for cmd in runs.values():
            print("python " + " ".join(cmd[1:]))
        return
    import torch

    raise SystemExit(run_all(runs, Path(args.out), torch.cuda.device_count()))


if __name__ == "__main__":
    main()
