#pragma once
// The process-wide switch of programmatic dependent launch (kernels/pdl.cuh), host code only so
// that CPU code and tests can include it. The environment variable MXMOE_PDL=0 makes every PDL
// launch a plain one (each kernel then waits for its predecessor to finish), so one benchmark
// can compare the decode step with and without PDL; unset or 1: on (engine/env.h).
#include <atomic>

#include "engine/env.h"

namespace mxmoe {

namespace detail {
// Read from the environment once, at the first call (thread-safe static initialization; a bad
// value throws and is read again at the next call).
inline std::atomic<bool>& pdl_flag() {
  static std::atomic<bool> flag(env_flag("MXMOE_PDL", true));
  return flag;
}
}  // namespace detail

inline bool pdl_enabled() { return detail::pdl_flag().load(std::memory_order_relaxed); }

// Overrides the environment for the rest of the process (tests and benchmarks comparing both in
// one run). Affects launches made after the call; captured graphs keep what they were built with.
inline void set_pdl_enabled(bool on) { detail::pdl_flag().store(on, std::memory_order_relaxed); }

// Whether the kernels allowed to (kernels/pdl.cuh) let their dependents start before their own wait:
// MXMOE_EARLY_DEPENDENTS, on unless 0, read once (for comparisons in one benchmark run).
inline bool early_dependents_enabled() {
  static const bool on = env_flag("MXMOE_EARLY_DEPENDENTS", true);
  return on;
}

}  // namespace mxmoe
