"""golden.sweep: the commands it runs, and its report of the committed sweep logs (docs/training/sweep)
reproducing the README's table; golden.train.eval_subset."""
from pathlib import Path

import numpy as np

from bitlane.golden.sweep import SIZES, commands, parameters, read_results, table
from bitlane.golden.train import TrainConfig, eval_subset

SWEEP = Path(__file__).resolve().parent.parent / "docs" / "training" / "sweep"


def test_commands_pair_every_size():
    runs = commands("data/english", "runs/sweep", 2400, 64, 1337, [])
    assert sorted(runs) == sorted(p + s[1:] for s in SIZES for p in "tf")
    t, f = runs["t512"], runs["f512"]
    # the twins differ only in --linear, --lr and --out
    diff = {(a, b) for a, b in zip(t, f) if a != b}
    assert diff == {("bitlinear", "float"), ("0.002", "0.001"), ("runs/sweep/t512", "runs/sweep/f512")}
    assert "--seed" in t and t[t.index("--seed") + 1] == "1337"


def test_parameter_counts():
    assert sum(parameters("h128")) == 1_379_456 and sum(parameters("h512")) == 25_974_321 - 49  # + 49 weight scales


def test_report_reproduces_readme_table():
    rows = table(read_results(SWEEP), corpus_tokens=15_471_577).splitlines()[2:]
    assert [row.split(" | ")[4:7] for row in rows] == [
        ["**33.05**", "29.90", "1.105"], ["**22.47**", "20.60", "1.091"],
        ["**19.16**", "18.12", "1.057"], ["**17.34**", "16.28", "1.065"]]


def test_eval_subset_spreads_over_the_split():
    tokens = np.arange(100_000)
    cfg = TrainConfig(seq_len=16, eval_tokens=1_000)
    sub = eval_subset(tokens, cfg)
    chunk = 8 * 16 + 1
    assert sub.size == (1_000 // chunk) * chunk and sub[0] == 0 and sub[-1] == tokens[-1]
    assert eval_subset(tokens, TrainConfig(eval_tokens=0)) is tokens
