"""The quick formal properties of issue 14 (all of them: `make formal`, see docs/formal.md).

Each runs yowasp-sby + the Yices 2 solver (or a structural Yosys check) on a small harness;
together they take well under a minute on 2 cores.
"""
import itertools

import pytest

from formal.properties import PROPERTIES, SEQ_CONFIG, SEQ_LONGEST_RUN, SEQ_OVERHEAD
from bitlane.contract.config import PRESETS
from formal.common import config

QUICK = [p for p in PROPERTIES if p.quick]


@pytest.mark.parametrize("prop", QUICK, ids=[p.name for p in QUICK])
def test_property(prop, tmp_path):
    result = prop.run(workdir=tmp_path)
    assert result.ok, f"{prop.name}: {result.status}\n" + "\n".join(result.log.splitlines()[-30:])


def test_every_issue_item_has_a_property():
    assert {p.issue_item for p in PROPERTIES} >= set(range(1, 9))
    assert len(PROPERTIES) >= 10
    assert len({p.name for p in PROPERTIES}) == len(PROPERTIES)


def test_sequencer_proof_depths_cover_the_longest_run():
    """The BMC depths of sequencer-addresses / core-run-timing rest on these two numbers."""
    cfg = config("seq", **SEQ_CONFIG)
    longest = 0
    for rows, cols, n in itertools.product(range(1, cfg.out_depth * cfg.lanes + 1), range(1, cfg.max_k + 1),
                                           range(1, cfg.act_depth + 1)):
        rt, ks = -(-rows // cfg.lanes), -(-cols // cfg.k_per_cycle)
        if rt * ks <= cfg.weight_depth and n * ks <= cfg.act_depth and n * rt <= cfg.out_depth:
            longest = max(longest, n * rt * ks)
    assert longest == SEQ_LONGEST_RUN
    assert cfg.run_overhead == SEQ_OVERHEAD
    by_name = {p.name: p for p in PROPERTIES}
    assert by_name["sequencer-addresses"].depth >= 2 * longest + 2
    assert by_name["core-run-timing"].depth >= longest + SEQ_OVERHEAD + 3


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_accumulator_width_generalises(name):
    """lane-accumulate proves the lanes exact for max_k = 16 and 12; what carries the proof to a
    preset is that acc_bits holds +-128 * max_k (the largest tile sum) and nothing less would."""
    cfg = PRESETS[name]
    bound = 128 * cfg.max_k
    assert -(1 << (cfg.acc_bits - 1)) <= -bound and bound <= (1 << (cfg.acc_bits - 1)) - 1
    assert bound > (1 << (cfg.acc_bits - 2)) - 1  # one bit fewer would overflow
