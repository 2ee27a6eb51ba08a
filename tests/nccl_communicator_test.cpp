// NcclGroup's argument checks, which come before any GPU or NCCL call (so they run in CI): ranks
// that do not fit the world, and an unknown MXMOE_ALL_REDUCE.
#include <gtest/gtest.h>

#include <cstdlib>

#include "engine/nccl_communicator.h"
#include "test_util.h"

using namespace mxmoe;
using mxmoe::testing::error_of;

TEST(NcclCommunicator, GroupRefusesRanksOutsideTheWorld) {
  const ncclUniqueId id{};
  EXPECT_NE(error_of([&] { NcclGroup(id, 2, 1, {0, 1}); }).find("NCCL group: ranks 1..2 do not fit in world size 2"),
            std::string::npos);
}

TEST(NcclCommunicator, GroupRefusesAnUnknownAllReduceMode) {
  setenv("MXMOE_ALL_REDUCE", "fast", 1);
  const std::string error = error_of([] { NcclGroup({0}); });
  unsetenv("MXMOE_ALL_REDUCE");
  EXPECT_NE(error.find("MXMOE_ALL_REDUCE=fast is not peer or nccl"), std::string::npos) << error;
}
