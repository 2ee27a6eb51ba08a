#include "engine/env.h"

#include <gtest/gtest.h>

#include <cstdlib>

#include "test_util.h"

using namespace mxmoe;

TEST(EnvFlag, ZeroOneOrTheFallback) {
  const char* name = "MXMOE_TEST_ENV_FLAG";
  unsetenv(name);
  EXPECT_TRUE(env_flag(name, true));
  EXPECT_FALSE(env_flag(name, false));
  setenv(name, "", 1);
  EXPECT_TRUE(env_flag(name, true));
  setenv(name, "0", 1);
  EXPECT_FALSE(env_flag(name, true));
  setenv(name, "1", 1);
  EXPECT_TRUE(env_flag(name, false));
  setenv(name, "yes", 1);
  EXPECT_EQ(mxmoe::testing::error_of([&] { env_flag(name, true); }), "MXMOE_TEST_ENV_FLAG=yes is not 0 or 1");
  unsetenv(name);
}
