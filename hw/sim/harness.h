// What both simulated-board harnesses (harness.cpp: the byte streams, uart_harness.cpp: the serial
// pins) share besides their TCP endpoint (loopback.h): the process set-up, the command line, dying
// with a message, and the optional waveform trace.
#pragma once

#include <signal.h>
#include <sys/prctl.h>

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>

#include "verilated.h"
#if VM_TRACE_FST
#include "verilated_fst_c.h"
using TraceFile = VerilatedFstC;
#elif VM_TRACE
#include "verilated_vcd_c.h"
using TraceFile = VerilatedVcdC;
#endif

namespace harness {

// Never outlive the process that started us; a socket closed by the client is an error return,
// not a signal.
inline void guard() {
  prctl(PR_SET_PDEATHSIG, SIGTERM);
  signal(SIGPIPE, SIG_IGN);
}

[[noreturn]] inline void die(const char* program, const char* what) {
  std::fprintf(stderr, "%s: %s: %s\n", program, what, std::strerror(errno));
  std::exit(2);
}

// The options of both harnesses; -1 where not given (each harness says what it needs).
struct Options {
  int port = -1;
  long max_payload = -1;
  long divisor = -1;
  const char* trace_path = nullptr;
};

[[noreturn]] inline void usage_error(const char* usage) {
  std::fprintf(stderr, "usage: %s\n", usage);
  std::exit(2);
}

// "--NAME VALUE" pairs in any order; an unknown name or a missing value prints `usage` and exits.
inline Options parse_options(int argc, char** argv, const char* usage) {
  Options options;
  for (int i = 1; i < argc; i += 2) {
    std::string arg = argv[i];
    if (i + 1 >= argc) arg.clear();
    if (arg == "--port") options.port = std::atoi(argv[i + 1]);
    else if (arg == "--max-payload") options.max_payload = std::atol(argv[i + 1]);
    else if (arg == "--divisor") options.divisor = std::atol(argv[i + 1]);
    else if (arg == "--trace") options.trace_path = argv[i + 1];
    else usage_error(usage);
  }
  return options;
}

// The waveform of one model, written to `path` (nothing without a path: dump and close then do
// nothing). A build without tracing refuses a path.
class Waveform {
 public:
  template <typename Model>
  Waveform(const char* program, VerilatedContext& context, Model& model, const char* path) {
    if (!path) return;
#if VM_TRACE
    context.traceEverOn(true);
    file_ = std::make_unique<TraceFile>();
    model.trace(file_.get(), 99);
    file_->open(path);
#else
    (void)context, (void)model;
    std::fprintf(stderr, "%s: built without tracing (--trace needs a Verilator --trace build)\n", program);
    std::exit(2);
#endif
  }

  void dump(uint64_t time) {
#if VM_TRACE
    if (file_) file_->dump(time);
#else
    (void)time;
#endif
  }

  void close() {
#if VM_TRACE
    if (file_) file_->close();
#endif
  }

 private:
#if VM_TRACE
  std::unique_ptr<TraceFile> file_;
#endif
};

}  // namespace harness
