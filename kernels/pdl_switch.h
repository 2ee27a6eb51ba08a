#pragma once
// The process-wide switch of programmatic dependent launch (kernels/pdl.cuh), host code only so
// that CPU code and tests can include it. The environment variable MXMOE_PDL=0 makes launch_pdl
// launch without the attribute (every kernel then waits for its predecessor to finish, as a plain
// launch), so one benchmark can compare the decode step with and without PDL; unset or 1: on.
#include <atomic>
#include <cstdlib>
#include <cstring>

#include "engine/error.h"

namespace mxmoe {

// The value of MXMOE_PDL (nullptr: unset) as a switch; anything but unset, "0" or "1" is an Error.
inline bool parse_pdl_switch(const char* value) {
  if (value == nullptr || std::strcmp(value, "1") == 0) return true;
  if (std::strcmp(value, "0") == 0) return false;
  fail("environment variable MXMOE_PDL=", value, " is not valid (0: launch without PDL, 1: with PDL)");
}

namespace detail {
// Read from the environment once, at the first call (thread-safe static initialization; a bad
// value throws and is read again at the next call).
inline std::atomic<bool>& pdl_flag() {
  static std::atomic<bool> flag(parse_pdl_switch(std::getenv("MXMOE_PDL")));
  return flag;
}
}  // namespace detail

inline bool pdl_enabled() { return detail::pdl_flag().load(std::memory_order_relaxed); }

// Overrides the environment for the rest of the process (tests and benchmarks comparing both in
// one run). Affects launches made after the call; captured graphs keep what they were built with.
inline void set_pdl_enabled(bool on) { detail::pdl_flag().store(on, std::memory_order_relaxed); }

}  // namespace mxmoe
