#include "engine/env.h"

#include <cstdlib>
#include <string_view>

#include "engine/error.h"

namespace mxmoe {

bool env_flag(const char* name, bool fallback) {
  const char* env = std::getenv(name);
  if (!env || !*env) return fallback;
  const std::string_view value(env);
  MXMOE_CHECK(value == "0" || value == "1", name, "=", value, " is not 0 or 1");
  return value == "1";
}

}  // namespace mxmoe
