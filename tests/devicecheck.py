"""Test helper: a greedy generation on golden's own integer path and on a device, compared call by call."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from bitlane import golden
from bitlane.sw import Accelerator


@dataclass
class GoldenComparison:
    """Outcome of `compare_with_golden`."""

    golden_ids: list[int]
    device_ids: list[int]
    calls: int  # BitLinear calls compared
    mismatches: list[str]  # one line per call whose int32 accumulators differ

    @property
    def identical(self) -> bool:
        return self.golden_ids == self.device_ids and not self.mismatches and self.calls > 0


def compare_with_golden(model, acc: Accelerator, prompt_ids: list[int], max_new_tokens: int = 32) -> GoldenComparison:
    """Greedy-generate on golden's own integer path and on `acc`; compare every BitLinear call.

    Every call's int32 accumulator from the device must equal golden's exactly (its inputs then
    match too, since they are computed from the previous accumulators), and so must the tokens.
    """




    runs = []
    for fn in (None, acc.int_matmul):
        model.set_int_matmul(fn)
        try:
            with golden.trace(model) as records:
                ids = golden.generate(model, prompt_ids, max_new_tokens, greedy=True, eos_token_ids=set())
        finally:
            model.set_int_matmul(None)
        runs.append((ids, records))
    (ref_ids, ref), (dev_ids, dev) = runs
    mismatches = []
    for i, (r, d) in enumerate(zip(ref, dev)):
        if r.name != d.name or not torch.equal(r.q, d.q) or not torch.equal(r.acc, d.acc):
            diff = (r.acc.long() - d.acc.long()).abs().max().item() if r.acc.shape == d.acc.shape else "shape"
            mismatches.append(f"call {i} {r.name} / {d.name}: max |acc difference| {diff}")
    if len(ref) != len(dev):
        mismatches.append(f"golden made {len(ref)} BitLinear calls, the device run {len(dev)}")
    return GoldenComparison(ref_ids, dev_ids, min(len(ref), len(dev)), mismatches)


