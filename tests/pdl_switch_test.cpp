// The MXMOE_PDL switch (kernels/pdl_switch.h): unset or 1 is on, 0 is off, anything else an Error
// naming the variable and the value; set_pdl_enabled overrides it for the rest of the process.
#include <gtest/gtest.h>

#include "kernels/pdl_switch.h"
#include "test_util.h"

using namespace mxmoe;
using mxmoe::testing::error_of;

TEST(PdlSwitch, ParsesZeroOneOrUnset) {
  EXPECT_TRUE(parse_pdl_switch(nullptr));
  EXPECT_TRUE(parse_pdl_switch("1"));
  EXPECT_FALSE(parse_pdl_switch("0"));
}

TEST(PdlSwitch, OtherValuesAreErrorsNamingVariableAndValue) {
  for (const char* bad : {"", "2", "on", "true", "01", " 0", "0 "}) {
    const std::string message = error_of([&] { parse_pdl_switch(bad); });
    EXPECT_NE(message.find("MXMOE_PDL=" + std::string(bad) + " "), std::string::npos) << message;
  }
}

TEST(PdlSwitch, OverrideTakesEffectAndRestores) {
  const bool was = pdl_enabled();
  set_pdl_enabled(!was);
  EXPECT_EQ(pdl_enabled(), !was);
  set_pdl_enabled(was);
  EXPECT_EQ(pdl_enabled(), was);
}
