#pragma once
// Errors: every failure is an mxmoe::Error whose message names what went wrong and where
// (file, tensor, layer, value). MXMOE_CHECK builds the message from its arguments.
#include <exception>
#include <sstream>
#include <stdexcept>
#include <string>

namespace mxmoe {

struct Error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

template <class... Args>
std::string cat(const Args&... args) {
  std::ostringstream s;
  (s << ... << args);
  return s.str();
}

template <class... Args>
[[noreturn]] void fail(const Args&... args) {
  throw Error(cat(args...));
}

// The message of a caught exception (for errors passed between threads).
inline std::string message_of(const std::exception_ptr& e) {
  try {
    std::rethrow_exception(e);
  } catch (const std::exception& x) {
    return x.what();
  } catch (...) {
    return "unknown exception";
  }
}

}  // namespace mxmoe

// MXMOE_CHECK(cond, "message parts", value, ...): throws mxmoe::Error when cond is false.
#define MXMOE_CHECK(cond, ...)                  \
  do {                                          \
    if (!(cond)) ::mxmoe::fail(__VA_ARGS__);    \
  } while (0)
