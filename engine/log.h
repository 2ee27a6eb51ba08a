#pragma once
// A small leveled logger on stderr: log_info("loaded ", n, " tensors").
// MXMOE_LOG=debug|info|warn|error|off sets the level (default info).
#include "engine/error.h"

namespace mxmoe {

enum class LogLevel { debug, info, warn, error, off };

LogLevel log_level();
void set_log_level(LogLevel level);
void log_write(LogLevel level, const std::string& message);

template <class... Args> void log_debug(const Args&... a) { if (log_level() <= LogLevel::debug) log_write(LogLevel::debug, cat(a...)); }
template <class... Args> void log_info(const Args&... a) { if (log_level() <= LogLevel::info) log_write(LogLevel::info, cat(a...)); }
template <class... Args> void log_warn(const Args&... a) { if (log_level() <= LogLevel::warn) log_write(LogLevel::warn, cat(a...)); }
template <class... Args> void log_error(const Args&... a) { if (log_level() <= LogLevel::error) log_write(LogLevel::error, cat(a...)); }

}  // namespace mxmoe
