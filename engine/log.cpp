#include "engine/log.h"

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <string_view>

namespace mxmoe {

namespace {

LogLevel level_from_env() {
  const char* env = std::getenv("MXMOE_LOG");
  if (!env) return LogLevel::info;
  const std::string_view v(env);
  if (v == "debug") return LogLevel::debug;
  if (v == "warn") return LogLevel::warn;
  if (v == "error") return LogLevel::error;
  if (v == "off") return LogLevel::off;
  return LogLevel::info;
}

std::atomic<LogLevel>& level_ref() {
  static std::atomic<LogLevel> level{level_from_env()};
  return level;
}

}  // namespace

LogLevel log_level() { return level_ref().load(std::memory_order_relaxed); }
void set_log_level(LogLevel level) { level_ref().store(level); }

void log_write(LogLevel level, const std::string& message) {
  static std::mutex mutex;
  static constexpr const char* kTags[] = {"debug", "info", "warn", "error"};
  std::lock_guard lock(mutex);
  std::fprintf(stderr, "[mxmoe %s] %s\n", kTags[int(level)], message.c_str());
}

}  // namespace mxmoe
