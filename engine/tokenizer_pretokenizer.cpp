#include "engine/tokenizer_pretokenizer.h"

#include "engine/tokenizer_byte_level.h"
#include "engine/error.h"
#include "engine/tokenizer_regex.h"

namespace mxmoe {
namespace {

// The pattern ByteLevel uses when use_regex is true (GPT-2).
constexpr const char* kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

using Word = PreTokenizer::Word;

// Splits `in` at the matches of `re`: matches and the text between them become words
// (Isolated), or only the text between them (Removed). invert swaps the two roles.
void split(const Regex& re, bool removed, bool invert, const Word& in, std::vector<Word>& out) {
  size_t last = 0;
  const auto emit = [&](size_t b, size_t e, bool is_match) {
    if (b == e) return;
    if (removed && is_match != invert) return;
    out.push_back({in.text.substr(b, e - b), in.at_text_start && b == 0});
  };
  for (const auto& [b, e] : re.find_all(in.text)) {
    emit(last, b, false);
    emit(b, e, true);
    last = e;
  }
  emit(last, in.text.size(), false);
}

std::string replace_all(const std::string& s, const std::string& from, const std::string& to) {
  std::string out;
  size_t last = 0;
  for (size_t p; (p = s.find(from, last)) != std::string::npos; last = p + from.size()) out.append(s, last, p - last).append(to);
  return out.append(s, last, std::string::npos);
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
                         const Word& in, std::vector<Word>& out) { split(r, removed, invert, in, out); });
  } else if (type == "ByteLevel") {
    // The prefix space goes on the piece before the GPT-2 regex splits it, as in tokenizers.
    if (spec.value("add_prefix_space", false)) {
      steps_.push_back([](const Word& in, std::vector<Word>& out) {
        out.push_back({in.text[0] == ' ' ? in.text : " " + in.text, in.at_text_start});
      });
    }
    if (spec.value("use_regex", true)) {
      steps_.push_back([r = Regex(kGpt2Pattern, what)](const Word& in, std::vector<Word>& out) {
        split(r, false, false, in, out);
      });
    }
    steps_.push_back([](const Word& in, std::vector<Word>& out) {
      const auto& t = byte_level::tables();
      Word& w = out.emplace_back(Word{{}, in.at_text_start});
      w.text.reserve(in.text.size() * 2);
      for (const char c : in.text) w.text += t.to_char[static_cast<unsigned char>(c)];
    });
  } else if (type == "Metaspace") {
    // Spaces become the replacement character (▁), which is prepended to the piece (always,
    // or only at the start of the text: "first"); split=true then cuts before every ▁.
    const std::string rep = spec.value("replacement", "\u2581");
    const std::string scheme = spec.value("prepend_scheme", spec.value("add_prefix_space", true) ? "always" : "never");
    MXMOE_CHECK(scheme == "always" || scheme == "first" || scheme == "never", what,
                ": unsupported Metaspace prepend_scheme '", scheme, "'");
    steps_.push_back([rep, scheme, split_words = spec.value("split", true)](const Word& in, std::vector<Word>& out) {
      std::string s = replace_all(in.text, " ", rep);
      if (!s.starts_with(rep) && (scheme == "always" || (scheme == "first" && in.at_text_start))) s = rep + s;
      if (!split_words) {
        out.push_back({std::move(s), in.at_text_start});
        return;
      }
      for (size_t b = 0; b < s.size();) {  // MergedWithNext: each ▁ starts a word
        size_t e = s.find(rep, b + (s.compare(b, rep.size(), rep) == 0 ? rep.size() : 0));
        if (e == std::string::npos) e = s.size();
        out.push_back({s.substr(b, e - b), in.at_text_start && b == 0});
        b = e;
      }
    });
  } else {
    fail(what, ": unsupported pre_tokenizer type '", type, "' (supported: Sequence, Split, ByteLevel, Metaspace)");
  }
}

std::vector<std::string> PreTokenizer::operator()(std::string piece, bool at_text_start) const {
  std::vector<Word> words, next;
  words.push_back({std::move(piece), at_text_start});
  for (const auto& step : steps_) {
    next.clear();
    for (const auto& w : words) step(w, next);
    words.swap(next);
  }
  std::vector<std::string> out;
  out.reserve(words.size());
  for (auto& w : words) out.push_back(std::move(w.text));
  return out;
}

}  // namespace mxmoe
