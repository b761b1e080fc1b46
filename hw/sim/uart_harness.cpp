// bitlane board at the UART pins: the Verilated BoardLogic (hw/boards.py: UART,
// command processor, core, LEDs; the PLL bypassed) with its serial pins bridged
// to one TCP client on 127.0.0.1, bit by bit at `divisor` clock cycles per bit.
//
//   uart_harness --port P --divisor D [--max-payload N] [--trace out.vcd]
//
// Prints "bitlane-sim listening 127.0.0.1 PORT" once the socket listens (P = 0
// picks a free port), serves one client, exits when it disconnects or the
// parent process dies. The host opens it with pyserial's socket:// URL, so it
// sees exactly the byte stream a real board's USB-UART bridge would give it.
//
// The host side of the line is a model of a UART: host bytes are sent as 8N1
// frames on uart_rx with the divisor's timing, frames on uart_tx are sampled
// mid-bit (a low stop bit is counted and reported at exit, as a USB-UART
// bridge would flag it).
//
// A board with SDRAM (the ULX3S) runs its SDRAM controller's clock beside the core's and has
// the timing-checking SDRAM model on its pins (sdram_bus.h); a broken SDRAM rule ends the
// simulator with a message on stderr (exit code 3).
//
// Idle: when every host byte has been sent, both lines are quiet and as many
// response frames came back as request frames went in, nothing can happen
// until the host sends more, so the harness blocks in poll() instead of
// clocking an idle design. Frames are counted from the protocol's framing rules
// (docs/protocol.md), so the harness knows nothing of the design's insides.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <memory>
#include <string>
#include <vector>

#include "Vbitlane_board.h"
#include "harness.h"
#include "loopback.h"
#include "sdram_bus.h"

namespace {

constexpr uint8_t SYNC = 0x7E;
constexpr uint8_t ESC = 0x7D;
constexpr uint8_t ESC_XOR = 0x20;
constexpr uint64_t POLL_CYCLES = 4096;

// Counts the frames in one direction of the protocol byte stream that the
// other side answers (requests) or that are answers (responses): a frame is
// complete after its CRC, when its header announces a LEN above max_payload
// (answered BAD_LENGTH at once), or when a SYNC cuts it short (TRUNCATED).
class FrameTally {
 public:
  explicit FrameTally(uint32_t max_payload) : max_payload_(max_payload) {}

  void push(uint8_t byte) {
    if (byte == SYNC) {
      if (inside_) ++frames_;
      inside_ = true;
      escape_ = false;
      seen_ = 0;
      length_ = 0;
      return;
    }
    if (!inside_) return;
    if (byte == ESC && !escape_) {
      escape_ = true;
      return;
    }
    if (escape_) byte ^= ESC_XOR;
    escape_ = false;
    ++seen_;
    if (seen_ == 3) length_ = byte;
    if (seen_ == 4) {
      length_ |= uint32_t(byte) << 8;
      if (length_ > max_payload_) finish();
    } else if (seen_ > 4 && seen_ == 4 + length_ + 2) {
      finish();
    }
  }

  uint64_t frames() const { return frames_; }

 private:
  void finish() {
    inside_ = false;
    ++frames_;
  }
  uint32_t max_payload_;
  bool inside_ = false, escape_ = false;
  uint32_t seen_ = 0, length_ = 0;
  uint64_t frames_ = 0;
};

// The host's transmitter: 8N1 frames onto the board's uart_rx pin.
class LineSender {
 public:
  explicit LineSender(uint32_t divisor) : divisor_(divisor) {}
  void queue(const uint8_t* data, size_t n) { pending_.insert(pending_.end(), data, data + n); }
  bool idle() const { return bit_ == 0 && pending_.empty(); }

  // The pin level for this cycle.
  bool level() {
    if (bit_ == 0) {
      if (pending_.empty()) return true;
      frame_ = uint32_t(pending_.front()) << 1 | 1u << 9;  // start 0, data LSB first, stop 1
      pending_.pop_front();
      bit_ = 10;
      left_ = divisor_;
    }
    bool out = frame_ & 1;
    if (--left_ == 0) {
      frame_ >>= 1;
      left_ = divisor_;
      --bit_;
    }
    return out;
  }

 private:
  uint32_t divisor_;
  std::deque<uint8_t> pending_;
  uint32_t frame_ = 0, bit_ = 0, left_ = 0;
};

// The host's receiver: samples the board's uart_tx pin in the middle of each bit.
class LineReceiver {
 public:
  explicit LineReceiver(uint32_t divisor) : divisor_(divisor) {}
  bool idle() const { return bit_ < 0; }
  uint64_t framing_errors() const { return framing_errors_; }

  // Returns a received byte, or -1.
  int sample(bool pin) {
    if (bit_ < 0) {
      if (!pin) {  // start edge: first sample in the middle of the start bit
        bit_ = 0;
        left_ = divisor_ / 2;
        shift_ = 0;
      }
      return -1;
    }
    if (--left_ != 0) return -1;
    left_ = divisor_;
    int bit = bit_++;
    if (bit == 0) {
      if (pin) bit_ = -1;  // a glitch, not a start bit
      return -1;
    }
    if (bit <= 8) {
      shift_ |= uint32_t(pin) << (bit - 1);
      return -1;
    }
    bit_ = -1;
    if (!pin) {
      ++framing_errors_;
      return -1;
    }
    return int(shift_);
  }

 private:
  uint32_t divisor_;
  int bit_ = -1;
  uint32_t left_ = 0, shift_ = 0;
  uint64_t framing_errors_ = 0;
};

constexpr const char* PROGRAM = "bitlane-uart-sim";
constexpr const char* USAGE = "uart_harness --port P --divisor D [--max-payload N] [--trace out.vcd]";

}  // namespace

int main(int argc, char** argv) {
  harness::guard();
  harness::Options options = harness::parse_options(argc, argv, USAGE);
  if (options.port < 0 || options.divisor < 4) harness::usage_error(USAGE);
  const long divisor = options.divisor;
  const long max_payload = options.max_payload < 0 ? 0xFFFF : options.max_payload;

  const char* failed = nullptr;
  int conn = loopback::listen_and_accept(options.port, &failed);
  if (conn < 0) harness::die(PROGRAM, failed);

  auto context = std::make_unique<VerilatedContext>();
  auto board = std::make_unique<Vbitlane_board>(context.get());
  harness::Waveform trace(PROGRAM, *context, *board, options.trace_path);
  harness::BoardClocks clocks(PROGRAM, *board, trace);
  board->uart_rx = 1;
  clocks.reset(4);

  LineSender sender{uint32_t(divisor)};
  LineReceiver receiver{uint32_t(divisor)};
  FrameTally requests{uint32_t(max_payload)}, responses{0xFFFF};
  std::vector<uint8_t> to_host;
  uint64_t next_service = 0;
  uint8_t chunk[65536];

  for (;;) {
    bool idle = sender.idle() && receiver.idle() && responses.frames() >= requests.frames();
    if (clocks.cycles() >= next_service || idle) {
      while (!to_host.empty()) {
        ssize_t n = send(conn, to_host.data(), to_host.size(), 0);
        if (n > 0) {
          to_host.erase(to_host.begin(), to_host.begin() + n);
        } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
          pollfd out{conn, POLLOUT, 0};
          poll(&out, 1, 100);
        } else {
          goto done;  // host gone
        }
      }
      if (idle) {
        pollfd in{conn, POLLIN, 0};
        while (poll(&in, 1, 1000) == 0) {
        }
      }
      for (;;) {
        ssize_t n = recv(conn, chunk, sizeof chunk, 0);
        if (n > 0) {
          sender.queue(chunk, size_t(n));
          for (ssize_t i = 0; i < n; ++i) requests.push(chunk[i]);
        } else if (n == 0) {
          goto done;  // host closed the connection
        } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
          break;
        } else {
          goto done;
        }
      }
      next_service = clocks.cycles() + POLL_CYCLES;
    }

    board->uart_rx = sender.level();
    clocks.cycle([] {});
    int byte = receiver.sample(board->uart_tx);
    if (byte >= 0) {
      to_host.push_back(uint8_t(byte));
      responses.push(uint8_t(byte));
      if (responses.frames() >= requests.frames()) next_service = clocks.cycles();  // answer complete: send now
    }
  }

done:
  trace.close();
  board->final();
  std::fprintf(stderr, "bitlane-uart-sim: %llu cycles, %llu framing errors on uart_tx\n",
               static_cast<unsigned long long>(clocks.cycles()),
               static_cast<unsigned long long>(receiver.framing_errors()));
  close(conn);
  return 0;
}
