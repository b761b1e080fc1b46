// The loopback TCP endpoint that both simulated-board harnesses (harness.cpp: byte stream,
// uart_harness.cpp: serial pins) serve to the host driver, which opens it with pyserial's
// socket:// URL.
#pragma once

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>

namespace loopback {

// Listens on 127.0.0.1:port (0 picks a free port), announces the port on stdout as
// "bitlane-sim listening 127.0.0.1 PORT" (the driver waits for that line), accepts one
// connection and returns it non-blocking with Nagle off: the protocol is request/response,
// so small frames must leave at once. On failure returns -1 with errno set and *failed naming
// the call that failed.
inline int listen_and_accept(int port, const char** failed) {
  int listener = socket(AF_INET, SOCK_STREAM, 0);
  if (listener < 0) return *failed = "socket", -1;
  int one = 1;
  setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(uint16_t(port));
  if (bind(listener, reinterpret_cast<sockaddr*>(&addr), sizeof addr) < 0) return *failed = "bind", -1;
  if (listen(listener, 1) < 0) return *failed = "listen", -1;
  socklen_t addr_len = sizeof addr;
  getsockname(listener, reinterpret_cast<sockaddr*>(&addr), &addr_len);
  std::printf("bitlane-sim listening 127.0.0.1 %d\n", ntohs(addr.sin_port));
  std::fflush(stdout);
  int conn = accept(listener, nullptr, nullptr);
  if (conn < 0) return *failed = "accept", -1;
  close(listener);
  setsockopt(conn, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  fcntl(conn, F_SETFL, fcntl(conn, F_GETFL) | O_NONBLOCK);
  return conn;
}

}  // namespace loopback
