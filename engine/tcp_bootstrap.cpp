#include "engine/tcp_bootstrap.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <thread>
#include <utility>
#include <vector>

#include "engine/error.h"
#include "engine/log.h"

namespace mxmoe {

namespace {

using Clock = std::chrono::steady_clock;

// Wire format, little-endian u32 fields:
//   hello (node r -> node 0): magic, version, nnodes, node_rank, ranks_per_node
//   reply (node 0 -> node r): magic, version, nnodes, ranks_per_node, blob[128]
constexpr uint32_t kMagic = 0x424d584d;  // "MXMB" in memory
constexpr uint32_t kVersion = 1;
constexpr size_t kHelloBytes = 5 * 4;
constexpr size_t kReplyBytes = 4 * 4 + kBootstrapBlobBytes;

class Fd {
 public:
  explicit Fd(int fd) : fd_(fd) {}
  ~Fd() {
    if (fd_ >= 0) ::close(fd_);
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  int get() const { return fd_; }
  int release() { return std::exchange(fd_, -1); }

 private:
  int fd_;
};

std::string errno_text(int e) { return std::strerror(e); }

std::string hex32(uint32_t v) {
  char s[16];
  std::snprintf(s, sizeof s, "0x%08x", v);
  return s;
}

void put_u32(uint8_t* p, uint32_t v) {
  for (int i = 0; i < 4; ++i) p[i] = uint8_t(v >> (8 * i));
}

uint32_t get_u32(const uint8_t* p) { return uint32_t(p[0]) | uint32_t(p[1]) << 8 | uint32_t(p[2]) << 16 | uint32_t(p[3]) << 24; }

int remaining_ms(Clock::time_point deadline) {
  const auto left = std::chrono::ceil<std::chrono::milliseconds>(deadline - Clock::now()).count();
  return int(std::clamp<long long>(left, 0, 1 << 30));
}

// Waits until `fd` is ready for `events`; false when the deadline passes first.
bool wait_ready(int fd, short events, Clock::time_point deadline, const std::string& who) {
  for (;;) {
    pollfd p{fd, events, 0};
    const int r = ::poll(&p, 1, remaining_ms(deadline));
    if (r > 0) return true;
    if (r == 0) return false;
    if (errno != EINTR) fail(who, ": poll failed: ", errno_text(errno));
  }
}

void send_all(int fd, const uint8_t* data, size_t n, Clock::time_point deadline, const std::string& who) {
  for (size_t done = 0; done < n;) {
    const ssize_t k = ::send(fd, data + done, n - done, MSG_NOSIGNAL);
    if (k > 0) {
      done += size_t(k);
    } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
      if (!wait_ready(fd, POLLOUT, deadline, who)) fail(who, ": timed out sending (", done, " of ", n, " bytes sent)");
    } else if (errno != EINTR) {
      fail(who, ": send failed: ", errno_text(errno));
    }
  }
}

void recv_all(int fd, uint8_t* data, size_t n, Clock::time_point deadline, const std::string& who) {
  for (size_t done = 0; done < n;) {
    const ssize_t k = ::recv(fd, data + done, n - done, 0);
    if (k > 0) {
      done += size_t(k);
    } else if (k == 0) {
      fail(who, ": connection closed after ", done, " of ", n, " bytes");
    } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
      if (!wait_ready(fd, POLLIN, deadline, who)) fail(who, ": timed out after receiving ", done, " of ", n, " bytes");
    } else if (errno != EINTR) {
      fail(who, ": recv failed: ", errno_text(errno));
    }
  }
}

void check_header(const uint8_t* msg, const std::string& who) {
  const uint32_t magic = get_u32(msg), version = get_u32(msg + 4);
  MXMOE_CHECK(magic == kMagic, who, ": wrong magic ", hex32(magic), " (expected ", hex32(kMagic),
              "): the peer is not an mxmoe bootstrap");
  MXMOE_CHECK(version == kVersion, who, ": bootstrap protocol version ", version, ", this build speaks ", kVersion);
}

void check_launch(int nnodes, int ranks_per_node) {
  MXMOE_CHECK(nnodes >= 1, "tcp bootstrap: nnodes must be >= 1, got ", nnodes);
  MXMOE_CHECK(ranks_per_node >= 1, "tcp bootstrap: ranks per node must be >= 1, got ", ranks_per_node);
}

std::string launch_mismatch(uint32_t nnodes, uint32_t rpn, int my_nnodes, int my_rpn) {
  if (nnodes == uint32_t(my_nnodes) && rpn == uint32_t(my_rpn)) return "";
  return cat("launch mismatch: node 0 has --nnodes ", nnodes, " and ", rpn, " ranks per node, this node ", my_nnodes,
             " and ", my_rpn);
}

}  // namespace

HostPort parse_host_port(std::string_view text) {
  const auto bad = [&](const std::string& why) {
    fail("bad address '", text, "': ", why, " (expected host:port, e.g. node0:29500)");
  };
  const size_t colon = text.rfind(':');
  if (colon == std::string_view::npos) bad("no ':port'");
  const std::string_view host = text.substr(0, colon), port = text.substr(colon + 1);
  if (host.empty()) bad("empty host");
  if (host.find(':') != std::string_view::npos) bad("IPv6 addresses are not supported");
  if (std::any_of(host.begin(), host.end(), [](char c) { return std::isspace(uint8_t(c)); })) bad("space in host");
  if (port.empty()) bad("empty port");
  if (port.size() > 5 || !std::all_of(port.begin(), port.end(), [](char c) { return c >= '0' && c <= '9'; }))
    bad(cat("port '", port, "' is not a number"));
  const int p = std::stoi(std::string(port));
  if (p < 1 || p > 65535) bad(cat("port ", p, " is out of range 1..65535"));
  return {std::string(host), uint16_t(p)};
}

DistInit make_dist_init(std::string_view host_port, int nnodes, int node_rank) {
  DistInit init{.addr = parse_host_port(host_port), .nnodes = nnodes, .node_rank = node_rank};
  MXMOE_CHECK(nnodes >= 1, "--nnodes must be >= 1, got ", nnodes);
  MXMOE_CHECK(node_rank >= 0 && node_rank < nnodes, "--node-rank ", node_rank, " is out of range 0..", nnodes - 1);
  return init;
}

BootstrapServer::BootstrapServer(uint16_t port) {
  Fd fd(::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  MXMOE_CHECK(fd.get() >= 0, "tcp bootstrap: socket failed: ", errno_text(errno));
  const int one = 1;
  ::setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);  // a restart may reuse the port at once
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_ANY);
  addr.sin_port = htons(port);
  MXMOE_CHECK(::bind(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0,
              "tcp bootstrap: node 0 cannot listen on port ", port, ": ", errno_text(errno));
  MXMOE_CHECK(::listen(fd.get(), 128) == 0, "tcp bootstrap: listen on port ", port, " failed: ", errno_text(errno));
  socklen_t len = sizeof addr;
  MXMOE_CHECK(::getsockname(fd.get(), reinterpret_cast<sockaddr*>(&addr), &len) == 0,
              "tcp bootstrap: getsockname failed: ", errno_text(errno));
  port_ = ntohs(addr.sin_port);
  fd_ = fd.release();
}

BootstrapServer::~BootstrapServer() { ::close(fd_); }

void BootstrapServer::serve(const BootstrapBlob& blob, int nnodes, int ranks_per_node, std::chrono::milliseconds timeout) {
  check_launch(nnodes, ranks_per_node);
  const auto deadline = Clock::now() + timeout;
  const std::string who = cat("tcp bootstrap node 0 (port ", port_, ")");
  std::vector<bool> served(size_t(nnodes), false);
  for (int left = nnodes - 1; left > 0;) {
    if (!wait_ready(fd_, POLLIN, deadline, who)) {
      std::string missing;
      for (int r = 1; r < nnodes; ++r)
        if (!served[size_t(r)]) missing += cat(missing.empty() ? "" : ", ", r);
      fail(who, ": timed out after ", timeout.count(), " ms with ", nnodes - 1 - left, " of ", nnodes - 1,
           " nodes connected (missing node ranks ", missing, ")");
    }
    sockaddr_in peer{};
    socklen_t len = sizeof peer;
    Fd conn(::accept4(fd_, reinterpret_cast<sockaddr*>(&peer), &len, SOCK_NONBLOCK | SOCK_CLOEXEC));
    if (conn.get() < 0) {
      if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR || errno == ECONNABORTED) continue;
      fail(who, ": accept failed: ", errno_text(errno));
    }
    char ip[INET_ADDRSTRLEN] = "?";
    ::inet_ntop(AF_INET, &peer.sin_addr, ip, sizeof ip);
    const std::string from = cat(who, ", peer ", ip, ":", ntohs(peer.sin_port));

    uint8_t hello[kHelloBytes];
    recv_all(conn.get(), hello, sizeof hello, deadline, from);
    check_header(hello, from);
    const uint32_t peer_nnodes = get_u32(hello + 8), rank = get_u32(hello + 12), peer_rpn = get_u32(hello + 16);

    // The reply goes out even on a mismatch, so the peer can name it too.
    uint8_t reply[kReplyBytes];
    put_u32(reply, kMagic);
    put_u32(reply + 4, kVersion);
    put_u32(reply + 8, uint32_t(nnodes));
    put_u32(reply + 12, uint32_t(ranks_per_node));
    std::copy(blob.begin(), blob.end(), reply + 16);
    send_all(conn.get(), reply, sizeof reply, deadline, from);

    const std::string mismatch = launch_mismatch(uint32_t(nnodes), uint32_t(ranks_per_node), int(peer_nnodes), int(peer_rpn));
    MXMOE_CHECK(mismatch.empty(), from, " (node rank ", rank, "): ", mismatch);
    MXMOE_CHECK(rank >= 1 && rank < uint32_t(nnodes), from, ": node rank ", rank, " is out of range 1..", nnodes - 1);
    MXMOE_CHECK(!served[rank], from, ": node rank ", rank, " connected twice (two nodes launched with the same --node-rank?)");
    served[rank] = true;
    --left;
  }
}

BootstrapBlob bootstrap_receive(const HostPort& server, int nnodes, int node_rank, int ranks_per_node,
                                std::chrono::milliseconds timeout) {
  check_launch(nnodes, ranks_per_node);
  const std::string who = cat("tcp bootstrap node ", node_rank, " -> ", server.host, ":", server.port);
  MXMOE_CHECK(node_rank >= 1 && node_rank < nnodes, who, ": node rank must be in 1..", nnodes - 1);
  const auto deadline = Clock::now() + timeout;

  addrinfo hints{};
  hints.ai_family = AF_INET;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* found = nullptr;
  const int rc = ::getaddrinfo(server.host.c_str(), std::to_string(server.port).c_str(), &hints, &found);
  MXMOE_CHECK(rc == 0, who, ": cannot resolve host '", server.host, "': ", ::gai_strerror(rc));
  const sockaddr_in addr = *reinterpret_cast<const sockaddr_in*>(found->ai_addr);
  ::freeaddrinfo(found);

  // Node 0 may not be listening yet: retry refused connections until the deadline.
  std::string last_error;
  for (;;) {
    Fd fd(::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
    MXMOE_CHECK(fd.get() >= 0, who, ": socket failed: ", errno_text(errno));
    int err = ::connect(fd.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof addr) == 0 ? 0 : errno;
    if (err == EINPROGRESS) {
      if (wait_ready(fd.get(), POLLOUT, deadline, who)) {
        socklen_t len = sizeof err;
        ::getsockopt(fd.get(), SOL_SOCKET, SO_ERROR, &err, &len);
      } else {
        err = ETIMEDOUT;
      }
    }
    if (err == 0) {
      uint8_t hello[kHelloBytes];
      put_u32(hello, kMagic);
      put_u32(hello + 4, kVersion);
      put_u32(hello + 8, uint32_t(nnodes));
      put_u32(hello + 12, uint32_t(node_rank));
      put_u32(hello + 16, uint32_t(ranks_per_node));
      send_all(fd.get(), hello, sizeof hello, deadline, who);
      uint8_t reply[kReplyBytes];
      recv_all(fd.get(), reply, sizeof reply, deadline, who);
      check_header(reply, who);
      const std::string mismatch = launch_mismatch(get_u32(reply + 8), get_u32(reply + 12), nnodes, ranks_per_node);
      MXMOE_CHECK(mismatch.empty(), who, ": ", mismatch);
      BootstrapBlob blob;
      std::copy(reply + 16, reply + kReplyBytes, blob.begin());
      return blob;
    }
    last_error = errno_text(err);
    if (Clock::now() >= deadline)
      fail(who, ": could not connect within ", timeout.count(), " ms (last error: ", last_error,
           "); is node 0 running with the same --dist-init?");
    std::this_thread::sleep_for(std::min<Clock::duration>(std::chrono::milliseconds(100), deadline - Clock::now()));
  }
}

BootstrapBlob tcp_bootstrap(const DistInit& init, int ranks_per_node, const std::function<BootstrapBlob()>& make_blob) {
  check_launch(init.nnodes, ranks_per_node);
  if (init.nnodes == 1) return make_blob();
  if (init.node_rank != 0) return bootstrap_receive(init.addr, init.nnodes, init.node_rank, ranks_per_node, init.timeout);
  BootstrapServer server(init.addr.port);
  const BootstrapBlob blob = make_blob();
  log_info("tcp bootstrap: node 0 waiting on port ", server.port(), " for ", init.nnodes - 1, " nodes");
  server.serve(blob, init.nnodes, ranks_per_node, init.timeout);
  return blob;
}

}  // namespace mxmoe
