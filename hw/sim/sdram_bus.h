// The clocks of a simulated board, and its SDRAM: what both harnesses (harness.cpp,
// uart_harness.cpp) do to move the design by one cycle of its core clock.
//
// Without SDRAM (sdram_config.h, written by hw/sim/build.py, says BITLANE_SDRAM 0) a cycle is
// a falling and a rising edge of `clk`. With SDRAM the design has a second clock, `sdram_clk`
// (the SDRAM controller's domain, hw/sdram_port.py), at its own frequency: every edge of it
// that falls inside the core cycle is simulated too, in time order, and at each falling edge
// of `sdram_clk` (the SDRAM chip's rising edge, half a cycle behind the controller's: the
// p = T/2 of docs/sdram.md) bitlane::SdramModel sees the command, address and write data on
// the pins and answers on dq_i, its read words delayed by the board's read_delay, as
// sim_tests/sdram_model.py's `attach` does under cocotb. A broken SDRAM timing or protocol
// rule ends the simulator with a message (exit code 3).
//
// Edge times are in ps from the start (what the waveform trace is stamped with).
#pragma once

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <deque>

#include "harness.h"
#include "sdram_model.h"
#include "sdram_config.h"  // after sdram_model.h, whose types it uses

namespace harness {

template <typename Top>
class BoardClocks {
 public:
  BoardClocks(const char* program, Top& top, Waveform& trace) : program_(program), top_(top), trace_(trace) {
    top_.clk = 0;
#if BITLANE_SDRAM
    top_.sdram_clk = 0;
    top_.sdram_dq_i = 0;
    for (int i = 0; i < sdram_config::kReadDelay; ++i) late_.push_back(-1);
#endif
  }

  uint64_t cycles() const { return cycle_; }

  // Reset held for `cycles` core cycles (both domains; the SDRAM model counts them as power-up).
  void reset(int cycles) {
    top_.rst = 1;
#if BITLANE_SDRAM
    top_.sdram_rst = 1;
#endif
    for (int i = 0; i < cycles; ++i) cycle([] {});
    top_.rst = 0;
#if BITLANE_SDRAM
    top_.sdram_rst = 0;
#endif
  }

  // One core clock cycle; `sample` runs between its falling and its rising edge, where the
  // handshake signals of the cycle are settled (the core domain's outputs change only at its
  // own rising edges).
  template <typename Sample>
  void cycle(Sample&& sample) {
    const uint64_t rise = core_edge(2 * cycle_ + 2), fall = core_edge(2 * cycle_ + 1);
    sdram_until(fall);
    top_.clk = 0;
    top_.eval();
    trace_.dump(fall);
    sample();
    sdram_until(rise);
    top_.clk = 1;
    top_.eval();
    trace_.dump(rise);
    ++cycle_;
  }

 private:
  // Time of the core clock's n-th edge (even: rising); the SDRAM's likewise. Computed from the
  // edge count, never accumulated, so that the two clocks keep their exact ratio.
  static uint64_t edge_time(uint64_t n, uint64_t hz) {
    return uint64_t((unsigned __int128)n * kHalfPsPerHz / hz);
  }
  static uint64_t core_edge(uint64_t n) { return edge_time(n, sdram_config::kCoreHz); }

  // Every SDRAM clock edge up to (and at) `until`.
  void sdram_until(uint64_t until) {
#if BITLANE_SDRAM
    while (edge_time(sdram_edges_ + 1, sdram_config::kSdramHz) <= until) {
      const uint64_t n = ++sdram_edges_;
      const bool rising = n % 2 == 0;
      top_.sdram_clk = rising;
      top_.eval();
      trace_.dump(edge_time(n, sdram_config::kSdramHz));
      if (!rising) chip_edge();
    }
#else
    (void)until;
#endif
  }

  // The SDRAM chip's clock edge: the model takes the pins, its word (if any) reaches dq_i
  // read_delay cycles later; outside read data dq_i floats (random words).
  void chip_edge() {
#if BITLANE_SDRAM
    {
      const bitlane::SdramPins pins{top_.sdram_cke, top_.sdram_cs_n, top_.sdram_ras_n, top_.sdram_cas_n,
                                    top_.sdram_we_n, top_.sdram_ba, top_.sdram_a, top_.sdram_dqm,
                                    top_.sdram_dq_oe, top_.sdram_dq_o};
      uint16_t word = 0;
      bool driving = false;
      try {
        driving = sdram_.edge(pins, &word);
      } catch (const bitlane::SdramViolation& violation) {
        std::fprintf(stderr, "%s: SDRAM rule broken: %s\n", program_, violation.what());
        std::exit(3);
      }
      late_.push_back(driving ? int(word) : -1);
      const int out = late_.front();
      late_.pop_front();
      top_.sdram_dq_i = out >= 0 ? uint16_t(out) : noise();
    }
#endif
  }

  uint16_t noise() {  // xorshift32
    noise_ ^= noise_ << 13;
    noise_ ^= noise_ >> 17;
    noise_ ^= noise_ << 5;
    return uint16_t(noise_);
  }

  static constexpr uint64_t kHalfPsPerHz = 500'000'000'000;  // half a period in ps, times the frequency
  const char* program_;
  Top& top_;
  Waveform& trace_;
  uint64_t cycle_ = 0, sdram_edges_ = 0;
  uint32_t noise_ = 0x2545F491u;
  std::deque<int> late_;
#if BITLANE_SDRAM
  bitlane::SdramModel sdram_{sdram_config::kSdramHz, sdram_config::kTiming, sdram_config::kGeometry};
#endif
};

}  // namespace harness
