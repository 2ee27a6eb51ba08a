#pragma once
// A fixed set of threads that run one parallel loop at a time: run(n, fn) calls fn(i) for every
// i in [0, n) (the calling thread helps) and returns when all are done, rethrowing the first
// exception. The loader uses it to copy from the mmap into staging buffers: one thread cannot
// keep up with a PCIe link (H100 box: one thread 7-8 GB/s from the page cache, 16 threads 52-67).
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace mxmoe {

class WorkerPool {
 public:
  explicit WorkerPool(int threads);  // threads >= 1, the caller included
  ~WorkerPool();
  WorkerPool(const WorkerPool&) = delete;
  WorkerPool& operator=(const WorkerPool&) = delete;

  int threads() const { return int(workers_.size()) + 1; }
  void run(size_t n, const std::function<void(size_t)>& fn);

 private:
  void work();   // claims indices of the current loop until none are left
  void serve();  // worker thread body

  std::mutex mutex_;
  std::condition_variable wake_, done_;
  const std::function<void(size_t)>* fn_ = nullptr;
  size_t n_ = 0, next_ = 0, finished_ = 0;
  uint64_t generation_ = 0;
  bool stop_ = false;
  std::exception_ptr error_;
  std::vector<std::thread> workers_;
};

}  // namespace mxmoe
