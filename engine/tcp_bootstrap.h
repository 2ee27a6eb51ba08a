#pragma once
// Multi-node start-up: node 0 hands a 128-byte blob (the ncclUniqueId) to the other nodes over TCP.
// `--dist-init host:port --nnodes N --node-rank R`: node 0 listens on `port` (all IPv4
// interfaces), makes the blob and sends it to each of the N-1 nodes that connect to host:port;
// the others connect, retrying until the timeout, and receive it. Both sides check a small framed
// handshake (magic, version, nnodes, ranks per node) so a wrong peer or a mismatched launch is a
// clear mxmoe::Error, and every wait has a deadline: it never hangs. NCCL-free, so it is tested on
// the CPU; engine/nccl_communicator.h builds the communicators on top of it.
#include <array>
#include <chrono>
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>

namespace mxmoe {

struct HostPort {
  std::string host;  // IPv4 address or host name
  uint16_t port = 0;
};

// "node0:29500" or "10.0.0.1:29500" -> {host, port}; anything else is an Error quoting the text.
HostPort parse_host_port(std::string_view text);

struct DistInit {
  HostPort addr;      // node 0's address
  int nnodes = 1;
  int node_rank = 0;  // 0 .. nnodes-1
  std::chrono::milliseconds timeout{std::chrono::minutes(5)};  // for the whole exchange
};

// The command-line flags, validated (bad host:port, nnodes < 1, node_rank out of range -> Error).
DistInit make_dist_init(std::string_view host_port, int nnodes, int node_rank);

inline constexpr size_t kBootstrapBlobBytes = 128;
using BootstrapBlob = std::array<uint8_t, kBootstrapBlobBytes>;

// Node 0's side: make_blob() is called on node 0 only (after it listens) and its result is sent to
// every other node; the others return node 0's blob. Every node must pass the same nnodes and
// ranks_per_node (its local GPU count), else all of them fail. nnodes == 1 opens no socket.
BootstrapBlob tcp_bootstrap(const DistInit& init, int ranks_per_node, const std::function<BootstrapBlob()>& make_blob);

// The two halves of tcp_bootstrap, for tests and for callers that pick the port themselves.
class BootstrapServer {
 public:
  explicit BootstrapServer(uint16_t port);  // listens on all IPv4 interfaces; port 0: any free one
  ~BootstrapServer();
  BootstrapServer(const BootstrapServer&) = delete;
  BootstrapServer& operator=(const BootstrapServer&) = delete;
  uint16_t port() const { return port_; }

  // Sends `blob` to nodes 1 .. nnodes-1, each once, as they connect; returns when all have it.
  void serve(const BootstrapBlob& blob, int nnodes, int ranks_per_node, std::chrono::milliseconds timeout);

 private:
  int fd_ = -1;
  uint16_t port_ = 0;
};

BootstrapBlob bootstrap_receive(const HostPort& server, int nnodes, int node_rank, int ranks_per_node,
                                std::chrono::milliseconds timeout);

}  // namespace mxmoe
