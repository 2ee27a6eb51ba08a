#pragma once
// Switches read from the environment (MXMOE_*), for A/B measurements and debugging.
namespace mxmoe {

// The variable as "0" (false) or "1" (true); unset or empty: `fallback`. Any other value is an
// mxmoe::Error naming the variable and the value, so a typo never silently measures the default.
bool env_flag(const char* name, bool fallback);

}  // namespace mxmoe
