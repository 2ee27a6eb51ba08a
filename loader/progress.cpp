#include "loader/progress.h"

#include <unistd.h>

#include <cstdio>

namespace mxmoe {

LoadProgress::LoadProgress(size_t total_tensors, size_t total_bytes, bool quiet)
    : enabled_(!quiet && ::isatty(STDERR_FILENO)),
      total_tensors_(total_tensors),
      total_bytes_(total_bytes),
      start_(Clock::now()),
      last_draw_(start_) {}

LoadProgress::~LoadProgress() {
  if (drawn_) std::fprintf(stderr, "\r\033[K");
}

double LoadProgress::seconds() const { return std::chrono::duration<double>(Clock::now() - start_).count(); }

void LoadProgress::advance(size_t tensors, size_t bytes) {
  tensors_ += tensors;
  bytes_ += bytes;
  if (!enabled_) return;
  const Clock::time_point now = Clock::now();
  if (now - last_draw_ < std::chrono::milliseconds(100) && tensors_ < total_tensors_) return;
  last_draw_ = now;
  draw();
}

void LoadProgress::draw() {
  const double s = seconds();
  const double rate = s > 0 ? double(bytes_) / s : 0;
  const double eta = rate > 0 ? double(total_bytes_ - bytes_) / rate : 0;
  std::fprintf(stderr, "\r\033[Kloading  %zu/%zu tensors  %.1f/%.1f GB  %.1f GB/s  ETA %.1f s", tensors_,
               total_tensors_, double(bytes_) / 1e9, double(total_bytes_) / 1e9, rate / 1e9, eta);
  std::fflush(stderr);
  drawn_ = true;
}

}  // namespace mxmoe
