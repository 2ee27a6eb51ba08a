#pragma once
// splitmix64's finaliser: the counter-based hash behind every seeded random number in the engine
// (dummy weights, sampling draws), identical on the host and the device.
#include <cstdint>

#include "kernels/mxfp8_format.h"  // MXMOE_HD

namespace mxmoe {

MXMOE_HD uint64_t mix64(uint64_t z) {
  z += 0x9e3779b97f4a7c15ull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

}  // namespace mxmoe
