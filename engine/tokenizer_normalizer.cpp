#include "engine/tokenizer_normalizer.h"

#include <cstdlib>
#include <memory>

#include <utf8proc.h>

#include "engine/error.h"
#include "engine/tokenizer_regex.h"
#include "engine/utf8.h"

namespace mxmoe {
namespace {

bool is_ascii(const std::string& s) {
  for (const char c : s) {
    if (static_cast<unsigned char>(c) >= 0x80) return false;
  }
  return true;
}

std::function<std::string(std::string)> unicode_form(int options, const std::string& what) {
  return [options, what](std::string s) {
    if (is_ascii(s)) return s;  // every normal form leaves ASCII alone
    utf8proc_uint8_t* out = nullptr;
    const auto n = utf8proc_map(reinterpret_cast<const utf8proc_uint8_t*>(s.data()),
                                static_cast<utf8proc_ssize_t>(s.size()), &out,
                                static_cast<utf8proc_option_t>(options | UTF8PROC_STABLE));
    MXMOE_CHECK(n >= 0, what, ": Unicode normalization failed: ", utf8proc_errmsg(n));
    std::unique_ptr<utf8proc_uint8_t, decltype(&std::free)> hold(out, std::free);
    return std::string(reinterpret_cast<const char*>(out), static_cast<size_t>(n));
  };
}

// {"String": s} or {"Regex": r} -> a Regex.
Regex pattern_regex(const nlohmann::json& pattern, const std::string& what) {
  if (pattern.contains("String")) return Regex(Regex::escape(pattern["String"].get<std::string>()), what);
  MXMOE_CHECK(pattern.contains("Regex"), what, ": pattern must be String or Regex: ", pattern.dump());
  return Regex(pattern["Regex"].get<std::string>(), what);
}

}  // namespace

Normalizer::Normalizer(const nlohmann::json& spec, const std::string& what) {
  if (!spec.is_null()) add(spec, what + " normalizer");
}

void Normalizer::add(const nlohmann::json& spec, const std::string& what) {
  const std::string type = spec.at("type").get<std::string>();
  if (type == "Sequence") {
    for (const auto& s : spec.at("normalizers")) add(s, what);
  } else if (type == "NFC") {
    steps_.push_back(unicode_form(UTF8PROC_COMPOSE, what));
  } else if (type == "NFD") {
    steps_.push_back(unicode_form(UTF8PROC_DECOMPOSE, what));
  } else if (type == "NFKC") {
    steps_.push_back(unicode_form(UTF8PROC_COMPOSE | UTF8PROC_COMPAT, what));
  } else if (type == "NFKD") {
    steps_.push_back(unicode_form(UTF8PROC_DECOMPOSE | UTF8PROC_COMPAT, what));
  } else if (type == "Lowercase") {
    steps_.push_back([](std::string s) {
      std::string out;
      for (size_t i = 0; i < s.size();) utf8::append(out, static_cast<char32_t>(utf8proc_tolower(utf8::next(s, i))));
      return out;
    });
  } else if (type == "Prepend") {
    steps_.push_back([p = spec.at("prepend").get<std::string>()](std::string s) { return s.empty() ? s : p + s; });
  } else if (type == "Replace") {
    steps_.push_back([re = pattern_regex(spec.at("pattern"), what),
                      content = spec.at("content").get<std::string>()](std::string s) {
      std::string out;
      size_t last = 0;
      for (const auto& [b, e] : re.find_all(s)) {
        out.append(s, last, b - last).append(content);
        last = e;
      }
      return out.append(s, last, std::string::npos);
    });
  } else {
    fail(what, ": unsupported normalizer type '", type,
         "' (supported: Sequence, NFC, NFD, NFKC, NFKD, Lowercase, Prepend, Replace)");
  }
}

std::string Normalizer::operator()(std::string s) const {
  for (const auto& step : steps_) s = step(std::move(s));
  return s;
}

}  // namespace mxmoe
