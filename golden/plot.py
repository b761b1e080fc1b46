"""Plot the loss curves of training runs (their log.jsonl files) into one PNG.

    python -m bitlane.golden.plot docs/training/t256 docs/training/f256 ... --png docs/loss.png

Solid lines: training loss (mean over each 100 steps' logged losses); markers joined by
dashed lines: validation loss of the model as exported (BitLinear on its integer path).
Needs matplotlib (`pip install -e '.[train]'`).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

LABELS = {"bitlinear": "BitNet b1.58 (ternary)", "float": "float baseline"}


def read_log(run: Path) -> tuple[list[dict], list[dict], dict]:
    """(training records, validation records, result.json) of one run folder."""
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    result = json.loads((run / "result.json").read_text())
    return [r for r in records if "loss" in r], [r for r in records if "val_loss" in r], result


def plot(runs: list[Path], png: Path, smooth: int = 4) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5), dpi=120)
    for index, run in enumerate(runs):
        train, val, result = read_log(run)
        config = result["config"]
        label = f"{LABELS[result['linear']]}, hidden {config['hidden_size']}"
        color = f"C{index}"
        tokens = np.array([r["tokens"] for r in train]) / 1e6
        loss = np.array([r["loss"] for r in train])
        usable = len(loss) // smooth * smooth
        ax.plot(tokens[:usable].reshape(-1, smooth).mean(1), loss[:usable].reshape(-1, smooth).mean(1),
                color=color, alpha=0.55, linewidth=1)
        ax.plot([r["tokens"] / 1e6 for r in val], [r["val_loss"] for r in val], "o--", color=color,
                markersize=3, label=f"{label}: val ppl {result['val_perplexity']:.1f}")
    ax.set_xlabel("training tokens (millions)")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.set_ylim(2.0, 6.0)
    ax.set_title("KJV Bible, 4k BPE: training (thin) and validation (dashed) loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(png)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run folders holding log.jsonl and result.json")
    parser.add_argument("--png", type=Path, default=Path("docs/loss.png"))
    args = parser.parse_args(argv)
    plot(args.runs, args.png)
    print(f"wrote {args.png}")


if __name__ == "__main__":
    main()
