#pragma once
// Generated text as a user sees it while it streams: tokens are detokenized incrementally
// (DecodeStream), the text ends before the first stop string, and a piece handed out never holds
// bytes that could still turn out to begin a stop string, nor half a UTF-8 character. run-model
// and the Engine's scheduler both stream through it.
#include <string>
#include <string_view>
#include <vector>

#include "engine/tokenizer.h"

namespace mxmoe {

class TextStream {
 public:
  TextStream(const Tokenizer& tokenizer, std::vector<std::string> stops);

  // Appends the token's text. Returns true when a stop string appeared: text() then ends just
  // before it and the stream is finished.
  bool push(int32_t token);

  // The text not yet handed out that is safe to show now; with `final`, all of it.
  std::string_view take(bool final);

  const std::string& text() const { return text_; }

 private:
  DecodeStream detokenizer_;
  std::vector<std::string> stops_;
  size_t hold_ = 0;      // longest stop string - 1: bytes at the end that could begin one
  std::string text_;
  size_t streamed_ = 0;  // bytes of text_ handed out by take()
};

}  // namespace mxmoe
