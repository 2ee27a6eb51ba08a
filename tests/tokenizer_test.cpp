// Tokenizer vs Hugging Face `tokenizers`: encode (with and without special tokens), decode (with
// and without skip_special_tokens) and DecodeStream chunks must equal the goldens written by
// tests/data/make_tokenizer_goldens.py for the real Qwen3, Llama-2 and DeepSeek-V3 tokenizers.
#include "engine/tokenizer.h"

#include <fstream>
#include <map>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "engine/error.h"
#include "engine/utf8.h"
#include "tests/test_util.h"

using mxmoe::DecodeStream;
using mxmoe::Tokenizer;

namespace {

const std::string kData = MXMOE_TEST_DATA;

nlohmann::json read_json(const std::string& path) {
  std::ifstream f(path);
  EXPECT_TRUE(f) << "cannot open " << path;
  return nlohmann::json::parse(f);
}

// Each tokenizer is loaded once for the whole binary (parsing 10 MB of JSON takes a while).
const Tokenizer& tokenizer(const std::string& name) {
  static std::map<std::string, Tokenizer> cache;
  auto it = cache.find(name);
  if (it == cache.end()) {
    it = cache.emplace(name, Tokenizer::from_file(kData + "/tokenizers/" + name + "/tokenizer.json")).first;
  }
  return it->second;
}

std::string show(const std::vector<int32_t>& ids) {
  std::string s;
  for (const int32_t id : ids) s += std::to_string(id) + " ";
  return s;
}

class Goldens : public ::testing::TestWithParam<std::string> {};

TEST_P(Goldens, EncodeDecodeStreamMatchTokenizers) {
  const Tokenizer& tok = tokenizer(GetParam());
  const auto gold = read_json(kData + "/tokenizer_goldens/" + GetParam() + ".json").at("encode");
  ASSERT_GE(gold.at("cases").size(), 30u);
  for (const auto& c : gold.at("cases")) {
    const std::string text = c.at("text");
    SCOPED_TRACE("text: " + text);
    const auto ids = c.at("ids").get<std::vector<int32_t>>();
    EXPECT_EQ(show(tok.encode(text, true)), show(ids));
    EXPECT_EQ(show(tok.encode(text, false)), show(c.at("ids_no_special").get<std::vector<int32_t>>()));
    EXPECT_EQ(tok.decode(ids, false), c.at("decode").get<std::string>());
    EXPECT_EQ(tok.decode(ids, true), c.at("decode_skip_special").get<std::string>());
    DecodeStream stream(tok);
    std::vector<std::string> chunks;
    for (const int32_t id : ids) {
      if (auto piece = stream.step(id)) chunks.push_back(*piece);
    }
    EXPECT_EQ(chunks, c.at("stream").get<std::vector<std::string>>());
  }
}

INSTANTIATE_TEST_SUITE_P(Tokenizers, Goldens, ::testing::Values("qwen3", "llama2", "deepseek_v3", "synthetic_bytelevel", "synthetic_unk",
                                           "synthetic_metaspace"));

TEST(Tokenizer, StreamNeverSplitsACharacter) {
  // Llama-2 spells rare characters with byte-fallback tokens, one byte each: the stream must hold
  // them back until the character is whole.
  const Tokenizer& tok = tokenizer("llama2");
  const std::string text = "a 🦀 b 𝔘";
  const auto ids = tok.encode(text, false);
  DecodeStream stream(tok);
  std::string out;
  int held = 0;
  for (const int32_t id : ids) {
    if (auto piece = stream.step(id)) {
      EXPECT_EQ(mxmoe::utf8::find_invalid(*piece), std::string::npos) << *piece;
      out += *piece;
    } else {
      ++held;
    }
  }
  EXPECT_EQ(out, text);
  EXPECT_GE(held, 6);          // 3 of 🦀's 4 byte tokens and 3 of 𝔘's
}

// Random strings of characters from many scripts, added-token fragments and random bytes: encode
// never crashes (invalid UTF-8 is an Error), and where the input is valid, byte-level BPE with no
// normalizer (DeepSeek-V3) gives the text back exactly and streaming gives the same text.
TEST(Tokenizer, FuzzRoundTrip) {
  const uint64_t seed = mxmoe::testing::fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  const std::vector<std::string> atoms = {"a", "Z", "7", " ", "  ", "\t", "\n", "\r\n", "'s", "é", "e\u0301", "你",
                                          "ナ", "🦀", "👍🏽", "\u200d", "\u00a0", "<", "|", "<｜User｜>", "<think>",
                                          "<｜end▁of▁sentence｜>", "｜", "▁", "Ġ", "\x01", "\x7f", "𐍈"};
  const Tokenizer& tok = tokenizer("deepseek_v3");
  int invalid = 0;
  for (int iter = 0; iter < 300; ++iter) {
    std::string text;
    const int n = static_cast<int>(rng() % 40);
    for (int k = 0; k < n; ++k) {
      if (rng() % 50 == 0) text += static_cast<char>(0x80 + rng() % 0x80);  // stray byte
      else text += atoms[rng() % atoms.size()];
    }
    if (mxmoe::utf8::find_invalid(text) != std::string::npos) {
      EXPECT_THROW(tok.encode(text), mxmoe::Error);
      ++invalid;
      continue;
    }
    const auto ids = tok.encode(text, false);
    EXPECT_EQ(tok.decode(ids), text);
    DecodeStream stream(tok);
    std::string streamed;
    for (const int32_t id : ids) streamed += stream.step(id).value_or("");
    EXPECT_EQ(streamed, text);
  }
  EXPECT_GT(invalid, 0);
}

TEST(Tokenizer, InvalidUtf8IsAnError) {
  const Tokenizer& tok = tokenizer("qwen3");
  for (const std::string& bad : {std::string("ab\xff"), std::string("\xc3"), std::string("x\xed\xa0\x80"),
                                std::string("\xc0\xaf")}) {
    try {
      tok.encode(bad);
      FAIL() << "no error for invalid UTF-8";
    } catch (const mxmoe::Error& e) {
      EXPECT_NE(std::string(e.what()).find("invalid UTF-8 at byte"), std::string::npos) << e.what();
    }
  }
}

TEST(Tokenizer, UnknownIdIsAnError) {
  const Tokenizer& tok = tokenizer("qwen3");
  const std::vector<int32_t> ids = {9707, tok.vocab_size()};
  EXPECT_THROW(tok.decode(ids), mxmoe::Error);
  EXPECT_EQ(tok.decode(std::vector<int32_t>{9707}), "Hello");
}

TEST(Tokenizer, SpecialTokenLookups) {
  const Tokenizer& q = tokenizer("qwen3");
  EXPECT_EQ(q.token_to_id("<|im_end|>"), 151645);
  EXPECT_TRUE(q.is_special(151645));
  EXPECT_FALSE(q.is_special(9707));
  EXPECT_EQ(q.id_to_token(151644), "<|im_start|>");
  EXPECT_EQ(tokenizer("llama2").vocab_size(), 32000);
}

// A minimal tokenizer.json with one part replaced, to check the errors.
std::string tiny_json(const std::string& key, const nlohmann::json& value) {
  nlohmann::json j = {
      {"model", {{"type", "BPE"}, {"vocab", {{"a", 0}, {"b", 1}, {"ab", 2}}}, {"merges", {"a b"}}}},
      {"normalizer", nullptr}, {"pre_tokenizer", nullptr}, {"decoder", nullptr}, {"post_processor", nullptr}};
  if (key == "model.type") {
    j["model"]["type"] = value;
  } else if (key == "model.merges") {
    j["model"]["merges"] = value;
  } else if (!key.empty()) {
    j[key] = value;
  }
  return j.dump();
}

void expect_error(const std::string& json, const std::string& needle) {
  try {
    Tokenizer::from_json(json, "tiny.json");
    FAIL() << "no error, expected one mentioning " << needle;
  } catch (const mxmoe::Error& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("tiny.json"), std::string::npos) << e.what();
  }
}

TEST(Tokenizer, UnsupportedPartsAreNamed) {
  const Tokenizer tiny = Tokenizer::from_json(tiny_json("", nullptr), "tiny.json");
  EXPECT_EQ(tiny.encode("abba"), (std::vector<int32_t>{2, 1, 0}));
  expect_error(tiny_json("model.type", "Unigram"), "unsupported model type 'Unigram'");
  expect_error(tiny_json("normalizer", {{"type", "BertNormalizer"}}), "unsupported normalizer type 'BertNormalizer'");
  expect_error(tiny_json("pre_tokenizer", {{"type", "Whitespace"}}), "unsupported pre_tokenizer type 'Whitespace'");
  expect_error(tiny_json("decoder", {{"type", "WordPiece"}}), "unsupported decoder type 'WordPiece'");
  expect_error(tiny_json("post_processor", {{"type", "BertProcessing"}}), "unsupported post_processor type");
  expect_error(tiny_json("model.merges", {"a c"}), "not in the vocabulary");
  expect_error(tiny_json("model.merges", {"a b c"}), "not two tokens");
  expect_error(tiny_json("pre_tokenizer", {{"type", "Split"}, {"pattern", {{"Regex", "(["}}},
                                           {"behavior", "Isolated"}}), "cannot compile regex");
  expect_error("{\"model\": ", "invalid JSON");
  EXPECT_THROW(Tokenizer::from_file(kData + "/no/such/tokenizer.json"), mxmoe::Error);
}

}  // namespace
