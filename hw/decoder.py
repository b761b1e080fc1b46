"""The decoder engine: runs one decoder step (every layer of one token) as a program, next to the
ternary core (the instruction set and its model are contract/decoder.py).

    program memory --> fetch, decode, read up to five registers --> one unit --> write back
                                                                    |- ScalarUnit     (hw/decoder_scalar.py)
                                                                    |- VectorUnit     (hw/decoder_vector.py; owns MAIN, CONST, COPY)
                                                                    |- AttentionUnit  (hw/attention.py; owns the KV cache)
                                                                    '- TernaryCore    (a RUN through `core_*`)

One instruction at a time, but for the ternary core: the engine is a sequencer, not a pipeline. What
costs cycles is the vector elements (`vector_lanes` per cycle), the ternary products and attention,
which the units stream. An instruction's word is fetched while its predecessor runs and is loaded (its
registers read) in the cycle that one retires; it then starts its unit in one issue cycle, in which it
is also decoded into registered flags (which done signal it waits for, which results it writes), and
retires in the unit's `done` cycle. A TRUN retires in the cycle after its issue while the core runs on;
an instruction that waits for the core (WAIT_CORE, TRUN, WFETCH, HALT: contract/decoder.py) stays in
its issue cycle until the core is idle. Its results are latched then and written to the register file from
registers (R[r0] in the next cycle; a second result in the first free cycle of the write port),
forwarded to the operands meanwhile. Even an ALU op (MOVI, ADD, SUB, MAX) retires the cycle
after its issue: its result is registered in the scalar unit, so that no path runs from a register
read through the adder into the register file's write port in one cycle (that path limited the
ULX3S's clock). contract/decoder.py `instruction_cycles` is the
count; counters split the cycles of a run by unit, for sim_tests/test_decoder.py and bench/decoder_bench.py.
"""
from amaranth import Cat, Module, Mux, Signal, signed
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from bitlane.contract.config import CoreConfig
from bitlane.contract.decoder import (CORE_WAIT_OPS, REG_BITS, REGISTERS, SCALAR_OPS, VECTOR_OPS, WAIT_CORE,
                                      Instruction, MachineShape, Op)
from bitlane.contract.kv_stream import kv_row_words, region_address
from bitlane.hw.attention import AttentionOp, AttentionUnit
from bitlane.hw.core import TernaryCore, core_signature
from bitlane.hw.decoder_scalar import PAIR_RESULT, ScalarUnit
from bitlane.hw.decoder_vector import VectorUnit
from bitlane.hw.kv_fetch import KvLoad, KvStore, kv_write_signature
from bitlane.hw.records import RunArgsLayout, layout
from bitlane.hw.sdram_port import share_port
from bitlane.hw.weight_fetch import WeightFetch, weight_mem_signature

InstructionLayout = layout(Instruction)
# the engine's ports that face the ternary core (DecoderCore wires them inside)
CORE_FACING = frozenset({"act_wr_addr", "act_wr_data", "act_wr_en", "out_rd_addr", "out_rd_data", "core_start",
                         "core_run", "core_done"})
# the engine's WFETCH ports, to a hw/weight_fetch.py WeightFetch (DecoderCore wires them; without SDRAM
# it answers every WFETCH at once), and the cycles the last run waited for them (not in `cycles`)
FETCH_FACING = frozenset({"fetch_start", "fetch_sdram_addr", "fetch_w_addr", "fetch_words", "fetch_done",
                          "cycles_fetch"})
READS = 5             # registers read per instruction (one port each): r1, r1 | 1, r2, r2 | 1, r3
COUNTER_BITS = 32
# ops that write R[r0] from the vector unit's y0 (VNORM also writes R[r2] from y2)
VECTOR_RESULT = frozenset({Op.VMAXABS, Op.VSHIFT, Op.VNORM, Op.VSCALE, Op.VROPE, Op.VRESID, Op.VRELU2, Op.VMUL})


def engine_signature(shape: MachineShape) -> wiring.Signature:
    return wiring.Signature({
        # host side (used while not busy)
        "prog_wr_addr": In(range(shape.program_depth)),
        "prog_wr_data": In(InstructionLayout),
        "prog_wr_en": In(1),
        "host_bank": In(2),
        "host_addr": In(16),
        "host_wr_data": In(signed(32)),
        "host_wr_en": In(1),
        "host_rd_data": Out(signed(32)),
        "reg_rd_addr": In(range(REGISTERS)),
        "reg_rd_data": Out(signed(REG_BITS)),
        "start": In(1),
        "pos": In(16),
        "busy": Out(1),
        "done": Out(1),
        # cycle counters of the last run: total and per unit
        "cycles": Out(COUNTER_BITS),
        "cycles_core": Out(COUNTER_BITS),
        "cycles_attention": Out(COUNTER_BITS),
        "cycles_vector": Out(COUNTER_BITS),
        "cycles_scalar": Out(COUNTER_BITS),
        # the ternary core's activation and output memories and its RUN
        "act_wr_addr": Out(range(shape.act_depth)),
        "act_wr_data": Out(8 * shape.k_per_cycle),
        "act_wr_en": Out(1),
        "out_rd_addr": Out(range(shape.out_depth)),
        "out_rd_data": In(32 * shape.lanes),
        "core_start": Out(1),
        "core_run": Out(RunArgsLayout),
        "core_done": In(1),
        # WFETCH: weight words from SDRAM into the core's weight memory (hw/weight_fetch.py)
        "fetch_start": Out(1),
        "fetch_sdram_addr": Out(32),
        "fetch_w_addr": Out(16),
        "fetch_words": Out(16),
        "fetch_done": In(1),
        "cycles_fetch": Out(COUNTER_BITS),
    })


def engine_host_signature(shape: MachineShape) -> wiring.Signature:
    """The engine's ports that face the host: DecoderCore's `engine_*` ports, which the command processor
    (hw/cmdproc.py) drives through its flipped `engine` port."""
    return wiring.Signature({name: member for name, member in engine_signature(shape).members.items()
                             if name not in CORE_FACING | FETCH_FACING})


class PortGroup:
    """Some of a component's ports as an interface of their own (`signature`, one attribute per member),
    so that `wiring.connect` joins them to a matching port of another component."""

    def __init__(self, signature: wiring.Signature, ports: dict) -> None:
        self.signature = signature
        self.__dict__.update(ports)


class DecoderEngine(wiring.Component):
    """Fetches and executes a contract/decoder.py program for the token at position `pos`.

    `start` (a pulse while not `busy`) runs the program from instruction 0 to HALT; `done` pulses in
    the last busy cycle. Between runs the host writes the program (`prog_wr_*`), the general banks
    (`host_*`, a read answers in the next cycle) and reads registers (`reg_rd_*`, next cycle).
    The ternary core's memories are the engine's OUT and ACT banks: `out_rd_data` is the core's output
    word (lanes of 32 bits, sign-extended) the cycle after `out_rd_addr`.

    With `kv_config` (a configuration whose decoder has `kv_sdram`) the engine executes KVLOAD and
    KVAPPEND's store (contract/kv_stream.py) with hw/kv_fetch.py's KvLoad and KvStore: `kv_rd` is a read
    port of the SDRAM like WeightFetch's (`kv_loading` while KvLoad uses it), `kv_wr` a write port. A
    KVLOAD, and the wait for a store to drain after its KVAPPEND, count to `cycles_fetch`, not `cycles`.
    """

    def __init__(self, shape: MachineShape, kv_bits: int = 16, kv_config: CoreConfig | None = None) -> None:
        self.shape, self.kv_bits, self.kv_config = shape, kv_bits, kv_config
        members = dict(engine_signature(shape).members.items())
        if kv_config is not None:  # the KV cache in SDRAM: KVLOAD's reads, KVAPPEND's writes (hw/kv_fetch.py)
            members = {**members, "kv_rd": Out(weight_mem_signature(kv_config)), "kv_loading": Out(1),
                       "kv_wr": Out(kv_write_signature(kv_config))}
        super().__init__(members)

    def elaborate(self, platform) -> Module:
        m = Module()
        shape = self.shape
        m.submodules.program = program = Memory(shape=InstructionLayout, depth=shape.program_depth, init=[])
        # five read ports: LUT RAM copies (block RAM would take two EBRs per copy for 64 words)
        m.submodules.registers = registers = Memory(shape=signed(REG_BITS), depth=REGISTERS, init=[],
                                                    attrs={"ram_style": "distributed"})
        m.submodules.scalar = scalar = ScalarUnit()
        m.submodules.vector = vector = VectorUnit(shape.bank_depth, shape.lanes, shape.k_per_cycle,
                                                  shape.out_depth, shape.act_depth, shape.vector_lanes)
        m.submodules.attention = attention = AttentionUnit(
            head_dim=shape.head_dim, kv_heads=shape.kv_heads, layers=shape.layers, context=shape.context,
            kv_bits=self.kv_bits, macs=shape.attention_macs, in_lanes=shape.vector_lanes)
        prog_wr, prog_rd = program.write_port(), program.read_port()
        reg_wr = registers.write_port()
        # one read port per operand (yosys copies the small register file), read asynchronously and
        # registered here (`operands`): a synchronous port on LUT RAM becomes a registered address
        # and an asynchronous read, which put the 64-word read inside the scalar unit's cycle (the
        # ULX3S's critical path); registered data keeps it in the loading cycle
        reg_rd = [registers.read_port(domain="comb") for _ in range(READS)]

        ins = Signal(InstructionLayout)
        # the program word at `fetch`: read from the memory a cycle ahead and registered (`word`), so that
        # an instruction is decoded (`load`) in the cycle its predecessor retires, at register numbers
        # that come from flip-flops (the block RAM's output takes 5.8 ns on the ECP5, and the register
        # numbers drive the read addresses of every copy of the register file: the ULX3S's critical
        # path). An instruction retires two cycles after its load at the earliest, when the next word
        # is in `word`. While idle the engine reads word 0 every cycle, so a DECODE loads it at once;
        # `settle` counts down the cycles until `word` holds what a program write put there (a start
        # that comes sooner waits in FETCH, cycles not counted: the contract's count is unchanged).
        word = Signal(InstructionLayout)
        m.d.sync += word.eq(prog_rd.data)
        settle = Signal(range(3))
        with m.If(prog_wr.en):
            m.d.sync += settle.eq(2)
        with m.Elif(settle != 0):
            m.d.sync += settle.eq(settle - 1)
        word_ready = (settle <= 1) & ~prog_wr.en  # `word` holds word 0 as written, from the next cycle
        fetch = Signal(range(shape.program_depth + 1))
        fetch_next = Signal.like(fetch)  # fetch + 1, registered: the read address waits only for `load`'s select
        load = Signal()  # this cycle: ins <= the word at `fetch`, its registers are read
        pos = Signal(16)
        op = ins.op

        m.d.comb += [
            prog_wr.addr.eq(self.prog_wr_addr), prog_wr.data.eq(self.prog_wr_data),
            prog_wr.en.eq(self.prog_wr_en & ~self.busy),
            prog_rd.addr.eq(Mux(self.busy, Mux(load, fetch_next, fetch), 0)),
            # the host port of the banks and the core's memories go through the vector unit
            vector.host_bank.eq(self.host_bank), vector.host_addr.eq(self.host_addr),
            vector.host_wr_data.eq(self.host_wr_data), vector.host_wr_en.eq(self.host_wr_en & ~self.busy),
            self.host_rd_data.eq(vector.host_rd_data),
            self.act_wr_addr.eq(vector.act_wr_addr), self.act_wr_data.eq(vector.act_wr_data),
            self.act_wr_en.eq(vector.act_wr_en),
            self.out_rd_addr.eq(vector.out_rd_addr),
            vector.out_rd_data.eq(self.out_rd_data),
            # the vector unit streams A into the attention unit and its output into D
            attention.i.valid.eq(vector.att_o.valid), attention.i.payload.eq(vector.att_o.payload),
            vector.att_o.ready.eq(attention.i.ready),
            vector.att_i.valid.eq(attention.o.valid), vector.att_i.payload.eq(attention.o.payload.value),
            attention.o.ready.eq(vector.att_i.ready),
        ]
        with m.If(load):
            m.d.sync += [ins.eq(word), fetch.eq(fetch_next), fetch_next.eq(fetch_next + 1)]
        # The core runs beside the engine: `core_running` from a TRUN's start to its RUN's done. Whether
        # an instruction waits for the core is decoded from its word as it is loaded (`wait_core`), so
        # that the issue cycle's stall is two flip-flops.
        core_running, wait_core, stall = Signal(), Signal(), Signal()
        with m.If(self.core_start):
            m.d.sync += core_running.eq(1)
        with m.Elif(self.core_done):
            m.d.sync += core_running.eq(0)
        with m.If(load):
            m.d.sync += wait_core.eq((word.flags & WAIT_CORE).any() | Cat(*(word.op == o for o in CORE_WAIT_OPS)).any())
        m.d.comb += stall.eq(wait_core & core_running)

        eu = Signal(signed(REG_BITS))  # ATTEND's exponent, on every output element
        with m.If(attention.o.valid & attention.o.ready):
            m.d.sync += eu.eq(attention.o.payload.exponent)

        # Registers. The operands of an instruction are read in the cycle it is loaded, at the fetched
        # word's register numbers (the read address never waits for `load`, which comes from the units'
        # done signals), and registered (`operands`, held until the next load) with what the register
        # file will hold. An instruction's results are latched in the cycle it retires and written from
        # registers, so that no path runs from a unit's done signal into the write port of every LUT-RAM
        # copy (that path limited the ULX3S's clock): the first, R[r0], in `wb_*` and written in the next
        # cycle (the next instruction's issue cycle); the second (R[r0 | 1] of a pair, VNORM's R[r2]) in
        # `second_*`, written in the first cycle after that in which the port is free (at the latest the
        # next retire, two cycles on: a retire never finds `wb_en`). So a read takes, newest first, a
        # second and a first result retiring this cycle, the waiting second result, the first result
        # being written, then the port's data; the units see registers only (no forwarding select after
        # the register: that was the ULX3S core's critical path).
        fields = word
        operands = [Signal(signed(REG_BITS), name=f"operand{k}") for k in range(READS)]
        wb_data = Signal(signed(REG_BITS))
        wb_addr = Signal(range(REGISTERS))
        wb_en = Signal()
        second_data = Signal(signed(REG_BITS))
        second_addr = Signal(range(REGISTERS))
        second_en = Signal()
        # what the instruction writes when it retires, decoded in its issue cycle (registered, so that the
        # retire cycle's selects come from flip-flops): R[r0] from the scalar unit's w0, the vector unit's
        # y0 or ATTEND's exponent; the second result from w1 or y2, at `second_target`
        first_from = Signal(3)
        second_from = Signal(2)
        second_target = Signal(range(REGISTERS))
        retiring = Signal()  # this cycle: the instruction is done, its results are latched
        first_en = Signal()
        new_second_en = Signal()
        first_data = Signal(signed(REG_BITS))
        new_second_data = Signal(signed(REG_BITS))
        m.d.comb += [
            first_en.eq(retiring & first_from.any() & (ins.r0 != 0)),
            new_second_en.eq(retiring & second_from.any() & (second_target != 0)),
            first_data.eq(Mux(first_from[0], scalar.w0, Mux(first_from[1], vector.y0, eu))),
            new_second_data.eq(Mux(second_from[0], scalar.w1, vector.y2)),
        ]
        # A pair's second register is r | 1 (pairs are aligned, contract/decoder.py): no adder between the
        # program word and the read addresses.
        addresses = (fields.r1, fields.r1 | 1, fields.r2, fields.r2 | 1, fields.r3)
        for port, operand, fetched in zip(reg_rd, operands, addresses):
            m.d.comb += port.addr.eq(fetched)
            value = Mux(wb_en & (port.addr == wb_addr), wb_data, port.data)
            value = Mux(second_en & (port.addr == second_addr), second_data, value)
            value = Mux(first_en & (port.addr == ins.r0), first_data, value)
            value = Mux(new_second_en & (port.addr == second_target), new_second_data, value)
            with m.If(load | ~self.busy):
                m.d.sync += operand.eq(value)
        with m.If(~self.busy):
            m.d.comb += reg_rd[0].addr.eq(self.reg_rd_addr)
        m.d.comb += self.reg_rd_data.eq(operands[0])
        x = operands  # R[r1], R[r1 | 1], R[r2], R[r2 | 1], R[r3]
        m.d.sync += wb_en.eq(first_en)
        with m.If(first_en):
            m.d.sync += [wb_addr.eq(ins.r0), wb_data.eq(first_data)]
        with m.If(new_second_en):
            m.d.sync += [second_addr.eq(second_target), second_data.eq(new_second_data), second_en.eq(1)]
        with m.If(wb_en):
            m.d.comb += [reg_wr.addr.eq(wb_addr), reg_wr.data.eq(wb_data), reg_wr.en.eq(1)]
        with m.Elif(second_en):
            m.d.comb += [reg_wr.addr.eq(second_addr), reg_wr.data.eq(second_data), reg_wr.en.eq(1)]
            with m.If(~new_second_en):
                m.d.sync += second_en.eq(0)

        # operands: the same five values go to every unit
        m.d.comb += [
            scalar.op.eq(op), scalar.imm.eq(ins.imm.as_signed()),
            scalar.x1.eq(x[0]), scalar.x1b.eq(x[1]), scalar.x2.eq(x[2]), scalar.x2b.eq(x[3]), scalar.x3.eq(x[4]),
            vector.op.eq(op), vector.n.eq(ins.n), vector.imm.eq(ins.imm), vector.pos.eq(pos),
            vector.a_bank.eq(ins.a_bank), vector.b_bank.eq(ins.b_bank), vector.c_bank.eq(ins.c_bank),
            vector.d_bank.eq(ins.d_bank), vector.a_addr.eq(ins.a_addr), vector.b_addr.eq(ins.b_addr),
            vector.c_addr.eq(ins.c_addr), vector.d_addr.eq(ins.d_addr),
            vector.x1.eq(x[0]), vector.x2.eq(x[2]), vector.x3.eq(x[4]),
            attention.cmd.payload.op.eq(Mux(op == Op.ATTEND, AttentionOp.ATTEND,
                                            Mux(ins.imm[0], AttentionOp.APPEND_V, AttentionOp.APPEND_K))),
            attention.cmd.payload.layer.eq(ins.r2), attention.cmd.payload.kv_head.eq(ins.r3),
            attention.cmd.payload.pos.eq(pos), attention.cmd.payload.exp.eq(x[0]),
            self.core_run.w_base.eq(ins.imm), self.core_run.a_base.eq(ins.a_addr),
            self.core_run.o_base.eq(ins.d_addr), self.core_run.rows.eq(ins.n), self.core_run.cols.eq(ins.b_addr),
            self.core_run.n_vectors.eq(1),
            self.fetch_sdram_addr.eq(ins.imm), self.fetch_w_addr.eq(ins.d_addr), self.fetch_words.eq(ins.n),
        ]
        kv_load = kv_store = None
        if self.kv_config is not None:
            m.submodules.kv_load = kv_load = KvLoad(self.kv_config)
            m.submodules.kv_store = kv_store = KvStore(self.kv_config)
            wiring.connect(m, kv_load.mem, wiring.flipped(self.kv_rd))
            wiring.connect(m, kv_store.mem, wiring.flipped(self.kv_wr))
            region = region_address(ins.imm)  # an Amaranth value here
            m.d.comb += [
                self.kv_loading.eq(kv_load.busy),
                kv_load.sdram_addr.eq(region), kv_load.rows.eq(pos), kv_load.is_v.eq(ins.imm[0]),
                kv_load.layer.eq(ins.r2), kv_load.kv_head.eq(ins.r3),
                kv_store.sdram_addr.eq(region + pos * kv_row_words(shape.head_dim)), kv_store.exp.eq(x[0]),
                kv_store.element_valid.eq(attention.i.valid & attention.i.ready & (op == Op.KVAPPEND)),
                kv_store.element.eq(attention.i.payload),
            ]
        m.d.sync += [self.done.eq(0), self.fetch_start.eq(0)]  # a pulse, seen by WAIT (done may follow at once)

        # Cycle counters: every cycle of a run to `cycles`, and the cycles an instruction waits for its
        # unit to that unit's counter; the rest are issue cycles
        # (contract/decoder.py `instruction_cycles`).
        # A WFETCH's wait (unit bit 4) goes to `cycles_fetch` only: it depends on the SDRAM's state, so a
        # DECODE's cycles leave it out (contract/decoder.py WFETCH).
        unit = Signal(5)   # the waiting instruction's unit: core, attention, vector, scalar, weight fetch
        counted = Signal(4)
        fetching = Signal()  # the FETCH state: a start right after a program write waits for `word`
        counters = [self.cycles_core, self.cycles_attention, self.cycles_vector, self.cycles_scalar]
        with m.If(self.busy & unit[4]):
            m.d.sync += self.cycles_fetch.eq(self.cycles_fetch + 1)
        with m.Elif(self.busy & ~fetching):
            m.d.sync += self.cycles.eq(self.cycles + 1)
            for k, counter in enumerate(counters):
                with m.If(counted[k]):
                    m.d.sync += counter.eq(counter + 1)

        def retire():
            """The instruction is done: latch its results, load the next (fetched while it ran)."""
            m.d.comb += [retiring.eq(1), load.eq(1)]
            m.d.sync += unit.eq(0)
            m.next = "EXECUTE"

        def issue(waits_for: int, first=0, second=0, target=0) -> None:
            """The issue cycle's decode: the unit bit it waits for (`unit`), which results it writes."""
            m.d.sync += [unit.eq(waits_for), first_from.eq(first), second_from.eq(second), second_target.eq(target)]
            m.next = "WAIT"

        stream_op = (op == Op.KVAPPEND) | (op == Op.ATTEND)
        executing = Signal()  # the EXECUTE state: the instruction's issue cycle(s)
        kv_loading = Signal()  # the instruction waiting with unit bit 4 is a KVLOAD, not a WFETCH
        storing = Signal()     # the instruction waiting is a KVAPPEND whose row goes to SDRAM
        # the waiting instruction's unit is done: every term a flip-flop (`unit`) and a done signal
        finished = Signal()
        m.d.comb += finished.eq((unit[3] & scalar.done) | ((unit[2] | unit[1]) & vector.done)
                                | unit[0]  # a TRUN: the core runs on
                                | (unit[4] & Mux(kv_loading, kv_load.done if kv_load else 0, self.fetch_done)))
        with m.FSM():
            with m.State("IDLE"):
                with m.If(self.start):
                    m.d.sync += [fetch.eq(0), fetch_next.eq(1), pos.eq(self.pos), self.busy.eq(1), self.cycles.eq(0),
                                 self.cycles_fetch.eq(0),
                                 *(counter.eq(0) for counter in counters)]
                    with m.If(word_ready):
                        m.next = "DECODE"
                    with m.Else():
                        m.next = "FETCH"
            with m.State("FETCH"):  # word 0 written less than two cycles ago: wait for `word` (not counted)
                m.d.comb += fetching.eq(1)
                with m.If(settle <= 1):
                    m.next = "DECODE"
            with m.State("DECODE"):  # word 0 is in `word`
                m.d.comb += load.eq(1)
                m.next = "EXECUTE"
            with m.State("EXECUTE"):
                with m.If(stall):  # waiting for the core, counted to it
                    m.d.comb += counted.eq(0b0001)
                with m.Else():
                    m.d.comb += executing.eq(1)
                    m.d.sync += [kv_loading.eq(0), storing.eq(0)]
                    with m.Switch(op):
                        with m.Case(Op.HALT):
                            m.d.sync += [self.busy.eq(0), self.done.eq(1)]
                            m.next = "IDLE"
                        with m.Case(*SCALAR_OPS):
                            m.d.comb += scalar.start.eq(1)
                            pair = Cat(*(op == o for o in PAIR_RESULT)).any()
                            issue(0b1000, first=0b001, second=Cat(pair, 0), target=ins.r0 | 1)
                        with m.Case(*VECTOR_OPS):
                            m.d.comb += vector.start.eq(1)
                            writes_r0 = Cat(*(op == o for o in VECTOR_RESULT)).any()
                            issue(0b0100, first=Cat(0, writes_r0, 0), second=Cat(0, op == Op.VNORM), target=ins.r2)
                        with m.Case(Op.KVAPPEND, Op.ATTEND):
                            with m.If(attention.cmd.ready):
                                m.d.comb += vector.start.eq(1)
                                if kv_store is not None:  # KVAPPEND's store: the row to SDRAM as it passes
                                    m.d.comb += kv_store.start.eq((op == Op.KVAPPEND) & ins.imm[1])
                                    m.d.sync += storing.eq(op == Op.KVAPPEND)
                                issue(0b0010, first=Cat(0, 0, op == Op.ATTEND))
                        with m.Case(Op.TRUN):
                            m.d.comb += self.core_start.eq(1)
                            issue(0b0001)
                        with m.Case(Op.WFETCH):
                            m.d.sync += self.fetch_start.eq(1)
                            issue(0b10000)
                        if kv_load is not None:
                            with m.Case(Op.KVLOAD):
                                m.d.comb += kv_load.start.eq(1)
                                m.d.sync += kv_loading.eq(1)
                                issue(0b10000)
                        with m.Default():  # an unknown op stops the program (the host's program is checked)
                            m.d.sync += [self.busy.eq(0), self.done.eq(1)]
                            m.next = "IDLE"
            with m.State("WAIT"):
                m.d.comb += counted.eq(unit)
                with m.If(finished):
                    if kv_store is None:
                        retire()
                    else:  # a store still draining into the SDRAM port: wait, counted as SDRAM time
                        with m.If(storing & kv_store.busy):
                            m.d.sync += unit.eq(0b10000)
                            m.next = "STORE"
                        with m.Else():
                            retire()
            with m.State("STORE"):  # KVAPPEND's store draining
                m.d.comb += counted.eq(unit)
                if kv_store is not None:
                    with m.If(~kv_store.busy):
                        retire()
        # the attention unit's command is offered through an issue cycle and taken with the vector
        # unit's start (valid does not wait for ready)
        m.d.comb += attention.cmd.valid.eq(executing & stream_op)
        if kv_load is not None:
            with m.If(kv_load.busy):  # KVLOAD's rows go into the attention unit
                m.d.comb += [attention.cmd.valid.eq(kv_load.cmd.valid), attention.cmd.payload.eq(kv_load.cmd.payload),
                             kv_load.cmd.ready.eq(attention.cmd.ready),
                             attention.i.valid.eq(kv_load.i.valid), attention.i.payload.eq(kv_load.i.payload),
                             kv_load.i.ready.eq(attention.i.ready), vector.att_o.ready.eq(0)]
        return m


class DecoderCore(wiring.Component):
    """The ternary core and the decoder engine behind one interface: the core's own ports (what the
    v1 command processor drives: `core_signature`) plus the engine's host ports (`engine_*`). While the
    engine runs, it owns the core's activation writes, output reads and RUN start; otherwise the v1
    ports do, so matmul mode and decoder mode share one set of memories.

    With SDRAM (`config.sdram_words`) a hw/weight_fetch.py WeightFetch executes the engine's WFETCHes
    through `mem` (to the SDRAM port's wide read-only `fetch`, beside the command processor's `mem`:
    hw/sdram_port.py) and owns the weight memory's write port while the engine runs;
    without SDRAM a WFETCH is done at once and fetches nothing (the functional model faults on it)."""

    def __init__(self, config: CoreConfig, kv_bits: int = 16) -> None:
        if config.decoder is None:
            raise ValueError(f"config {config.name!r} has no decoder engine")
        shape = MachineShape.from_config(config)
        self.config, self.shape, self.kv_bits = config, shape, kv_bits
        engine = {f"engine_{name}": member for name, member in engine_host_signature(shape).members.items()}
        mem = {"mem": Out(weight_mem_signature(config))} if config.sdram_words else {}
        if shape.kv_sdram:  # KVAPPEND's stores: a write port beside the command processor's (hw/top.py)
            mem["kv_wr"] = Out(kv_write_signature(config))
        super().__init__({**core_signature(config).members, **engine, **mem})

    @property
    def core_port(self) -> PortGroup:
        """The ternary core's ports (`core_signature`), as TernaryCore has them."""
        signature = core_signature(self.config)
        return PortGroup(signature, {name: getattr(self, name) for name in signature.members})

    @property
    def engine_port(self) -> PortGroup:
        """The `engine_*` ports under their engine names (`engine_host_signature`)."""
        signature = engine_host_signature(self.shape)
        return PortGroup(signature, {name: getattr(self, f"engine_{name}") for name in signature.members})

    def elaborate(self, platform) -> Module:
        m = Module()
        m.submodules.core = core = TernaryCore(self.config)
        m.submodules.engine = engine = DecoderEngine(self.shape, self.kv_bits,
                                                     self.config if self.shape.kv_sdram else None)
        for name, member in engine_host_signature(self.shape).members.items():
            ours, theirs = getattr(self, f"engine_{name}"), getattr(engine, name)
            if member.flow == wiring.In:
                m.d.comb += theirs.eq(ours)
            else:
                m.d.comb += ours.eq(theirs)
        running = engine.busy
        w_wr = (self.w_wr_addr, self.w_wr_data, self.w_wr_en)
        if self.config.sdram_words:
            m.submodules.weight_fetch = fetch = WeightFetch(self.config)
            if self.shape.kv_sdram:  # WFETCH and KVLOAD share the read port, one at a time
                wiring.connect(m, engine.kv_wr, wiring.flipped(self.kv_wr))
                share_port(m, self.mem, engine.kv_loading, engine.kv_rd, fetch.mem)
            else:
                wiring.connect(m, fetch.mem, wiring.flipped(self.mem))
            m.d.comb += [fetch.fetch.start.eq(engine.fetch_start), fetch.fetch.sdram_addr.eq(engine.fetch_sdram_addr),
                         fetch.fetch.w_addr.eq(engine.fetch_w_addr), fetch.fetch.words.eq(engine.fetch_words),
                         engine.fetch_done.eq(fetch.fetch.done)]
            w_wr = tuple(Mux(running, theirs, ours)
                         for theirs, ours in zip((fetch.w_wr_addr, fetch.w_wr_data, fetch.w_wr_en), w_wr))
        else:
            m.d.comb += engine.fetch_done.eq(engine.fetch_start)
        m.d.comb += [
            core.w_wr_addr.eq(w_wr[0]), core.w_wr_data.eq(w_wr[1]), core.w_wr_en.eq(w_wr[2]),
            core.a_wr_addr.eq(Mux(running, engine.act_wr_addr, self.a_wr_addr)),
            core.a_wr_data.eq(Mux(running, engine.act_wr_data, self.a_wr_data)),
            core.a_wr_en.eq(Mux(running, engine.act_wr_en, self.a_wr_en)),
            core.o_rd_addr.eq(Mux(running, engine.out_rd_addr, self.o_rd_addr)),
            self.o_rd_data.eq(core.o_rd_data), engine.out_rd_data.eq(core.o_rd_data),
            core.start.eq(Mux(running, engine.core_start, self.start)),
            core.run.eq(Mux(running, engine.core_run, self.run)),
            engine.core_done.eq(core.done),
            self.busy.eq(core.busy), self.done.eq(core.done),
            self.busy_cycles.eq(core.busy_cycles), self.stall_cycles.eq(core.stall_cycles),
            core.clear_counters.eq(self.clear_counters),
        ]
        return m
