// The MXMOE_PDL switch (kernels/pdl_switch.h; its parsing is engine/env.h's env_flag, tested in
// env_test): set_pdl_enabled overrides it for the rest of the process.
#include <gtest/gtest.h>

#include "kernels/pdl_switch.h"

using namespace mxmoe;

TEST(PdlSwitch, OverrideTakesEffectAndRestores) {
  const bool was = pdl_enabled();
  set_pdl_enabled(!was);
  EXPECT_EQ(pdl_enabled(), !was);
  set_pdl_enabled(was);
  EXPECT_EQ(pdl_enabled(), was);
}
