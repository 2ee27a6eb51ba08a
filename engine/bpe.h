#pragma once
// The BPE model of a tokenizer.json ("model": {"type": "BPE", ...}), as Hugging Face tokenizers
// applies it to one pre-tokenized word: split into characters (byte fallback / unk for characters
// not in the vocabulary), then merge adjacent pairs by rank, lowest rank first.
#include <cstdint>
#include <functional>
#include <optional>
#include <shared_mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include <nlohmann/json.hpp>

namespace mxmoe {

// Hash that lets unordered_map<std::string, ...> be searched with a string_view.
struct StringHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};
using TokenMap = std::unordered_map<std::string, int32_t, StringHash, std::equal_to<>>;

class BpeModel {
 public:
  // `model` is the "model" object of tokenizer.json; `what` names the file in errors.
  BpeModel(const nlohmann::json& model, const std::string& what);

  // Appends the ids of `word` (non-empty) to `out`. Thread-safe.
  void tokenize(std::string_view word, std::vector<int32_t>& out) const;

  std::optional<int32_t> token_to_id(std::string_view token) const;
  // nullptr when id is not in the vocabulary.
  const std::string* id_to_token(int32_t id) const;
  int32_t max_id() const { return static_cast<int32_t>(id_to_token_.size()) - 1; }

 private:
  struct Merge {
    int32_t rank;
    int32_t new_id;
  };
  static uint64_t pair_key(int32_t a, int32_t b) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
  }
  const Merge* find_merge(int32_t a, int32_t b) const;
  void tokenize_uncached(std::string_view word, std::vector<int32_t>& out) const;
  void merge_all(std::vector<int32_t>& ids, std::vector<int32_t>& lens) const;

  TokenMap vocab_;
  std::vector<std::string> id_to_token_;  // "" where an id has no token
  // Ids of the one-character tokens below U+0800 by code point (-1: none): every byte-level
  // symbol and most SentencePiece ones, looked up without hashing a string.
  std::vector<int32_t> small_char_ids_;
  // Merges by (left, right) id pair: open addressing with linear probing in a power-of-two
  // table, since this lookup is the hottest operation of encode.
  struct MergeSlot {
    uint64_t key = kEmptySlot;
    Merge merge{};
  };
  static constexpr uint64_t kEmptySlot = ~uint64_t{0};  // ids are >= 0: no pair key has the top bit
  std::vector<MergeSlot> merge_slots_;
  int merge_shift_ = 64;
  size_t slot_of(uint64_t key) const {
    return static_cast<size_t>((key * 0x9E3779B97F4A7C15ull) >> merge_shift_);
  }
  std::optional<int32_t> unk_id_;
  bool fuse_unk_ = false;
  bool byte_fallback_ = false;
  bool ignore_merges_ = false;
  std::string continuing_subword_prefix_, end_of_word_suffix_;
  int32_t byte_ids_[256];  // id of "<0xXX>" when byte_fallback, else -1

  // Results for short words already seen, as tokenizers caches them (same capacity: once
  // full, nothing more is added).
  static constexpr size_t kCacheCapacity = 10000, kCacheMaxWord = 256;
  mutable std::shared_mutex cache_mutex_;
  mutable std::unordered_map<std::string, std::vector<int32_t>, StringHash, std::equal_to<>> cache_;
};

}  // namespace mxmoe
