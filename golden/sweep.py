"""The ternary-vs-float size sweep: BitNet b1.58 and its float twin at several sizes, same data,
tokens and schedule, as in the BitNet b1.58 paper's comparison with LLaMA.

    python -m bitlane.golden.sweep commands --data data/english --out runs/sweep   # the golden.train commands
    python -m bitlane.golden.sweep run --data data/english --out runs/sweep        # run them all at once (one GPU)
    python -m bitlane.golden.sweep report runs/sweep --png docs/sweep.png          # markdown table + chart

Every run is one `python -m bitlane.golden.train` process (the sizes are in SIZES); `run` starts them
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
            runs[name] = [sys.executable, "-m", f"{__package__ or 'golden'}.train", *shared, *shape, "--linear", linear,
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
        # One CPU thread pool per run: eight runs with a pool as large as the machine each stalled in
        # their CPU phase (samples, export) for minutes on the 32-core device, from oversubscription.
        env = {**os.environ, "PYTHONUNBUFFERED": "1",
               "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // len(runs)))}
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


def parameters(size: str, vocab: int = 4096) -> tuple[int, int]:
    """(ternary, float) parameters of a size: BitLinear weights; tied embedding and RMSNorm gains."""
    hidden, inter, layers = SIZES[size][:3]
    ternary = layers * (4 * hidden * hidden + 3 * hidden * inter)
    return ternary, vocab * hidden + layers * (3 * hidden + inter) + hidden


def read_run(run: Path) -> dict | None:
    """A run's log (and result.json if it finished): final and best periodic validation loss."""
    if not (run / "log.jsonl").is_file():
        return None
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    val = [r for r in log if "val_loss" in r]
    train = [r for r in log if "loss" in r]
    result = json.loads((run / "result.json").read_text()) if (run / "result.json").is_file() else None
    return {"val": val, "final": math.exp(val[-1]["val_loss"]), "best": math.exp(min(r["val_loss"] for r in val)),
            "train_loss": sum(r["loss"] for r in train[-8:]) / len(train[-8:]), "tokens": train[-1]["tokens"],
            "seconds": train[-1]["seconds"], "result": result}


def read_results(root: Path) -> dict[str, dict]:
    runs = {p.name: read_run(p) for p in sorted(root.iterdir()) if p.is_dir()}
    return {name: run for name, run in runs.items() if run is not None}


def table(results: dict[str, dict], corpus_tokens: int) -> str:
    rows = ["| size | layers × hidden | parameters (ternary + float) | tokens (epochs) | val ppl, ternary "
            "| val ppl, float | ratio | train − val loss gap, ternary / float | full-split val ppl, ternary / float |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for size in SIZES:
        t, f = results.get("t" + size[1:]), results.get("f" + size[1:])
        if t is None or f is None:
            continue
        ternary, floats = parameters(size)
        full = [f"{r['result']['val_perplexity']:.2f}" if r["result"] else "–" for r in (t, f)]
        gap = [math.log(r["final"]) - r["train_loss"] for r in (t, f)]
        rows.append(f"| {size} | {SIZES[size][2]} × {SIZES[size][0]} | {(ternary + floats) / 1e6:.1f}M "
                    f"({ternary / 1e6:.1f}M + {floats / 1e6:.1f}M) | {t['tokens'] / 1e6:.1f}M "
                    f"({t['tokens'] / corpus_tokens:.1f}) | **{t['final']:.2f}** | {f['final']:.2f} "
                    f"| {t['final'] / f['final']:.3f} | {gap[0]:.2f} / {gap[1]:.2f} | {full[0]} / {full[1]} |")
    return "\n".join(rows)


def plot(results: dict[str, dict], png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from matplotlib.ticker import NullFormatter

    fig, (ax, paper) = plt.subplots(1, 2, figsize=(11, 4.2), gridspec_kw={"width_ratios": [3, 2]})
    curves = {}
    for prefix, label, style in (("t", "BitNet b1.58 (ternary)", "o-"), ("f", "float twin (bf16)", "s--")):
        points = sorted((sum(parameters("h" + name[1:])), r["final"]) for name, r in results.items()
                        if name[0] == prefix)
        curves[prefix] = dict(points)
        ax.plot([p / 1e6 for p, _ in points], [v for _, v in points], style, label=label)
    for params, ternary in curves["t"].items():
        if params in curves.get("f", {}):
            ax.annotate(f"×{ternary / curves['f'][params]:.3f}", (params / 1e6, ternary), textcoords="offset points",
                        xytext=(4, 6), fontsize=8)
    ax.set_xscale("log")
    ax.set_xticks([p / 1e6 for p in curves["t"]], [f"{p / 1e6:.1f}M" for p in curves["t"]])
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("parameters (log scale); 39.3M tokens each")
    ax.set_ylabel("validation perplexity (200k-token subset)")
    ax.set_title("bitlane sweep: multi-source English corpus")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    sizes = [v[0] / 1e9 for v in PAPER.values()]
    paper.plot(sizes, [v[2] for v in PAPER.values()], "o-", label="BitNet b1.58")
    paper.plot(sizes, [v[1] for v in PAPER.values()], "s--", label="LLaMA (FP16)")
    paper.set_xscale("log")
    paper.set_xticks(sizes, list(PAPER))
    paper.xaxis.set_minor_formatter(NullFormatter())
    paper.set_xlabel("parameters")
    paper.set_title("for reference: the paper's Table 1 (100B tokens)")
    paper.grid(True, which="both", alpha=0.3)
    paper.legend()
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)


def report(root: Path, png: Path | None, corpus_tokens: int) -> str:
    """Markdown table (and chart) of a sweep folder. "val ppl" is each run's last periodic evaluation
    (--eval-tokens: the same ~200k validation tokens for every run, spread over all sources); the
    full-split perplexity comes from result.json where the run finished its final evaluation."""
    results = read_results(root)
    if png is not None:
        plot(results, png)
    return table(results, corpus_tokens)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bitlane.golden.sweep", description=__doc__.split("\n\n")[0],
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
        meta = json.loads((Path(args.data) / "meta.json").read_text())
        print(report(args.root or Path(args.out), args.png, meta["tokens"]["train"]))
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
