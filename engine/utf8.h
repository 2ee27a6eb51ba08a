#pragma once
// UTF-8 helpers shared by the tokenizer and the chat-template interpreter.
#include <cstddef>
#include <string>
#include <string_view>

namespace mxmoe::utf8 {

// Byte offset of the first invalid UTF-8 sequence in s (overlongs, surrogates and code points
// above U+10FFFF are invalid, as in Rust's str), or npos when s is valid.
size_t find_invalid(std::string_view s);

// Throws mxmoe::Error naming `what` and the byte offset when s is not valid UTF-8.
void check_valid(std::string_view s, std::string_view what);

// s with every maximal invalid subsequence replaced by U+FFFD, exactly as Rust's
// String::from_utf8_lossy (and so Hugging Face tokenizers' decoders) do.
std::string lossy(std::string_view s);

// Decodes the code point at s[i] (s must be valid) and advances i past it.
char32_t next(std::string_view s, size_t& i);

// Length in bytes of the character whose lead byte is `lead` (1 for invalid leads).
inline size_t char_len(unsigned char lead) {
  return lead < 0x80 ? 1 : lead < 0xE0 ? 2 : lead < 0xF0 ? 3 : lead < 0xF8 ? 4 : 1;
}

void append(std::string& out, char32_t cp);

inline bool ends_with_replacement(std::string_view s) {
  return s.size() >= 3 && s.substr(s.size() - 3) == "\xEF\xBF\xBD";
}

}  // namespace mxmoe::utf8
