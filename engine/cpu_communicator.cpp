#include "engine/cpu_communicator.h"

#include <condition_variable>
#include <cstring>
#include <exception>
#include <mutex>
#include <thread>

#include "engine/error.h"
#include "engine/numerics.h"

namespace mxmoe {

// One collective, as one rank called it. `bad_arg` is this rank's own argument error, reported on
// every rank (not just this one) so that nobody is left waiting.
struct CpuCommunicator::Call {
  const char* op = "";        // "all_reduce_sum" or "all_gather"
  bool gather = false;
  DType dtype = DType::f32;
  Shape in_shape;
  int64_t numel = 0;          // elements of `in`
  std::byte* in = nullptr;    // all_reduce_sum: x, reduced in place
  std::byte* out = nullptr;   // all_gather only
  std::string bad_arg;
};

// A collective is two barriers: after the first every rank's Call is visible and each rank reads
// the others' inputs; after the second nobody reads any more, so a rank may write its output and
// return (and its input may change).
struct CpuCommunicator::Group {
  Group(int n, CpuCommunicatorOptions o) : size(n), options(o), calls(size_t(n)) {}

  const int size;
  const CpuCommunicatorOptions options;
  std::mutex mu;
  std::condition_variable cv;
  int arrived = 0;
  uint64_t generation = 0;
  std::string abort_reason;   // non-empty once aborted
  std::vector<Call> calls;    // [size]: slot r is written by rank r only, before the first barrier

  void abort(const std::string& reason) {
    {
      std::lock_guard lock(mu);
      if (abort_reason.empty()) abort_reason = reason.empty() ? "(no reason given)" : reason;
    }
    cv.notify_all();
  }

  // Returns once all `size` ranks have arrived; throws when the group is or gets aborted, and
  // aborts it when the timeout passes first.
  void barrier(int rank, const char* op) {
    std::unique_lock lock(mu);
    const auto aborted = [&] { return cat("cpu communicator rank ", rank, ", ", op, ": group aborted: ", abort_reason); };
    if (!abort_reason.empty()) throw Error(aborted());
    const uint64_t gen = generation;
    if (++arrived == size) {
      arrived = 0;
      ++generation;
      cv.notify_all();
      return;
    }
    const bool woke = cv.wait_for(lock, options.timeout, [&] { return generation != gen || !abort_reason.empty(); });
    if (!woke) {
      abort_reason = cat("rank ", rank, " waited ", options.timeout.count(), " ms in ", op, " for the other ranks (",
                         arrived, " of ", size, " arrived)");
      cv.notify_all();
    }
    if (!abort_reason.empty()) throw Error(aborted());
  }
};

std::vector<std::unique_ptr<CpuCommunicator>> CpuCommunicator::create_group(int size, CpuCommunicatorOptions options) {
  MXMOE_CHECK(size >= 1, "cpu communicator: group size must be >= 1, got ", size);
  MXMOE_CHECK(options.timeout.count() > 0, "cpu communicator: timeout must be positive, got ", options.timeout.count(), " ms");
  auto group = std::make_shared<Group>(size, options);
  std::vector<std::unique_ptr<CpuCommunicator>> comms;
  for (int r = 0; r < size; ++r) comms.push_back(std::unique_ptr<CpuCommunicator>(new CpuCommunicator(group, r)));
  return comms;
}

int CpuCommunicator::size() const { return group_->size; }

void CpuCommunicator::abort(const std::string& reason) { group_->abort(reason); }

namespace {

std::string describe(const CpuCommunicator::Call& c) { return cat(dtype_name(c.dtype), " ", shape_str(c.in_shape)); }

std::string host_tensor_error(const Tensor& t, const char* name) {
  if (t.device() != Device::cpu) return cat(name, " is not a host tensor");
  if (!t.is_contiguous()) return cat(name, " ", shape_str(t.shape()), " is not contiguous");
  return "";
}

// The same text on every rank (it depends only on the calls): empty when the calls agree.
std::string mismatch(const std::vector<CpuCommunicator::Call>& calls) {
  std::string bad;
  for (size_t r = 0; r < calls.size(); ++r)
    if (!calls[r].bad_arg.empty()) bad += cat(bad.empty() ? "" : "; ", "rank ", r, ": ", calls[r].bad_arg);
  if (!bad.empty()) return cat(calls[0].op, ": bad argument: ", bad);

  const auto list = [&](auto&& part) {
    std::string s;
    for (size_t r = 0; r < calls.size(); ++r) s += cat(r ? ", " : "", "rank ", r, " ", part(calls[r]));
    return s;
  };
  for (const auto& c : calls)
    if (std::strcmp(c.op, calls[0].op) != 0)
      return cat("ranks called different collectives: ", list([](const auto& x) { return std::string(x.op); }));
  for (const auto& c : calls)
    if (c.dtype != calls[0].dtype || c.numel != calls[0].numel)
      return cat(calls[0].op, " called with mismatched tensors: ", list(describe));
  return "";
}

void sum_in_rank_order(const std::vector<CpuCommunicator::Call>& calls, std::vector<float>& sum) {
  const size_t n = size_t(calls[0].numel);
  sum.resize(n);
  for (size_t r = 0; r < calls.size(); ++r) {
    if (calls[r].dtype == DType::f32) {
      const float* x = reinterpret_cast<const float*>(calls[r].in);
      for (size_t i = 0; i < n; ++i) sum[i] = r == 0 ? x[i] : sum[i] + x[i];
    } else {
      const uint16_t* x = reinterpret_cast<const uint16_t*>(calls[r].in);
      for (size_t i = 0; i < n; ++i) sum[i] = r == 0 ? bf16_to_f32(x[i]) : sum[i] + bf16_to_f32(x[i]);
    }
  }
}

}  // namespace

void CpuCommunicator::collective(Call call) {
  Group& g = *group_;
  const char* op = call.op;
  const bool reduce = !call.gather;
  g.calls[size_t(rank_)] = std::move(call);  // nobody reads the slots now: they passed the last second barrier
  g.barrier(rank_, op);

  const std::string error = mismatch(g.calls);
  thread_local std::vector<float> sum;  // [numel] this rank's private copy of the result
  const Call& mine = g.calls[size_t(rank_)];
  if (error.empty() && reduce) sum_in_rank_order(g.calls, sum);
  if (error.empty() && !reduce) {
    const size_t bytes = size_t(mine.numel) * dtype_size(mine.dtype);
    for (size_t r = 0; r < g.calls.size(); ++r)
      if (bytes > 0 && mine.out + r * bytes != g.calls[r].in) std::memcpy(mine.out + r * bytes, g.calls[r].in, bytes);
  }
  g.barrier(rank_, op);
  MXMOE_CHECK(error.empty(), "cpu communicator rank ", rank_, ": ", error);

  if (reduce && mine.dtype == DType::f32) {
    if (!sum.empty()) std::memcpy(mine.in, sum.data(), sum.size() * sizeof(float));
  } else if (reduce) {
    uint16_t* x = reinterpret_cast<uint16_t*>(mine.in);
    for (size_t i = 0; i < sum.size(); ++i) x[i] = f32_to_bf16(sum[i]);
  }
}

void CpuCommunicator::all_reduce_sum(const Tensor& x, cudaStream_t) {
  Call call{.op = "all_reduce_sum", .dtype = x.dtype(), .in_shape = x.shape(), .numel = x.numel(),
            .in = static_cast<std::byte*>(x.data())};
  call.bad_arg = host_tensor_error(x, "x");
  if (call.bad_arg.empty() && x.dtype() != DType::f32 && x.dtype() != DType::bf16)
    call.bad_arg = cat("x has dtype ", dtype_name(x.dtype()), " (bf16 or f32 supported)");
  collective(std::move(call));
}

void CpuCommunicator::all_gather(const Tensor& in, const Tensor& out, cudaStream_t) {
  Call call{.op = "all_gather", .gather = true, .dtype = in.dtype(), .in_shape = in.shape(), .numel = in.numel(),
            .in = static_cast<std::byte*>(in.data()), .out = static_cast<std::byte*>(out.data())};
  call.bad_arg = host_tensor_error(in, "in");
  if (call.bad_arg.empty()) call.bad_arg = host_tensor_error(out, "out");
  Shape want = in.shape();
  if (!want.empty()) want[0] *= size();
  if (call.bad_arg.empty() && (in.dim() == 0 || out.dtype() != in.dtype() || out.shape() != want))
    call.bad_arg = cat("out ", dtype_name(out.dtype()), " ", shape_str(out.shape()), " does not fit in ",
                       dtype_name(in.dtype()), " ", shape_str(in.shape()), " gathered from ", size(), " ranks (want ",
                       shape_str(want), ")");
  if (call.bad_arg.empty() && in.nbytes() > 0) {
    const bool overlap = call.in < call.out + out.nbytes() && call.out < call.in + in.nbytes();
    if (overlap && call.in != call.out + size_t(rank_) * in.nbytes())
      call.bad_arg = "in overlaps out other than as this rank's slice of it";
  }
  collective(std::move(call));
}

void run_ranks(const std::vector<std::unique_ptr<CpuCommunicator>>& comms,
               const std::function<void(CpuCommunicator&)>& fn) {
  std::mutex mu;
  std::exception_ptr first;
  std::vector<std::thread> threads;
  for (const auto& comm : comms) {
    threads.emplace_back([&, c = comm.get()] {
      try {
        fn(*c);
      } catch (...) {
        {
          std::lock_guard lock(mu);
          if (!first) first = std::current_exception();
        }
        c->abort(cat("rank ", c->rank(), " failed: ", message_of(std::current_exception())));
      }
    });
  }
  for (auto& t : threads) t.join();
  if (first) std::rethrow_exception(first);
}

}  // namespace mxmoe
