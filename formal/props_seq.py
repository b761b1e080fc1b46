"""Property 6: the sequencer's addressing and the core's run timing."""
from __future__ import annotations

from amaranth import Module, Signal
from amaranth.asserts import AnySeq
from amaranth.hdl import Assert, Assume

from .common import Harness, config

def admitted(cfg, args: dict):
    """The RUN checks of docs/protocol.md (BAD_ARGUMENT, BAD_ADDRESS), restated in wide
    arithmetic (nothing can wrap): returns (ok, row_tiles, k_steps)."""
    rows, cols, n = args["rows"], args["cols"], args["n_vectors"]
    row_tiles = (rows + cfg.lanes - 1) // cfg.lanes
    k_steps = (cols + cfg.k_per_cycle - 1) // cfg.k_per_cycle
    ok = ((rows != 0) & (cols != 0) & (n != 0) & (cols <= cfg.max_k)
          & (args["w_base"] + row_tiles * k_steps <= cfg.weight_depth)
          & (args["a_base"] + n * k_steps <= cfg.act_depth)
          & (args["o_base"] + n * row_tiles <= cfg.out_depth))
    return ok, row_tiles, k_steps


def admitted_widths(cfg) -> dict:
    """Bits that hold every value of each RUN field that the check can admit: an admitted RUN
    has w_base <= weight_depth, a_base <= act_depth, o_base <= out_depth, cols <= max_k,
    rows <= out_depth * lanes and n_vectors <= min(act_depth, out_depth). Driving the fields
    with free values of these widths (zero-extended) therefore loses no admitted RUN, and
    keeps the solver's multipliers small."""
    return {"w_base": cfg.weight_depth.bit_length(), "a_base": cfg.act_depth.bit_length(),
            "o_base": cfg.out_depth.bit_length(), "rows": (cfg.out_depth * cfg.lanes).bit_length(),
            "cols": cfg.max_k.bit_length(), "n_vectors": min(cfg.act_depth, cfg.out_depth).bit_length()}


def free_run_args(m: Module, dut, cfg):
    """Drive the RUN arguments freely; return them and a latched copy taken at `start`."""
    args, latched = {}, {}
    for name, width in admitted_widths(cfg).items():
        args[name] = AnySeq(width)
        m.d.comb += getattr(dut, name).eq(args[name])
        latched[name] = Signal(width, name=f"run_{name}")
    return args, latched


class SequencerAddresses(Harness):
    """P6a: for every RUN the range check admits (started at any time), the sequencer issues
    exactly n_vectors * row_tiles * k_steps pairs, one per cycle, in the order of
    docs/protocol.md, each with exactly the documented addresses (weight w_base + rt*K + ks,
    activation a_base + n*K + ks, output o_base + n*RT + rt, `last` at ks = K - 1), so every
    address lies inside the ranges the check admitted; then it stops."""

    def __init__(self, **fields) -> None:
        self.cfg = config("seq", **fields)

    def build(self, m: Module) -> None:
        from hw.sequencer import Sequencer

        cfg = self.cfg
        m.submodules.dut = dut = Sequencer(cfg)
        start = AnySeq(1)
        m.d.comb += dut.start.eq(start)
        args, run = free_run_args(m, dut, cfg)
        ok, _, _ = admitted(cfg, args)
        begin = start & ~dut.issuing
        with m.If(begin):
            m.d.comb += Assume(ok)
            m.d.sync += [run[name].eq(args[name]) for name in run]
        _, RT, K = admitted(cfg, run)

        active = Signal()  # a run was started and has not finished issuing
        ks, rt, n = Signal(8), Signal(8), Signal(8)
        with m.If(begin):
            m.d.sync += [active.eq(1), ks.eq(0), rt.eq(0), n.eq(0)]
        m.d.comb += Assert(dut.issuing == active)
        m.d.comb += Assert(dut.valid == dut.issuing)
        with m.If(dut.valid):
            m.d.comb += [
                Assert(dut.w_addr == run["w_base"] + rt * K + ks),
                Assert(dut.a_addr == run["a_base"] + n * K + ks),
                Assert(dut.o_addr == run["o_base"] + n * RT + rt),
                Assert(dut.last == (ks == K - 1)),
                # the admitted ranges, stated on their own
                Assert((dut.w_addr >= run["w_base"]) & (dut.w_addr < run["w_base"] + RT * K)),
                Assert((dut.a_addr >= run["a_base"]) & (dut.a_addr < run["a_base"] + run["n_vectors"] * K)),
                Assert((dut.o_addr >= run["o_base"]) & (dut.o_addr < run["o_base"] + run["n_vectors"] * RT)),
            ]
            with m.If(ks != K - 1):
                m.d.sync += ks.eq(ks + 1)
            with m.Else():
                m.d.sync += ks.eq(0)
                with m.If(rt != RT - 1):
                    m.d.sync += rt.eq(rt + 1)
                with m.Else():
                    m.d.sync += rt.eq(0)
                    with m.If(n != run["n_vectors"] - 1):
                        m.d.sync += n.eq(n + 1)
                    with m.Else():
                        m.d.sync += active.eq(0)


class CoreRunTiming(Harness):
    """P6b: in the core, after a `start` of an admitted RUN, `done` rises exactly once, exactly
    N + run_overhead cycles after the start pulse (N = n_vectors * row_tiles * k_steps,
    run_overhead from sw.model_device: FETCH_STAGES + lane latency + 1, the RUN response's
    documented cycle count), `busy` is high from the cycle after start up to and including
    done's cycle and low after it, and busy_cycles grows by exactly N per run."""

    def __init__(self, **fields) -> None:
        self.cfg = config("core", **fields)

    def build(self, m: Module) -> None:
        from hw.core import TernaryCore
        from sw.model_device import run_overhead

        cfg = self.cfg
        overhead = run_overhead(cfg)
        m.submodules.dut = dut = TernaryCore(cfg)
        start = AnySeq(1)
        m.d.comb += dut.start.eq(start)
        args, run = free_run_args(m, dut, cfg)
        for name in ("w_wr_addr", "w_wr_data", "w_wr_en", "a_wr_addr", "a_wr_data", "a_wr_en", "o_rd_addr"):
            port = getattr(dut, name)
            m.d.comb += port.eq(AnySeq(len(port)))
        m.d.comb += dut.clear_counters.eq(0)
        # the command processor's side of the contract: writes and starts only while not busy
        m.d.comb += Assume(~dut.busy | ~(dut.w_wr_en | dut.a_wr_en | start))
        ok, _, _ = admitted(cfg, args)
        with m.If(start):
            m.d.comb += Assume(ok)
            m.d.sync += [run[name].eq(args[name]) for name in run]
        _, RT, K = admitted(cfg, run)
        total = run["n_vectors"] * RT * K

        running = Signal()
        elapsed = Signal(8)  # cycles since the start pulse
        busy_at_start = Signal(cfg.counter_bits)
        with m.If(start):
            m.d.sync += [running.eq(1), elapsed.eq(1)]
        with m.Elif(running):
            m.d.sync += elapsed.eq(elapsed + 1)
        due = running & (elapsed == total + overhead)
        m.d.comb += [
            Assert(dut.done == due),
            Assert(dut.busy == (running & (elapsed >= 1))),
            Assert(~dut.busy | (elapsed <= total + overhead)),
        ]
        with m.If(due):
            m.d.sync += running.eq(0)
        # busy_cycles counts one cycle late: checked the cycle after done
        after_done = Signal()
        m.d.sync += after_done.eq(due)
        with m.If(start):
            m.d.sync += busy_at_start.eq(dut.busy_cycles)
        total_q = Signal(16)
        m.d.sync += total_q.eq(total)
        with m.If(after_done):
            m.d.comb += Assert(dut.busy_cycles == (busy_at_start + total_q)[:cfg.counter_bits])
