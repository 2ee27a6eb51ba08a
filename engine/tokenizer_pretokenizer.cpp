#include "engine/tokenizer_pretokenizer.h"

#include "engine/tokenizer_byte_level.h"
#include "engine/error.h"
#include "engine/tokenizer_regex.h"

namespace mxmoe {
namespace {

// The pattern ByteLevel uses when use_regex is true (GPT-2).
constexpr const char* kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

// Splits `in` at the matches of `re`: matches and the text between them become words
// (Isolated), or only the text between them (Removed). invert swaps the two roles.
void split(const Regex& re, bool removed, bool invert, const std::string& in, std::vector<std::string>& out) {
  size_t last = 0;
  const auto emit = [&](size_t b, size_t e, bool is_match) {
    if (b == e) return;
    if (removed && is_match != invert) return;
    out.emplace_back(in, b, e - b);
  };
  for (const auto& [b, e] : re.find_all(in)) {
    emit(last, b, false);
    emit(b, e, true);
    last = e;
  }
  emit(last, in.size(), false);
}

}  // namespace

PreTokenizer::PreTokenizer(const nlohmann::json& spec, const std::string& what) {
  if (!spec.is_null()) add(spec, what + " pre_tokenizer");
}

void PreTokenizer::add(const nlohmann::json& spec, const std::string& what) {
  const std::string type = spec.at("type").get<std::string>();
  if (type == "Sequence") {
    for (const auto& s : spec.at("pretokenizers")) add(s, what);
  } else if (type == "Split") {
    const auto& pattern = spec.at("pattern");
    const std::string re = pattern.contains("String") ? Regex::escape(pattern["String"].get<std::string>())
                                                      : pattern.at("Regex").get<std::string>();
    const std::string behavior = spec.at("behavior").get<std::string>();
    MXMOE_CHECK(behavior == "Isolated" || behavior == "Removed", what, ": unsupported Split behavior '",
                behavior, "' (supported: Isolated, Removed)");
    steps_.push_back([r = Regex(re, what), removed = behavior == "Removed", invert = spec.value("invert", false)](
                         const std::string& in, std::vector<std::string>& out) { split(r, removed, invert, in, out); });
  } else if (type == "ByteLevel") {
    // The prefix space goes on the piece before the GPT-2 regex splits it, as in tokenizers.
    if (spec.value("add_prefix_space", false)) {
      steps_.push_back([](const std::string& in, std::vector<std::string>& out) {
        out.push_back(in[0] == ' ' ? in : " " + in);
      });
    }
    if (spec.value("use_regex", true)) {
      steps_.push_back([r = Regex(kGpt2Pattern, what)](const std::string& in, std::vector<std::string>& out) {
        split(r, false, false, in, out);
      });
    }
    steps_.push_back([](const std::string& in, std::vector<std::string>& out) {
      const auto& t = byte_level::tables();
      std::string& w = out.emplace_back();
      w.reserve(in.size() * 2);
      for (const char c : in) w += t.to_char[static_cast<unsigned char>(c)];
    });
  } else {
    fail(what, ": unsupported pre_tokenizer type '", type, "' (supported: Sequence, Split, ByteLevel)");
  }
}

std::vector<std::string> PreTokenizer::operator()(std::string piece) const {
  std::vector<std::string> words, next;
  words.push_back(std::move(piece));
  for (const auto& step : steps_) {
    next.clear();
    for (const auto& w : words) step(w, next);
    words.swap(next);
  }
  return words;
}

}  // namespace mxmoe
