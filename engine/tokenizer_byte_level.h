#pragma once
// GPT-2's reversible byte <-> character map used by ByteLevel pre-tokenizers and decoders:
// printable Latin-1 bytes map to themselves, the other 68 bytes to U+0100.. in byte order.
#include <array>
#include <cstdint>
#include <string>

#include "engine/utf8.h"

namespace mxmoe::byte_level {

struct Tables {
  std::array<std::string, 256> to_char;  // byte -> UTF-8 of its character
  std::array<int16_t, 324> to_byte;      // code point (< 0x144) -> byte, or -1
  Tables() {
    to_byte.fill(-1);
    int extra = 0;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
      const char32_t cp = printable ? static_cast<char32_t>(b) : static_cast<char32_t>(256 + extra++);
      utf8::append(to_char[static_cast<size_t>(b)], cp);
      to_byte[cp] = static_cast<int16_t>(b);
    }
  }
};

inline const Tables& tables() {
  static const Tables t;
  return t;
}

// The byte a character stands for, or -1 when it is not one of the 256 characters.
inline int to_byte(char32_t cp) { return cp < 324 ? tables().to_byte[cp] : -1; }

}  // namespace mxmoe::byte_level
