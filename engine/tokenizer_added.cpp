#include "engine/tokenizer_added.h"

#include <utf8proc.h>

#include "engine/utf8.h"

namespace mxmoe {
namespace {

// Rust's char::is_whitespace (the Unicode White_Space property).
bool is_whitespace(char32_t c) {
  if ((c >= 0x09 && c <= 0x0D) || c == 0x20 || c == 0x85) return true;
  const auto cat = utf8proc_category(static_cast<utf8proc_int32_t>(c));
  return cat == UTF8PROC_CATEGORY_ZS || cat == UTF8PROC_CATEGORY_ZL || cat == UTF8PROC_CATEGORY_ZP;
}

bool is_word_char(char32_t c) {
  if (c == '_') return true;
  const auto cat = utf8proc_category(static_cast<utf8proc_int32_t>(c));
  return (cat >= UTF8PROC_CATEGORY_LU && cat <= UTF8PROC_CATEGORY_LO) ||
         (cat >= UTF8PROC_CATEGORY_ND && cat <= UTF8PROC_CATEGORY_NO);
}

// Code point ending at byte `end` of s (s valid UTF-8, end > 0).
char32_t char_before(std::string_view s, size_t end) {
  size_t b = end - 1;
  while (b > 0 && (static_cast<unsigned char>(s[b]) & 0xC0) == 0x80) --b;
  return utf8::next(s, b);
}

}  // namespace

AddedTokenMatcher::AddedTokenMatcher(const std::vector<const AddedToken*>& tokens,
                                     const std::vector<std::string>& patterns)
    : tokens_(tokens) {
  for (size_t k = 0; k < tokens.size(); ++k) {
    const std::string& p = patterns[k];
    if (p.empty()) continue;
    first_byte_[static_cast<unsigned char>(p[0])] = true;
    int32_t node = 0;
    for (const char ch : p) {
      const auto c = static_cast<unsigned char>(ch);
      int32_t child = -1;
      for (const auto& [cc, idx] : nodes_[static_cast<size_t>(node)].children) {
        if (cc == c) child = idx;
      }
      if (child < 0) {
        child = static_cast<int32_t>(nodes_.size());
        nodes_[static_cast<size_t>(node)].children.emplace_back(c, child);
        nodes_.emplace_back();
      }
      node = child;
    }
    // A repeated pattern keeps the last token, like a map built from the list.
    nodes_[static_cast<size_t>(node)].token = static_cast<int32_t>(k);
  }
}

std::pair<size_t, int32_t> AddedTokenMatcher::longest_at(std::string_view text, size_t pos) const {
  std::pair<size_t, int32_t> best{0, -1};
  int32_t node = 0;
  for (size_t i = pos; i < text.size(); ++i) {
    const auto c = static_cast<unsigned char>(text[i]);
    int32_t child = -1;
    for (const auto& [cc, idx] : nodes_[static_cast<size_t>(node)].children) {
      if (cc == c) child = idx;
    }
    if (child < 0) break;
    node = child;
    if (nodes_[static_cast<size_t>(node)].token >= 0) best = {i + 1 - pos, nodes_[static_cast<size_t>(node)].token};
  }
  return best;
}

std::vector<TextPiece> AddedTokenMatcher::split(std::string_view text) const {
  std::vector<TextPiece> out;
  size_t plain_from = 0;  // start of the text not yet emitted
  for (size_t pos = 0; pos < text.size();) {
    if (!first_byte_[static_cast<unsigned char>(text[pos])]) {
      ++pos;
      continue;
    }
    const auto [len, k] = longest_at(text, pos);
    if (k < 0) {
      ++pos;
      continue;
    }
    const AddedToken& t = *tokens_[static_cast<size_t>(k)];
    size_t start = pos, stop = pos + len;
    if (t.single_word) {
      const bool left_ok = start == 0 || !is_word_char(char_before(text, start));
      size_t i = stop;
      const bool right_ok = stop == text.size() || !is_word_char(utf8::next(text, i));
      if (!left_ok || !right_ok) {  // the match is skipped, not searched again inside
        pos += len;
        continue;
      }
    }
    if (t.lstrip) {  // swallow the whitespace before the token (not already emitted)
      while (start > plain_from && is_whitespace(char_before(text, start))) {
        do --start; while ((static_cast<unsigned char>(text[start]) & 0xC0) == 0x80);
      }
    }
    if (t.rstrip) {  // and after it
      for (size_t i = stop; i < text.size() && is_whitespace(utf8::next(text, i));) stop = i;
    }
    if (plain_from < start) out.push_back({plain_from, start, -1});
    out.push_back({start, stop, t.id});
    plain_from = pos = stop;
  }
  if (plain_from < text.size()) out.push_back({plain_from, text.size(), -1});
  return out;
}

}  // namespace mxmoe
