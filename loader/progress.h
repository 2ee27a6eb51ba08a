#pragma once
// The loader's progress bar: one line on stderr, redrawn at most 10 times a second, only when
// stderr is a terminal and not quiet: "loading  1234/18867 tensors  12.3/57.2 GB  24.1 GB/s  ETA 1.9 s".
#include <chrono>
#include <cstddef>

namespace mxmoe {

class LoadProgress {
 public:
  LoadProgress(size_t total_tensors, size_t total_bytes, bool quiet);
  ~LoadProgress();  // clears the line
  void advance(size_t tensors, size_t bytes);
  double seconds() const;  // since construction

 private:
  void draw();

  using Clock = std::chrono::steady_clock;
  bool enabled_;
  size_t total_tensors_, total_bytes_, tensors_ = 0, bytes_ = 0;
  Clock::time_point start_, last_draw_;
  bool drawn_ = false;
};

}  // namespace mxmoe
