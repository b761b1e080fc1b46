"""Host-driver figures: packing rate, simulated cycles/s of the sim transport, decode tokens/s in
simulation for a ~1M and a ~20M parameter model in matmul mode and for the shipped h128 in decoder
mode, link efficiency, and projected board tokens/s.

    .venv/bin/python bench/driver_bench.py [--tokens 8] [--decoder-tokens 64] [--skip-models] [--presets sim tiny]

Decoder mode also splits each token's time into the simulator's CPU time and the host's, so the
figure "with a core each" (their sum: the two take turns) does not depend on what else this
machine runs.

The first run builds the Verilated boards (minutes); later runs reuse build/sim/.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")

import bitlane  # noqa: E402
from bitlane.contract import protocol as p  # noqa: E402
from bitlane.contract.packing import pack_weights  # noqa: E402
from bitlane.sw.placement import max_field  # noqa: E402

# microsoft/bitnet-b1.58-2B-4T: 30 layers of q 2560x2560, k/v 640x2560, o 2560x2560,
# gate/up 6912x2560, down 2560x6912 -> 2.08e9 ternary weights
BITNET_2B_TRITS = 30 * (2 * 2560 * 2560 + 2 * 640 * 2560 + 3 * 6912 * 2560)

MODELS = {  # name -> golden.BitNetConfig fields
    "1M": dict(vocab_size=300, hidden_size=128, intermediate_size=352, num_hidden_layers=4,
               num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512),
    "20M": dict(vocab_size=300, hidden_size=512, intermediate_size=1376, num_hidden_layers=6,
                num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=512),
}


def bench_packing() -> None:
    from bitlane.contract.config import preset

    cfg = preset("sim")
    rng = np.random.default_rng(0)
    t = rng.integers(-1, 2, (6912, 2560), dtype=np.int8)  # one 2B-4T MLP matrix
    pack_weights(t[:64], cfg.lanes, cfg.k_per_cycle)
    start = time.perf_counter()
    pack_weights(t, cfg.lanes, cfg.k_per_cycle)
    dt = time.perf_counter() - start
    rate = t.size / dt
    print(f"packing: {t.size / 1e6:.1f}M trits (6912 x 2560) in {dt:.3f} s = {rate / 1e6:.0f}M trits/s; "
          f"all {BITNET_2B_TRITS / 1e9:.2f}G BitLinear weights of a 2B model: {BITNET_2B_TRITS / rate:.0f} s")


def bench_sim_rate(preset_name: str) -> None:
    """One long RUN (no host traffic while it runs): cycles per second of wall time."""
    with bitlane.connect(f"sim://{preset_name}", timeout=600) as acc:
        caps = acc.caps
        ks = min(caps.max_k // caps.k_per_cycle, caps.act_depth, 512)
        rt = min(caps.weight_depth // ks, caps.out_depth, max_field(p.RunArgs, "rows") // caps.lanes)
        n = max(1, min(caps.act_depth // ks, caps.out_depth // rt, 64))
        run = p.run(0, 0, 0, rt * caps.lanes, ks * caps.k_per_cycle, n)
        best = 0.0
        for _ in range(3):
            start = time.perf_counter()
            cycles = p.unpack_run_response(acc.request(p.Cmd.RUN, run))
            best = max(best, cycles / (time.perf_counter() - start))
    print(f"sim://{preset_name}: {best / 1e6:.3f} M simulated cycles/s "
          f"({caps.lanes * caps.k_per_cycle} MACs/cycle, RUN of {cycles:,} cycles, best of 3)")


def bench_model(name: str, url: str, tokens: int, workdir: Path) -> None:
    import torch

    from bitlane import golden
    from bitlane.sw.session import DeviceSession, format_summary

    path = workdir / name
    if not (path / "config.json").exists():
        golden.make_random_checkpoint(path, MODELS[name], seed=1)
    model = golden.load_model(path)
    torch.set_num_threads(max(1, (os.cpu_count() or 2) - 1))  # leave a core to the simulator
    ternary = model.num_parameters()["ternary"]
    with DeviceSession(model, bitlane.connect(url, timeout=600), progress=False, project=True) as session:
        golden.generate(model, [256, 72, 101, 108, 108, 111], tokens, greedy=True, eos_token_ids=set())
        summary = session.summary()
    print(f"{name} model ({ternary / 1e6:.1f}M ternary weights) on {url}, {tokens} tokens:")
    print("  " + format_summary(summary).replace("\n", "\n  "))


def _cpu_seconds(pid: int) -> float:
    """A process's user + system CPU time (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def bench_decoder(model_dir: Path, tokens: int) -> None:
    """Decoder mode on sim://sim: wall tokens/s, and the simulator's and the host's CPU time per token."""
    from bitlane import golden
    from bitlane.golden.integer import IntegerModel
    from bitlane.sw.decoder_session import DecoderRunner, load_decoder, plan_decoder

    import torch

    from threadpoolctl import threadpool_limits

    torch.set_num_threads(max(1, (os.cpu_count() or 2) - 1))  # as the sim backend does: a core for the simulator
    threadpool_limits(1, user_api="blas")
    model = IntegerModel.load(model_dir)
    with bitlane.connect("sim://sim", timeout=600) as acc:
        image = plan_decoder(model, acc.caps)
        load_decoder(model, image, acc)
        runner = DecoderRunner(model, image, acc)
        pid = acc.transport.process.pid
        golden.generate(runner, [10], 1, greedy=True)  # warm-up: the first DECODE, torch and numpy set up
        steps0, cycles0 = runner.decoded_tokens, runner.decode_cycles
        sim0, host0, wall0 = _cpu_seconds(pid), time.process_time(), time.perf_counter()
        golden.generate(runner, [10], tokens, greedy=True, eos_token_ids=set())
        wall, host = time.perf_counter() - wall0, time.process_time() - host0
        sim = _cpu_seconds(pid) - sim0
        steps, cycles = runner.decoded_tokens - steps0, runner.decode_cycles - cycles0  # one DECODE a token
    print(f"{model_dir} decoder mode on sim://sim, {tokens} tokens: {tokens / wall:.2f} tokens/s on this machine; "
          f"per token {cycles / steps:,.0f} simulated cycles, simulator {1e3 * sim / steps:.1f} ms CPU "
          f"({cycles / sim / 1e6:.3f} M engine cycles per CPU second), host {1e3 * host / steps:.1f} ms CPU: "
          f"{steps / (sim + host):.1f} tokens/s with a core each")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=8, help="tokens to decode per model (8)")
    parser.add_argument("--presets", nargs="+", default=["tiny", "sim"], help="sim presets to time (tiny sim)")
    parser.add_argument("--decoder-tokens", type=int, default=64, help="tokens to decode in decoder mode (64)")
    parser.add_argument("--skip-models", action="store_true", help="only packing and simulator speed")
    args = parser.parse_args()
    bench_packing()
    for name in args.presets:
        bench_sim_rate(name)
    if not args.skip_models:
        with tempfile.TemporaryDirectory() as tmp:
            for name in MODELS:
                bench_model(name, "sim://sim", args.tokens, Path(tmp))
        bench_decoder(Path(__file__).resolve().parents[1] / "models" / "bitnet-kjv-h128", args.decoder_tokens)


if __name__ == "__main__":
    main()
