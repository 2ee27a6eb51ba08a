#pragma once
// fn(r) on GPUs 0 .. n-1 at once, one thread per GPU with its device current, as the
// tensor-parallel runtime drives its ranks; returns each thread's error_of (or "(no error)").
#include <cuda_runtime.h>

#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "engine/cuda_check.h"
#include "test_util.h"

namespace mxmoe::testing {

inline std::vector<std::string> on_each_gpu(int n, const std::function<void(int)>& fn) {
  std::vector<std::string> errors(static_cast<size_t>(n));
  std::vector<std::thread> threads;
  for (int r = 0; r < n; ++r)
    threads.emplace_back([&, r] {
      errors[size_t(r)] = error_of([&] {
        CUDA_CHECK(cudaSetDevice(r));
        fn(r);
      });
    });
  for (std::thread& t : threads) t.join();
  return errors;
}

}  // namespace mxmoe::testing
