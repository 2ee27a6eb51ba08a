#include "engine/bpe.h"

#include <cstdio>
#include <mutex>
#include <queue>

#include "engine/error.h"
#include "engine/utf8.h"

namespace mxmoe {

BpeModel::BpeModel(const nlohmann::json& model, const std::string& what) {
  const auto str_or_empty = [&](const char* key) {
    const auto it = model.find(key);
    return it == model.end() || it->is_null() ? std::string() : it->get<std::string>();
  };
  MXMOE_CHECK(!model.contains("dropout") || model["dropout"].is_null() || model["dropout"] == 0.0,
              what, ": BPE dropout is not supported (got ", model["dropout"].dump(), ")");
  const auto& vocab = model.at("vocab");
  MXMOE_CHECK(vocab.is_object(), what, ": model.vocab must be an object");
  int32_t max_id = -1;
  for (const auto& [token, id] : vocab.items()) {
    const auto v = id.get<int32_t>();
    MXMOE_CHECK(v >= 0, what, ": negative id ", v, " for token '", token, "'");
    vocab_.emplace(token, v);
    max_id = std::max(max_id, v);
  }
  id_to_token_.resize(static_cast<size_t>(max_id + 1));
  small_char_ids_.assign(0x800, -1);
  for (const auto& [token, id] : vocab_) {
    id_to_token_[static_cast<size_t>(id)] = token;
    if (token.size() <= 2 && utf8::char_len(static_cast<unsigned char>(token[0])) == token.size()) {
      size_t i = 0;
      small_char_ids_[utf8::next(token, i)] = id;
    }
  }

  fuse_unk_ = model.value("fuse_unk", false);
  byte_fallback_ = model.value("byte_fallback", false);
  ignore_merges_ = model.value("ignore_merges", false);
  continuing_subword_prefix_ = str_or_empty("continuing_subword_prefix");
  end_of_word_suffix_ = str_or_empty("end_of_word_suffix");
  if (const std::string unk = str_or_empty("unk_token"); !unk.empty()) {
    const auto id = token_to_id(unk);
    MXMOE_CHECK(id, what, ": unk_token '", unk, "' is not in the vocabulary");
    unk_id_ = *id;
  }
  for (int b = 0; b < 256; ++b) {
    char name[8];
    std::snprintf(name, sizeof(name), "<0x%02X>", b);
    const auto id = byte_fallback_ ? token_to_id(name) : std::nullopt;
    byte_ids_[b] = id ? *id : -1;
  }

  // Merges: "a b" strings (older files) or ["a", "b"] pairs; rank = position in the list.
  const auto& merges = model.at("merges");
  while (merge_shift_ > 1 && (size_t{1} << (64 - merge_shift_)) < 2 * merges.size() + 2) --merge_shift_;
  merge_slots_.resize(size_t{1} << (64 - merge_shift_));
  int32_t rank = 0;
  for (const auto& m : merges) {
    std::string a, b;
    if (m.is_string()) {
      const auto s = m.get<std::string>();
      const size_t sp = s.find(' ');
      MXMOE_CHECK(sp != std::string::npos && s.find(' ', sp + 1) == std::string::npos, what,
                  ": merge ", rank, " '", s, "' is not two tokens separated by one space");
      a = s.substr(0, sp);
      b = s.substr(sp + 1);
    } else {
      MXMOE_CHECK(m.is_array() && m.size() == 2, what, ": merge ", rank, " is not a pair: ", m.dump());
      a = m[0].get<std::string>();
      b = m[1].get<std::string>();
    }
    // With a continuing_subword_prefix, "##a" + "##b" makes "##ab": b loses its prefix.
    const size_t cut = b.starts_with(continuing_subword_prefix_) ? continuing_subword_prefix_.size() : 0;
    const auto ia = token_to_id(a), ib = token_to_id(b), inew = token_to_id(a + b.substr(cut));
    MXMOE_CHECK(ia && ib && inew, what, ": merge ", rank, " ('", a, "', '", b,
                "') uses a token that is not in the vocabulary");
    const uint64_t key = pair_key(*ia, *ib);
    size_t slot = slot_of(key);
    while (merge_slots_[slot].key != kEmptySlot && merge_slots_[slot].key != key) slot = (slot + 1) & (merge_slots_.size() - 1);
    merge_slots_[slot] = {key, Merge{rank, *inew}};  // a repeated pair overrides, as in tokenizers
    ++rank;
  }
}

std::optional<int32_t> BpeModel::token_to_id(std::string_view token) const {
  const auto it = vocab_.find(token);
  if (it == vocab_.end()) return std::nullopt;
  return it->second;
}

const std::string* BpeModel::id_to_token(int32_t id) const {
  if (id < 0 || id > max_id()) return nullptr;
  const std::string& t = id_to_token_[static_cast<size_t>(id)];
  return t.empty() ? nullptr : &t;
}

const BpeModel::Merge* BpeModel::find_merge(int32_t a, int32_t b) const {
  const uint64_t key = pair_key(a, b);
  for (size_t slot = slot_of(key);; slot = (slot + 1) & (merge_slots_.size() - 1)) {
    const MergeSlot& e = merge_slots_[slot];
    if (e.key == key) return &e.merge;
    if (e.key == kEmptySlot) return nullptr;
  }
}

void BpeModel::tokenize(std::string_view word, std::vector<int32_t>& out) const {
  if (word.size() > kCacheMaxWord) {
    tokenize_uncached(word, out);
    return;
  }
  {
    std::shared_lock lock(cache_mutex_);
    if (const auto it = cache_.find(word); it != cache_.end()) {
      out.insert(out.end(), it->second.begin(), it->second.end());
      return;
    }
  }
  const size_t first = out.size();
  tokenize_uncached(word, out);
  std::unique_lock lock(cache_mutex_);
  if (cache_.size() < kCacheCapacity) cache_.try_emplace(std::string(word), out.begin() + static_cast<std::ptrdiff_t>(first), out.end());
}

void BpeModel::tokenize_uncached(std::string_view word, std::vector<int32_t>& out) const {
  if (ignore_merges_) {
    if (const auto id = token_to_id(word)) {
      out.push_back(*id);
      return;
    }
  }
  // Initial symbols: one per character (or per byte through byte fallback). `lens` is only
  // needed to tell live symbols (len > 0) from merged-away ones.
  std::vector<int32_t> ids, lens;
  ids.reserve(word.size());
  lens.reserve(word.size());
  std::optional<std::pair<int32_t, int32_t>> unk;  // pending (id, byte length) of unknown chars
  const auto flush_unk = [&] {
    if (unk) {
      ids.push_back(unk->first);
      lens.push_back(unk->second);
      unk.reset();
    }
  };
  std::string s;
  for (size_t i = 0; i < word.size();) {
    const size_t n = std::min(utf8::char_len(static_cast<unsigned char>(word[i])), word.size() - i);
    const bool first = i == 0, last = i + n == word.size();
    std::string_view c = word.substr(i, n);
    i += n;
    if ((!first && !continuing_subword_prefix_.empty()) || (last && !end_of_word_suffix_.empty())) {
      s.assign(first ? "" : continuing_subword_prefix_).append(c).append(last ? end_of_word_suffix_ : "");
      c = s;
    }
    std::optional<int32_t> id;
    if (c.data() != s.data() && n <= 2) {  // a plain character below U+0800
      size_t k = 0;
      if (const int32_t v = small_char_ids_[utf8::next(c, k)]; v >= 0) id = v;
    } else {
      id = token_to_id(c);
    }
    if (id) {
      flush_unk();
      ids.push_back(*id);
      lens.push_back(static_cast<int32_t>(n));
      continue;
    }
    if (byte_fallback_) {
      bool all = true;
      for (const char b : c) all = all && byte_ids_[static_cast<unsigned char>(b)] >= 0;
      if (all) {
        for (const char b : c) {
          ids.push_back(byte_ids_[static_cast<unsigned char>(b)]);
          lens.push_back(1);
        }
        continue;
      }
    }
    if (unk_id_) {
      if (unk && fuse_unk_) {
        unk->second += static_cast<int32_t>(n);
      } else {
        flush_unk();
        unk = {*unk_id_, static_cast<int32_t>(n)};
      }
    }
    // No unk token: the character is dropped, as in tokenizers.
  }
  flush_unk();
  merge_all(ids, lens);
  for (size_t k = 0; k < ids.size(); ++k) {
    if (lens[k] != 0) out.push_back(ids[k]);
  }
}

// Word::merge_all of tokenizers: a min-heap of candidate merges ordered by (rank, position);
// stale entries (a side already merged into something else) are skipped when popped.
void BpeModel::merge_all(std::vector<int32_t>& ids, std::vector<int32_t>& lens) const {
  const auto n = static_cast<int32_t>(ids.size());
  if (n < 2) return;
  std::vector<int32_t> prev(static_cast<size_t>(n)), next(static_cast<size_t>(n));
  for (int32_t k = 0; k < n; ++k) {
    prev[static_cast<size_t>(k)] = k - 1;
    next[static_cast<size_t>(k)] = k + 1 < n ? k + 1 : -1;
  }
  struct Cand {
    int32_t rank, pos, new_id;
    bool operator>(const Cand& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
  };
  std::vector<Cand> storage;
  storage.reserve(static_cast<size_t>(n));
  std::priority_queue<Cand, std::vector<Cand>, std::greater<>> queue(std::greater<>{}, std::move(storage));
  for (int32_t k = 0; k + 1 < n; ++k) {
    if (const Merge* m = find_merge(ids[static_cast<size_t>(k)], ids[static_cast<size_t>(k + 1)])) {
      queue.push({m->rank, k, m->new_id});
    }
  }
  const auto at = [](std::vector<int32_t>& v, int32_t k) -> int32_t& { return v[static_cast<size_t>(k)]; };
  while (!queue.empty()) {
    const Cand top = queue.top();
    queue.pop();
    if (at(lens, top.pos) == 0) continue;
    const int32_t right = at(next, top.pos);
    if (right < 0) continue;
    const Merge* m = find_merge(at(ids, top.pos), at(ids, right));
    if (!m || m->new_id != top.new_id) continue;  // stale
    at(ids, top.pos) = top.new_id;
    at(lens, top.pos) += at(lens, right);
    at(lens, right) = 0;
    const int32_t after = at(next, right);
    at(next, top.pos) = after;
    if (after >= 0) at(prev, after) = top.pos;
    if (const int32_t before = at(prev, top.pos); before >= 0) {
      if (const Merge* pm = find_merge(at(ids, before), top.new_id)) queue.push({pm->rank, before, pm->new_id});
    }
    if (after >= 0) {
      if (const Merge* nm = find_merge(top.new_id, at(ids, after))) queue.push({nm->rank, top.pos, nm->new_id});
    }
  }
}

}  // namespace mxmoe
