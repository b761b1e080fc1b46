// bitlane simulated board: the Verilated BitlaneTop with its rx/tx byte streams
// bridged to one TCP client on 127.0.0.1.
//
//   harness --port P --max-payload N [--trace out.fst|out.vcd]
//
// Prints "bitlane-sim listening 127.0.0.1 PORT" once the socket listens (P = 0
// picks a free port), serves one client, and exits when that client closes the
// connection or the parent process dies.
//
// A design with SDRAM (the ulx3s preset) runs its SDRAM controller's clock beside the
// core's and has the timing-checking SDRAM model on its pins (sdram_bus.h); a broken
// SDRAM rule ends the simulator with a message on stderr (exit code 3).
//
// Speed: the model is clocked cycle after cycle and the socket is serviced
// only every POLL_CYCLES cycles, when a response frame has just been sent
// completely, or when the device is idle. "Idle" is known without peeking
// into the design: the harness follows the framing of both streams (the same
// receiver rules as contract/protocol.py) and counts request frames the device has
// taken in and response frames it has sent out; when they match and no input
// is buffered, nothing can happen until the host sends more, so the harness
// blocks in poll() instead of spinning.
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
#include <memory>
#include <string>
#include <vector>

#include "Vbitlane_sim.h"
#include "harness.h"
#include "loopback.h"
#include "sdram_bus.h"

namespace {

constexpr uint8_t SYNC = 0x7E;
constexpr uint8_t ESC = 0x7D;
constexpr uint8_t ESC_XOR = 0x20;
constexpr uint64_t POLL_CYCLES = 1024;
constexpr size_t RX_BUFFER_LIMIT = 1 << 20;

// Follows one direction of the framed stream; counts frames that are complete,
// i.e. that get (requests) or are (responses) exactly one answer.
class FrameCounter {
 public:
  explicit FrameCounter(uint32_t max_payload) : max_payload_(max_payload) {}

  // Returns true when byte b completes a frame.
  bool consume(uint8_t b) {
    if (b == SYNC) {
      bool cut = in_frame_;  // a SYNC inside a frame cuts it short (TRUNCATED)
      in_frame_ = true;
      escaped_ = false;
      got_ = 0;
      need_ = 4;
      return count(cut);
    }
    if (!in_frame_) return false;
    if (!escaped_ && b == ESC) {
      escaped_ = true;
      return false;
    }
    if (escaped_) b ^= ESC_XOR;
    escaped_ = false;
    if (got_ == 2) len_ = b;
    if (got_ == 3) len_ |= uint32_t(b) << 8;
    if (++got_ == 4) {
      if (len_ > max_payload_) {  // BAD_LENGTH, answered at the header
        in_frame_ = false;
        return count(true);
      }
      need_ = 4 + len_ + 2;
    }
    if (got_ == need_) {
      in_frame_ = false;
      return count(true);
    }
    return false;
  }

  uint64_t frames() const { return frames_; }

 private:
  bool count(bool done) {
    frames_ += done;
    return done;
  }
  uint32_t max_payload_;
  bool in_frame_ = false, escaped_ = false;
  uint32_t got_ = 0, need_ = 0, len_ = 0;
  uint64_t frames_ = 0;
};

constexpr const char* PROGRAM = "bitlane-sim";
constexpr const char* USAGE = "harness --port P --max-payload N [--trace FILE]";

}  // namespace

int main(int argc, char** argv) {
  harness::guard();
  harness::Options options = harness::parse_options(argc, argv, USAGE);
  if (options.port < 0 || options.max_payload < 0 || options.divisor >= 0) harness::usage_error(USAGE);
  const long max_payload = options.max_payload;

  const char* failed = nullptr;
  int conn = loopback::listen_and_accept(options.port, &failed);
  if (conn < 0) harness::die(PROGRAM, failed);

  auto context = std::make_unique<VerilatedContext>();
  auto top = std::make_unique<Vbitlane_sim>(context.get());
  harness::Waveform trace(PROGRAM, *context, *top, options.trace_path);
  harness::BoardClocks clocks(PROGRAM, *top, trace);

  top->rx_valid = 0;
  top->tx_ready = 1;
  clocks.reset(4);

  std::vector<uint8_t> rx, tx;  // bytes from the host not yet taken / bytes for the host not yet sent
  size_t rx_head = 0;
  rx.reserve(RX_BUFFER_LIMIT);
  FrameCounter requests{uint32_t(max_payload)}, responses{0xFFFF};
  uint64_t next_service = 0;
  bool flush_now = false;
  uint8_t chunk[65536];

  for (;;) {
    if (clocks.cycles() >= next_service || flush_now || rx_head == rx.size()) {
      bool idle = rx_head == rx.size() && responses.frames() >= requests.frames();
      if (rx_head == rx.size() && !idle && !flush_now && clocks.cycles() < next_service) {
        // input drained but the device is still working on a request: keep clocking
      } else {
        while (!tx.empty()) {
          ssize_t n = send(conn, tx.data(), tx.size(), 0);
          if (n > 0) {
            tx.erase(tx.begin(), tx.begin() + n);
          } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            if (!idle) break;
            pollfd out{conn, POLLOUT, 0};
            poll(&out, 1, 1000);
          } else {
            goto done;  // host gone
          }
        }
        if (rx_head == rx.size()) {
          rx.clear();
          rx_head = 0;
        }
        if (idle && tx.empty()) {
          pollfd in{conn, POLLIN, 0};
          while (poll(&in, 1, 1000) == 0) {
          }
        }
        while (rx.size() < RX_BUFFER_LIMIT) {
          ssize_t n = recv(conn, chunk, sizeof chunk, 0);
          if (n > 0) {
            rx.insert(rx.end(), chunk, chunk + n);
          } else if (n == 0) {
            goto done;  // host closed the connection
          } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
            break;
          } else {
            goto done;
          }
        }
        next_service = clocks.cycles() + POLL_CYCLES;
        flush_now = false;
      }
    }

    bool have_rx = rx_head < rx.size();
    top->rx_valid = have_rx;
    if (have_rx) top->rx_data = rx[rx_head];
    bool rx_fire, tx_fire;
    uint8_t tx_byte;
    clocks.cycle([&] {
      rx_fire = have_rx && top->rx_ready;
      tx_fire = top->tx_valid;  // tx_ready is always 1: the harness buffers all output
      tx_byte = top->tx_data;
    });
    if (rx_fire) requests.consume(rx[rx_head++]);
    if (tx_fire) {
      tx.push_back(tx_byte);
      if (responses.consume(tx_byte)) flush_now = true;  // a whole response is ready: send it now
    }
  }

done:
  trace.close();
  top->final();
  std::fprintf(stderr, "bitlane-sim: %llu cycles\n", static_cast<unsigned long long>(clocks.cycles()));
  close(conn);
  return 0;
}
