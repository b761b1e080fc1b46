// Timing- and protocol-checking SDR SDRAM model for the Verilated harnesses: the C++ twin of
// sim_tests/sdram_model.py (which documents the rules; this file follows it rule for rule and
// sim_tests/test_sdram.py runs the same planted-violation and differential tests on both).
//
//   bitlane::SdramModel sdram(clock_hz, timing, geometry);   // values from hw/sdram.py
//   uint16_t word;
//   bool driving = sdram.edge(pins, &word);   // once per SDRAM clock edge; throws SdramViolation
//
// The timing and geometry have no defaults here: the Python side passes hw.sdram's
// SdramTiming/SdramGeometry, the one place they are defined.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <vector>

namespace bitlane {

struct SdramTimingNs {
    double rcd, rp, ras, ras_max, rc, rrd, rfc, wr;
    int wr_min_ck, mrd_ck;
    double refi, init;
    int init_refreshes;
    double tck_min[8];  // shortest clock period per CAS latency; 0 = latency not supported
};

struct SdramGeometryBits {
    int data_width, bank_bits, row_bits, col_bits, all_banks_bit;
};

struct SdramPins {
    int cke, cs_n, ras_n, cas_n, we_n, ba, a, dqm, dq_oe, dq;
};

class SdramViolation : public std::runtime_error {
  public:
    using std::runtime_error::runtime_error;
};

class SdramModel {
  public:
    enum Command { MODE = 0, REFRESH = 1, PRECHARGE = 2, ACTIVATE = 3, WRITE = 4, READ = 5, BURST_STOP = 6, NOP = 7 };

    SdramModel(double clock_hz, const SdramTimingNs& t, const SdramGeometryBits& g)
        : t_(t), g_(g), period_(1e9 / clock_hz), banks_(size_t(1) << g.bank_bits) {}

    // One rising edge of the SDRAM clock. Returns true and sets *word when the SDRAM drives dq
    // from this edge to the next.
    bool edge(const SdramPins& p, uint16_t* word) {
        ++n_;
        if (!p.cke) fail("CKE low", "power-down and self refresh are not modeled; CKE must stay high");
        if (p.dq_oe && (driving_ || drive_.count(n_)))
            fail("dq driven", "bus contention: the controller drives dq while the SDRAM outputs read data");
        const Command cmd = p.cs_n ? NOP : Command((p.ras_n << 2) | (p.cas_n << 1) | p.we_n);
        const char* name = kNames[cmd];

        if (phase_ == READY) {
            if (now() - last_refresh_ > t_.refi + 1e-6)
                fail(name, fmt("no REFRESH for %.1f ns (tREFI = %g ns)", now() - last_refresh_, t_.refi));
            for (size_t b = 0; b < banks_.size(); ++b)
                if (banks_[b].open && now() - banks_[b].activated > t_.ras_max)
                    fail(name, fmt("bank %zu row %d open longer than tRAS max (%g ns)", b, banks_[b].row, t_.ras_max));
        }
        if (cmd != NOP) {
            need(name, last_mode_, t_.mrd_ck * period_, "tMRD (MODE to next command)");
            need(name, last_refresh_, t_.rfc, "tRFC (REFRESH to next command)");
            if (phase_ == POWER_UP && cmd != PRECHARGE)
                fail(name, "the first command after power-up must be PRECHARGE ALL");
            if (phase_ != READY && (cmd == ACTIVATE || cmd == READ || cmd == WRITE || cmd == BURST_STOP))
                fail(name, "initialization not finished (PRECHARGE ALL, REFRESHes, MODE)");
        }

        continue_write_burst(name, cmd, p);
        const int all_banks = 1 << g_.all_banks_bit;
        Bank& bank = banks_[p.ba];
        switch (cmd) {
        case ACTIVATE: {
            if (p.a >> g_.row_bits) fail(name, fmt("row address %#x beyond %d bits", p.a, g_.row_bits));
            if (bank.open) fail(name, fmt("bank %d already has row %d open", p.ba, bank.row));
            need(name, bank.activated, t_.rc, fmt("tRC (bank %d ACTIVATE to ACTIVATE)", p.ba));
            need(name, bank.precharged, t_.rp, fmt("tRP (bank %d PRECHARGE to ACTIVATE)", p.ba));
            need(name, last_activate_, t_.rrd, "tRRD (ACTIVATE to ACTIVATE, any banks)");
            bank.open = true;
            bank.row = p.a;
            bank.activated = last_activate_ = now();
            break;
        }
        case READ:
        case WRITE: {
            if (!bank.open) fail(name, fmt("bank %d has no open row", p.ba));
            need(name, bank.activated, t_.rcd, fmt("tRCD (bank %d ACTIVATE to %s)", p.ba, name));
            if (p.a & all_banks) fail(name, "auto-precharge (A10) is not modeled");
            const int col_mask = (1 << g_.col_bits) - 1;
            if (p.a & ~col_mask & ((1 << a_bits()) - 1)) fail(name, fmt("column address %#x beyond %d bits", p.a, g_.col_bits));
            cut_burst();
            const bool write = cmd == WRITE;
            burst_ = Burst{true, write, p.ba, bank.row, p.a & col_mask, n_, write && single_writes_ ? 1 : burst_length_};
            if (write) {
                write_word(name, p);
            } else {
                for (int i = 0; i < burst_.length; ++i)
                    drive_[n_ + i + cl_ - 1] = stored(p.ba, bank.row, burst_col(burst_.col, i));
                bank.read_burst_end = n_ + burst_.length;
            }
            break;
        }
        case PRECHARGE: {
            const bool all = p.a & all_banks;
            if (phase_ == POWER_UP) {
                if (!all) fail(name, "the first command after power-up must be PRECHARGE ALL");
                need(name, 0, t_.init, "power-up wait (tINIT of NOPs before PRECHARGE ALL)");
                phase_ = INIT;
            }
            for (size_t b = 0; b < banks_.size(); ++b) {
                if (!all && int(b) != p.ba) continue;
                Bank& target = banks_[b];
                if (target.open) {
                    need(name, target.activated, t_.ras, fmt("tRAS (bank %zu ACTIVATE to PRECHARGE)", b));
                    need(name, target.last_write_data, std::max(t_.wr, t_.wr_min_ck * period_),
                         fmt("tWR (bank %zu write data to PRECHARGE)", b));
                    if (n_ < target.read_burst_end) fail(name, fmt("truncates the read burst of bank %zu", b));
                    target.open = false;
                }
                target.precharged = now();
            }
            if (burst_.active && (all || burst_.bank == p.ba)) cut_burst();
            break;
        }
        case REFRESH: {
            for (size_t b = 0; b < banks_.size(); ++b) {
                if (banks_[b].open) fail(name, fmt("bank %zu has row %d open (REFRESH needs all banks idle)", b, banks_[b].row));
                need(name, banks_[b].precharged, t_.rp, fmt("tRP (bank %zu PRECHARGE to REFRESH)", b));
                need(name, banks_[b].activated, t_.rc, fmt("tRC (bank %zu ACTIVATE to REFRESH)", b));
            }
            last_refresh_ = now();
            if (phase_ == INIT) ++init_refreshes_;
            break;
        }
        case MODE: mode_register(name, p.a, p.ba); break;
        case BURST_STOP: cut_burst(); break;
        case NOP: break;
        }

        auto it = drive_.find(n_);
        driving_ = it != drive_.end();
        if (driving_) {
            *word = it->second;
            drive_.erase(it);
        }
        return driving_;
    }

    // Stored word; never-written locations read as a fixed function of the address (the same
    // function as the Python model's, so that the two can be compared word for word).
    uint16_t stored(int bank, int row, int col) const {
        auto it = mem_.find(key(bank, row, col));
        return it != mem_.end() ? it->second : uint16_t(bank * 0x1357 + row * 0x2468 + col * 0x9A1);
    }

    size_t words_written() const { return mem_.size(); }

  private:
    enum Phase { POWER_UP, INIT, READY };
    static constexpr const char* kNames[8] = {"MODE", "REFRESH", "PRECHARGE", "ACTIVATE",
                                              "WRITE", "READ", "BURST_STOP", "NOP"};
    struct Bank {
        bool open = false;
        int row = 0;
        double activated = -1e18, precharged = -1e18, last_write_data = -1e18;
        long long read_burst_end = -1;
    };
    struct Burst {
        bool active = false, write = false;
        int bank = 0, row = 0, col = 0;
        long long start = 0;
        int length = 0;
    };

    double now() const { return double(n_) * period_; }
    int a_bits() const { return std::max(std::max(g_.row_bits, g_.col_bits), g_.all_banks_bit + 1); }
    uint64_t key(int bank, int row, int col) const {
        return (uint64_t(row) << (g_.bank_bits + g_.col_bits)) | (uint64_t(bank) << g_.col_bits) | uint64_t(col);
    }

    template <typename... Args>
    static std::string fmt(const char* f, Args... args) {
        char buf[256];
        std::snprintf(buf, sizeof buf, f, args...);
        return buf;
    }
    static std::string fmt(const char* f) { return f; }

    [[noreturn]] void fail(const std::string& command, const std::string& rule) const {
        throw SdramViolation(fmt("SDRAM edge %lld (%.1f ns), ", n_, now()) + command + ": " + rule);
    }

    void need(const char* command, double since, double rule_ns, const std::string& rule) const {
        const double elapsed = now() - since;
        if (elapsed < rule_ns - 1e-6) fail(command, rule + fmt(" violated: %.1f ns < %g ns", elapsed, rule_ns));
    }

    void mode_register(const char* name, int a, int ba) {
        if (phase_ == POWER_UP) fail(name, "the first command after power-up must be PRECHARGE ALL");
        if (phase_ == INIT && init_refreshes_ < t_.init_refreshes)
            fail(name, fmt("only %d of %d initial REFRESHes before MODE", init_refreshes_, t_.init_refreshes));
        for (size_t b = 0; b < banks_.size(); ++b) {
            if (banks_[b].open) fail(name, fmt("bank %zu has row %d open (MODE needs all banks idle)", b, banks_[b].row));
            need(name, banks_[b].precharged, t_.rp, fmt("tRP (bank %zu PRECHARGE to MODE)", b));
        }
        const int bl_code = a & 7, cl = (a >> 4) & 7;
        if (bl_code > 3) fail(name, fmt("burst length code %d not supported (1, 2, 4, 8)", bl_code));
        if ((a >> 3) & 1) fail(name, "interleaved bursts are not modeled");
        if (t_.tck_min[cl] <= 0) fail(name, fmt("CAS latency %d not supported", cl));
        if (period_ < t_.tck_min[cl] - 1e-6)
            fail(name, fmt("CAS latency %d needs a clock period >= %g ns, this one is %g ns", cl, t_.tck_min[cl], period_));
        if (((a >> 7) & 3) || (a >> 10) || ba) fail(name, fmt("reserved mode register bits set (A = %#x, BA = %d)", a, ba));
        burst_length_ = 1 << bl_code;
        cl_ = cl;
        single_writes_ = (a >> 9) & 1;
        last_mode_ = now();
        phase_ = READY;
    }

    int burst_col(int col, int i) const { return (col & ~(burst_length_ - 1)) | ((col + i) & (burst_length_ - 1)); }

    void write_word(const char* name, const SdramPins& p) {
        const long long i = n_ - burst_.start;
        if (!p.dq_oe) fail(name, fmt("write data word %lld not driven on dq at its edge (SDR writes have no latency)", i));
        const int col = burst_col(burst_.col, int(i));
        const uint16_t old = stored(burst_.bank, burst_.row, col);
        uint32_t mask = 0;
        for (int byte = 0; byte < g_.data_width / 8; ++byte)
            if ((p.dqm >> byte) & 1) mask |= 0xFFu << (8 * byte);
        mem_[key(burst_.bank, burst_.row, col)] = uint16_t((uint32_t(p.dq) & ~mask) | (old & mask));
        banks_[burst_.bank].last_write_data = now();
    }

    void continue_write_burst(const char* name, Command cmd, const SdramPins& p) {
        if (!burst_.active || !burst_.write || n_ >= burst_.start + burst_.length) return;
        if (cmd == READ || cmd == WRITE || cmd == BURST_STOP || cmd == PRECHARGE) return;
        write_word(name, p);
    }

    void cut_burst() {
        if (burst_.active && !burst_.write) {
            for (long long i = n_ - burst_.start; i < burst_.length; ++i) drive_.erase(burst_.start + i + cl_ - 1);
            Bank& bank = banks_[burst_.bank];
            bank.read_burst_end = std::min(bank.read_burst_end, n_);
        }
        burst_.active = false;
    }

    SdramTimingNs t_;
    SdramGeometryBits g_;
    double period_;
    std::vector<Bank> banks_;
    long long n_ = -1;
    Phase phase_ = POWER_UP;
    int init_refreshes_ = 0, cl_ = 0, burst_length_ = 1;
    bool single_writes_ = false, driving_ = false;
    double last_refresh_ = -1e18, last_mode_ = -1e18, last_activate_ = -1e18;
    Burst burst_;
    std::unordered_map<long long, uint16_t> drive_;
    std::unordered_map<uint64_t, uint16_t> mem_;
};

}  // namespace bitlane
