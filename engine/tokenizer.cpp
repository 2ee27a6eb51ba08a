#include "engine/tokenizer.h"

#include <fstream>
#include <sstream>
#include <unordered_map>
#include <unordered_set>

#include <nlohmann/json.hpp>

#include "engine/bpe.h"
#include "engine/error.h"
#include "engine/tokenizer_added.h"
#include "engine/tokenizer_decoder.h"
#include "engine/tokenizer_normalizer.h"
#include "engine/tokenizer_pretokenizer.h"
#include "engine/utf8.h"

namespace mxmoe {
namespace {

// The "post_processor": which ids to put around the encoded text when add_special_tokens is
// set. TemplateProcessing (single-sequence template) adds ids; ByteLevel only adjusts offsets.
struct PostProcessor {
  std::vector<int32_t> before, after;

  void add(const nlohmann::json& spec, const std::string& what) {
    if (spec.is_null()) return;
    const std::string type = spec.at("type").get<std::string>();
    if (type == "Sequence") {
      for (const auto& s : spec.at("processors")) add(s, what);
    } else if (type == "TemplateProcessing") {
      bool seen_sequence = false;
      for (const auto& item : spec.at("single")) {
        if (item.contains("Sequence")) {
          seen_sequence = true;
          continue;
        }
        const std::string name = item.at("SpecialToken").at("id").get<std::string>();
        const auto& tok = spec.at("special_tokens");
        MXMOE_CHECK(tok.contains(name), what, ": template special token '", name, "' is not in special_tokens");
        for (const auto& id : tok[name].at("ids")) (seen_sequence ? after : before).push_back(id.get<int32_t>());
      }
    } else if (type != "ByteLevel") {
      fail(what, ": unsupported post_processor type '", type, "' (supported: TemplateProcessing, ByteLevel, Sequence)");
    }
  }
};

}  // namespace

struct Tokenizer::Impl {
  std::string source;
  std::unique_ptr<BpeModel> model;
  Normalizer normalizer;
  PreTokenizer pre_tokenizer;
  Decoder decoder;
  PostProcessor post;
  std::vector<AddedToken> added;
  std::unordered_map<int32_t, const AddedToken*> added_by_id;
  std::unordered_map<int32_t, std::string> added_text;
  TokenMap added_by_content;
  std::unordered_set<std::string> special_contents;
  std::unique_ptr<AddedTokenMatcher> raw_matcher, normalized_matcher;
  int32_t vocab_size = 0;

  Impl(const nlohmann::json& j, const std::string& src) : source(src) {
    const auto& m = j.at("model");
    const std::string type = m.value("type", "BPE");
    MXMOE_CHECK(type == "BPE", source, ": unsupported model type '", type, "' (supported: BPE)");
    model = std::make_unique<BpeModel>(m, source);
    normalizer = Normalizer(j.value("normalizer", nlohmann::json()), source);
    pre_tokenizer = PreTokenizer(j.value("pre_tokenizer", nlohmann::json()), source);
    decoder = Decoder(j.value("decoder", nlohmann::json()), source);
    post.add(j.value("post_processor", nlohmann::json()), source + " post_processor");

    for (const auto& a : j.value("added_tokens", nlohmann::json::array())) {
      AddedToken t;
      t.id = a.at("id").get<int32_t>();
      t.content = a.at("content").get<std::string>();
      t.single_word = a.value("single_word", false);
      t.lstrip = a.value("lstrip", false);
      t.rstrip = a.value("rstrip", false);
      t.normalized = a.value("normalized", !a.value("special", false));
      t.special = a.value("special", false);
      MXMOE_CHECK(t.id >= 0 && !t.content.empty(), source, ": bad added token ", a.dump());
      added.push_back(std::move(t));
    }
    vocab_size = model->max_id() + 1;
    std::vector<const AddedToken*> raw, norm;
    std::vector<std::string> raw_pat, norm_pat;
    for (const auto& t : added) {
      added_by_id[t.id] = &t;
      // A normalized token reads back (id_to_token, decode) in its normalized form.
      added_text[t.id] = t.normalized ? normalizer(t.content) : t.content;
      added_by_content[t.content] = t.id;
      if (t.special) special_contents.insert(t.content);
      vocab_size = std::max(vocab_size, t.id + 1);
      if (t.normalized) {
        norm.push_back(&t);
        norm_pat.push_back(normalizer(t.content));
      } else {
        raw.push_back(&t);
        raw_pat.push_back(t.content);
      }
    }
    raw_matcher = std::make_unique<AddedTokenMatcher>(raw, raw_pat);
    normalized_matcher = std::make_unique<AddedTokenMatcher>(norm, norm_pat);
  }

  // Normalizes, pre-tokenizes and runs the model on a piece without raw added tokens.
  void encode_plain(std::string_view piece, bool at_text_start, std::vector<int32_t>& ids) const {
    const std::string text = normalizer(std::string(piece));
    for (const TextPiece& p : normalized_matcher->split(text)) {
      if (p.token >= 0) {
        ids.push_back(p.token);
        continue;
      }
      for (const std::string& word : pre_tokenizer(text.substr(p.begin, p.end - p.begin), at_text_start && p.begin == 0)) {
        model->tokenize(word, ids);
      }
    }
  }
};

Tokenizer Tokenizer::from_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  MXMOE_CHECK(f, "cannot open tokenizer file ", path);
  std::ostringstream s;
  s << f.rdbuf();
  return from_json(s.str(), path);
}

Tokenizer Tokenizer::from_json(std::string_view json_text, const std::string& source) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(json_text);
  } catch (const nlohmann::json::exception& e) {
    fail(source, ": invalid JSON: ", e.what());
  }
  try {
    return Tokenizer(std::make_shared<const Impl>(j, source));
  } catch (const nlohmann::json::exception& e) {  // missing key / wrong type
    fail(source, ": malformed tokenizer.json: ", e.what());
  }
}

std::vector<int32_t> Tokenizer::encode(std::string_view text, bool add_special_tokens) const {
  utf8::check_valid(text, "Tokenizer::encode input");
  const Impl& t = *impl_;
  std::vector<int32_t> ids;
  ids.reserve(text.size() / 3 + 4);
  if (add_special_tokens) ids.insert(ids.end(), t.post.before.begin(), t.post.before.end());
  for (const TextPiece& p : t.raw_matcher->split(text)) {
    if (p.token >= 0) {
      ids.push_back(p.token);
    } else {
      t.encode_plain(text.substr(p.begin, p.end - p.begin), p.begin == 0, ids);
    }
  }
  if (add_special_tokens) ids.insert(ids.end(), t.post.after.begin(), t.post.after.end());
  return ids;
}

std::string Tokenizer::decode(std::span<const int32_t> ids, bool skip_special_tokens) const {
  const Impl& t = *impl_;
  std::vector<std::string> tokens;
  tokens.reserve(ids.size());
  for (const int32_t id : ids) {
    std::string token = id_to_token(id);
    if (skip_special_tokens && t.special_contents.count(token)) continue;
    tokens.push_back(std::move(token));
  }
  return t.decoder(std::move(tokens));
}

int32_t Tokenizer::vocab_size() const { return impl_->vocab_size; }

std::optional<int32_t> Tokenizer::token_to_id(std::string_view token) const {
  if (const auto it = impl_->added_by_content.find(token); it != impl_->added_by_content.end()) return it->second;
  return impl_->model->token_to_id(token);
}

std::string Tokenizer::id_to_token(int32_t id) const {
  if (const auto it = impl_->added_text.find(id); it != impl_->added_text.end()) return it->second;
  const std::string* s = impl_->model->id_to_token(id);
  MXMOE_CHECK(s, impl_->source, ": token id ", id, " is not in the vocabulary (size ", impl_->vocab_size, ")");
  return *s;
}

bool Tokenizer::is_special(int32_t id) const {
  const auto it = impl_->added_by_id.find(id);
  return it != impl_->added_by_id.end() && it->second->special;
}

std::optional<std::string> DecodeStream::step(int32_t id) {
  if (prefix_.empty() && !ids_.empty()) {
    std::string p = tokenizer_->decode(ids_, skip_special_);
    if (!utf8::ends_with_replacement(p)) {
      prefix_ = std::move(p);
      prefix_index_ = ids_.size();
    }
  }
  ids_.push_back(id);
  std::string text = tokenizer_->decode(ids_, skip_special_);
  if (text.size() <= prefix_.size() || utf8::ends_with_replacement(text)) return std::nullopt;
  MXMOE_CHECK(text.starts_with(prefix_), "DecodeStream: decoded text no longer starts with the emitted prefix");
  std::string fresh = text.substr(prefix_.size());
  const size_t new_prefix_index = ids_.size() - prefix_index_;
  ids_.erase(ids_.begin(), ids_.begin() + static_cast<std::ptrdiff_t>(prefix_index_));
  prefix_ = tokenizer_->decode(ids_, skip_special_);
  prefix_index_ = new_prefix_index;
  return fresh;
}

}  // namespace mxmoe
