#include "engine/nccl_communicator.h"

#include <cstdlib>
#include <cstring>
#include <string_view>

#include "engine/cuda_check.h"
#include "engine/device_guard.h"
#include "engine/error.h"
#include "engine/log.h"

namespace mxmoe {

namespace {

static_assert(sizeof(ncclUniqueId) == kBootstrapBlobBytes);

// `what()` builds the description only on failure (collectives are on the hot path).
template <class What>
void nccl_check(ncclResult_t r, ncclComm_t comm, What&& what) {
  if (r == ncclSuccess) return;
  const char* last = ncclGetLastError(comm);
  fail("NCCL ", what(), " failed: ", ncclGetErrorString(r), last && *last ? cat(" (", last, ")") : std::string());
}

ncclDataType_t nccl_type(DType t) {
  switch (t) {
    case DType::f32: return ncclFloat32;
    case DType::bf16: return ncclBfloat16;
    default: fail("NCCL all_reduce_sum: dtype ", dtype_name(t), " is not supported (bf16 or f32)");
  }
}

void check_device_tensor(const Tensor& t, const char* op, const char* name) {
  MXMOE_CHECK(t.device() == Device::cuda, "NCCL ", op, ": ", name, " is not a device tensor");
  MXMOE_CHECK(t.is_contiguous(), "NCCL ", op, ": ", name, " ", shape_str(t.shape()), " is not contiguous");
}

}  // namespace

ncclUniqueId nccl_unique_id() {
  ncclUniqueId id;
  nccl_check(ncclGetUniqueId(&id), nullptr, [] { return std::string("ncclGetUniqueId"); });
  return id;
}

BootstrapBlob to_blob(const ncclUniqueId& id) {
  BootstrapBlob blob;
  std::memcpy(blob.data(), id.internal, blob.size());
  return blob;
}

ncclUniqueId nccl_id_from_blob(const BootstrapBlob& blob) {
  ncclUniqueId id;
  std::memcpy(id.internal, blob.data(), blob.size());
  return id;
}

NcclCommunicator::NcclCommunicator(const ncclUniqueId& id, int rank, int size, int device)
    : rank_(rank), size_(size), device_(device) {
  MXMOE_CHECK(size >= 1 && rank >= 0 && rank < size, "NCCL communicator: rank ", rank, " of world size ", size, " is invalid");
  DeviceGuard guard;
  CUDA_CHECK(cudaSetDevice(device));
  nccl_check(ncclCommInitRank(&comm_, size, id, rank), nullptr,
             [&] { return cat("ncclCommInitRank (rank ", rank, " of ", size, " on GPU ", device, ")"); });
}

NcclCommunicator::~NcclCommunicator() {
  if (aborted_) return;  // ncclCommAbort freed it
  if (const ncclResult_t r = ncclCommDestroy(comm_); r != ncclSuccess)
    log_warn("NCCL ncclCommDestroy (rank ", rank_, ") failed: ", ncclGetErrorString(r));
}

void NcclCommunicator::abort() {
  if (peer_) peer_->abort();
  if (aborted_.exchange(true)) return;
  if (const ncclResult_t r = ncclCommAbort(comm_); r != ncclSuccess)
    log_warn("NCCL ncclCommAbort (rank ", rank_, ") failed: ", ncclGetErrorString(r));
}

void NcclCommunicator::check_usable(const char* op) const {
  MXMOE_CHECK(!aborted_, "NCCL ", op, " on rank ", rank_, " of ", size_, " (GPU ", device_,
              "): the communicator was aborted after a failure on another rank");
}

void NcclCommunicator::all_reduce_sum(const Tensor& x, cudaStream_t stream) {
  check_usable("all_reduce_sum");
  check_device_tensor(x, "all_reduce_sum", "x");
  const ncclDataType_t type = nccl_type(x.dtype());
  if (x.numel() == 0) return;
  if (peer_ && x.nbytes() <= size_t(peer_->slot_bytes())) return peer_->all_reduce_sum(rank_, x, stream);
  nccl_check(ncclAllReduce(x.data(), x.data(), size_t(x.numel()), type, ncclSum, comm_, stream), comm_, [&] {
    return cat("all_reduce_sum of ", dtype_name(x.dtype()), " ", shape_str(x.shape()), " on rank ", rank_, " of ", size_,
               " (GPU ", device_, ")");
  });
}

void NcclCommunicator::all_gather(const Tensor& in, const Tensor& out, cudaStream_t stream) {
  check_usable("all_gather");
  check_device_tensor(in, "all_gather", "in");
  check_device_tensor(out, "all_gather", "out");
  Shape want = in.shape();
  if (!want.empty()) want[0] *= size_;
  MXMOE_CHECK(in.dim() > 0 && out.dtype() == in.dtype() && out.shape() == want, "NCCL all_gather: out ",
              dtype_name(out.dtype()), " ", shape_str(out.shape()), " does not fit in ", dtype_name(in.dtype()), " ",
              shape_str(in.shape()), " gathered from ", size_, " ranks (want ", shape_str(want), ")");
  if (in.numel() == 0) return;
  // Bytes: the gather moves them unchanged whatever the dtype.
  nccl_check(ncclAllGather(in.data(), out.data(), in.nbytes(), ncclUint8, comm_, stream), comm_, [&] {
    return cat("all_gather of ", dtype_name(in.dtype()), " ", shape_str(in.shape()), " on rank ", rank_, " of ", size_,
               " (GPU ", device_, ")");
  });
}

NcclGroup::NcclGroup(const ncclUniqueId& id, int world_size, int first_rank, const std::vector<int>& devices) {
  const int n = int(devices.size());
  MXMOE_CHECK(n >= 1 && first_rank >= 0 && first_rank + n <= world_size, "NCCL group: ranks ", first_rank, "..",
              first_rank + n - 1, " do not fit in world size ", world_size);
  const char* env = std::getenv("MXMOE_ALL_REDUCE");
  const std::string_view mode = env ? env : "peer";
  MXMOE_CHECK(mode == "peer" || mode == "nccl", "MXMOE_ALL_REDUCE=", mode, " is not peer or nccl");
  const auto what = [&] { return cat("communicator init (ranks ", first_rank, "..", first_rank + n - 1, " of ", world_size, ")"); };
  DeviceGuard guard;
  std::vector<ncclComm_t> comms(size_t(n), nullptr);
  nccl_check(ncclGroupStart(), nullptr, what);
  for (int i = 0; i < n; ++i) {
    CUDA_CHECK(cudaSetDevice(devices[size_t(i)]));
    const ncclResult_t r = ncclCommInitRank(&comms[size_t(i)], world_size, id, first_rank + i);
    if (r != ncclSuccess) ncclGroupEnd();
    nccl_check(r, nullptr, what);
  }
  nccl_check(ncclGroupEnd(), nullptr, what);
  for (int i = 0; i < n; ++i)
    comms_.push_back(std::unique_ptr<NcclCommunicator>(
        new NcclCommunicator(comms[size_t(i)], first_rank + i, world_size, devices[size_t(i)])));
  if (n == world_size && mode == "peer") peer_ = PeerAllReduce::create(devices);
  if (peer_) {
    for (const auto& c : comms_) c->peer_ = peer_.get();
    log_info("all-reduce: one-shot over peer access up to ", peer_->slot_bytes(), " bytes on ", n, " GPUs, NCCL above");
  }
}

NcclGroup::NcclGroup(const std::vector<int>& devices) : NcclGroup(nccl_unique_id(), int(devices.size()), 0, devices) {}

void NcclGroup::abort() {
  for (const auto& c : comms_) c->abort();
}

NcclGroup::~NcclGroup() {
  if (comms_.empty()) return;
  ncclResult_t r = ncclGroupStart();
  for (const auto& c : comms_)
    if (r == ncclSuccess && !c->aborted_) r = ncclCommFinalize(c->handle());
  if (const ncclResult_t end = ncclGroupEnd(); r == ncclSuccess) r = end;
  if (r != ncclSuccess) log_warn("NCCL ncclCommFinalize failed: ", ncclGetErrorString(r));
  comms_.clear();  // ncclCommDestroy each: local work only once finalized
}

NcclGroup nccl_group_for_node(const DistInit& init, const std::vector<int>& devices) {
  const int n = int(devices.size());
  MXMOE_CHECK(n >= 1, "nccl_group_for_node: no GPUs given for node ", init.node_rank);
  const BootstrapBlob blob = tcp_bootstrap(init, n, [] { return to_blob(nccl_unique_id()); });
  return NcclGroup(nccl_id_from_blob(blob), init.nnodes * n, init.node_rank * n, devices);
}

}  // namespace mxmoe
