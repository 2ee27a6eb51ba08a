#pragma once
// Tokenizer: reads a Hugging Face tokenizer.json and encodes/decodes exactly as the `tokenizers`
// library does (tests/tokenizer_test.cpp checks this against its output for Qwen3, Llama-2,
// DeepSeek-V3 and three synthetic tokenizers). Supported: model BPE (byte-level or
// SentencePiece-style with byte fallback, unk, subword prefix), normalizers
// NFC/NFD/NFKC/NFKD/Lowercase/Prepend/Replace/Sequence, pre-tokenizers
// Split/ByteLevel/Metaspace/Sequence, post-processors TemplateProcessing/ByteLevel/Sequence,
// decoders ByteLevel/Metaspace/Replace/ByteFallback/Fuse/Strip/Sequence, added tokens with
// lstrip/rstrip/single_word/normalized; anything else is an Error naming it.
//
// Text is UTF-8: invalid input to encode() is an Error naming the byte offset (the Python
// library cannot receive such text at all). decode() returns valid UTF-8, with U+FFFD where the
// tokens spell invalid bytes, as tokenizers does. Ids outside the vocabulary are an Error (the
// library silently drops them). All methods are const and safe to call from several threads.
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace mxmoe {

class Tokenizer {
 public:
  // Reads tokenizer.json at `path`.
  static Tokenizer from_file(const std::string& path);
  // Parses tokenizer.json text; `source` names it in error messages.
  static Tokenizer from_json(std::string_view json_text, const std::string& source);

  // Token ids of `text`; add_special_tokens applies the post-processor's template (e.g. <s>).
  std::vector<int32_t> encode(std::string_view text, bool add_special_tokens = true) const;
  // Text of `ids`; skip_special_tokens drops tokens marked "special" in added_tokens.
  std::string decode(std::span<const int32_t> ids, bool skip_special_tokens = false) const;

  // 1 + the largest id of the vocabulary and the added tokens.
  int32_t vocab_size() const;
  std::optional<int32_t> token_to_id(std::string_view token) const;
  // The token's string as stored in tokenizer.json (byte-level or ▁ form); Error when unknown.
  std::string id_to_token(int32_t id) const;
  bool is_special(int32_t id) const;

  struct Impl;

 private:
  explicit Tokenizer(std::shared_ptr<const Impl> impl) : impl_(std::move(impl)) {}
  std::shared_ptr<const Impl> impl_;
};

// Incremental detokenization for streaming (the DecodeStream algorithm of tokenizers): step()
// returns the new text once it is complete, never half a UTF-8 character; tokens that only
// start a character return nothing until the character is finished.
class DecodeStream {
 public:
  explicit DecodeStream(const Tokenizer& tokenizer, bool skip_special_tokens = false)
      : tokenizer_(&tokenizer), skip_special_(skip_special_tokens) {}
  std::optional<std::string> step(int32_t id);

 private:
  const Tokenizer* tokenizer_;
  bool skip_special_;
  std::vector<int32_t> ids_;  // tokens since the last emitted prefix
  std::string prefix_;        // decode of ids_[0, prefix_index_)
  size_t prefix_index_ = 0;
};

}  // namespace mxmoe
