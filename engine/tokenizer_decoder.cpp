#include "engine/tokenizer_decoder.h"

#include <cctype>

#include "engine/tokenizer_byte_level.h"
#include "engine/error.h"
#include "engine/utf8.h"

namespace mxmoe {
namespace {

constexpr const char* kReplacement = "\xEF\xBF\xBD";

std::vector<std::string> byte_level_decode(std::vector<std::string> tokens) {
  // Each token maps back to bytes; a token with a character outside the map keeps its UTF-8.
  std::string bytes;
  for (const auto& t : tokens) {
    const size_t mark = bytes.size();
    bool mapped = true;
    for (size_t i = 0; i < t.size() && mapped;) {
      const int b = byte_level::to_byte(utf8::next(t, i));
      if (b < 0) {
        mapped = false;
      } else {
        bytes += static_cast<char>(b);
      }
    }
    if (!mapped) bytes.resize(mark), bytes += t;
  }
  return {utf8::lossy(bytes)};
}

// "<0x0A>"-style tokens become bytes; a run of them that is not valid UTF-8 becomes one U+FFFD
// per byte.
std::vector<std::string> byte_fallback(std::vector<std::string> tokens) {
  std::vector<std::string> out;
  std::string run;
  size_t run_len = 0;
  const auto flush = [&] {
    if (run_len == 0) return;
    if (utf8::find_invalid(run) == std::string::npos) {
      out.push_back(run);
    } else {
      for (size_t k = 0; k < run_len; ++k) out.emplace_back(kReplacement);
    }
    run.clear();
    run_len = 0;
  };
  for (auto& t : tokens) {
    const auto hex = [](char c) { return std::isxdigit(static_cast<unsigned char>(c)) != 0; };
    if (t.size() == 6 && t.starts_with("<0x") && t[5] == '>' && hex(t[3]) && hex(t[4])) {
      run += static_cast<char>(std::stoi(t.substr(3, 2), nullptr, 16));
      ++run_len;
    } else {
      flush();
      out.push_back(std::move(t));
    }
  }
  flush();
  return out;
}

}  // namespace

Decoder::Decoder(const nlohmann::json& spec, const std::string& what) {
  if (spec.is_null()) return;
  join_with_space_ = false;
  add(spec, what + " decoder");
}

void Decoder::add(const nlohmann::json& spec, const std::string& what) {
  const std::string type = spec.at("type").get<std::string>();
  if (type == "Sequence") {
    for (const auto& s : spec.at("decoders")) add(s, what);
  } else if (type == "ByteLevel") {
    steps_.push_back(byte_level_decode);
  } else if (type == "ByteFallback") {
    steps_.push_back(byte_fallback);
  } else if (type == "Fuse") {
    steps_.push_back([](std::vector<std::string> tokens) {
      std::string all;
      for (const auto& t : tokens) all += t;
      return std::vector<std::string>{all};
    });
  } else if (type == "Replace") {
    const auto& pattern = spec.at("pattern");
    MXMOE_CHECK(pattern.contains("String"), what, ": Replace decoder supports String patterns only, got ", pattern.dump());
    steps_.push_back([from = pattern["String"].get<std::string>(), to = spec.at("content").get<std::string>()](
                         std::vector<std::string> tokens) {
      for (auto& t : tokens) {
        std::string r;
        size_t last = 0;
        for (size_t p; !from.empty() && (p = t.find(from, last)) != std::string::npos; last = p + from.size()) {
          r.append(t, last, p - last).append(to);
        }
        t = r.append(t, last, std::string::npos);
      }
      return tokens;
    });
  } else if (type == "Metaspace") {
    // ▁ becomes a space, except in the first token (where it is dropped) unless the scheme is
    // "never" (Metaspace::decode_chain of tokenizers).
    const std::string scheme = spec.value("prepend_scheme", spec.value("add_prefix_space", true) ? "always" : "never");
    steps_.push_back([rep = spec.value("replacement", "\u2581"), drop_first = scheme != "never"](std::vector<std::string> tokens) {
      for (size_t k = 0; k < tokens.size(); ++k) {
        std::string r;
        size_t last = 0;
        for (size_t p; (p = tokens[k].find(rep, last)) != std::string::npos; last = p + rep.size()) {
          r.append(tokens[k], last, p - last).append(k == 0 && drop_first ? "" : " ");
        }
        tokens[k] = r.append(tokens[k], last, std::string::npos);
      }
      return tokens;
    });
  } else if (type == "Strip") {
    // Removes up to `start` leading and `stop` trailing `content` characters of every token.
    const std::string content = spec.at("content").get<std::string>();
    MXMOE_CHECK(!content.empty() && utf8::char_len(static_cast<unsigned char>(content[0])) == content.size(), what,
                ": Strip content must be one character, got '", content, "'");
    steps_.push_back([content, start = spec.at("start").get<size_t>(), stop = spec.at("stop").get<size_t>()](
                         std::vector<std::string> tokens) {
      for (auto& t : tokens) {
        size_t b = 0, e = t.size();
        for (size_t k = 0; k < start && t.compare(b, content.size(), content) == 0; ++k) b += content.size();
        for (size_t k = 0; k < stop && e >= b + content.size() &&
                           t.compare(e - content.size(), content.size(), content) == 0;
             ++k) {
          e -= content.size();
        }
        t = t.substr(b, e - b);
      }
      return tokens;
    });
  } else {
    fail(what, ": unsupported decoder type '", type,
         "' (supported: Sequence, ByteLevel, Metaspace, ByteFallback, Fuse, Replace, Strip)");
  }
}

std::string Decoder::operator()(std::vector<std::string> tokens) const {
  for (const auto& step : steps_) tokens = step(std::move(tokens));
  std::string out;
  for (size_t k = 0; k < tokens.size(); ++k) {
    if (k && join_with_space_) out += ' ';
    out += tokens[k];
  }
  return out;
}

}  // namespace mxmoe
