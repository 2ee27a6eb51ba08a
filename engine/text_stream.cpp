#include "engine/text_stream.h"

#include <algorithm>

namespace mxmoe {

namespace {
bool utf8_continuation(char c) { return (static_cast<unsigned char>(c) & 0xC0) == 0x80; }
}  // namespace

TextStream::TextStream(const Tokenizer& tokenizer, std::vector<std::string> stops)
    : detokenizer_(tokenizer, true), stops_(std::move(stops)) {
  for (const std::string& stop : stops_) hold_ = std::max(hold_, stop.empty() ? 0 : stop.size() - 1);
}

bool TextStream::push(int32_t token) {
  // A new stop string can only begin in the held-back tail or in the new piece.
  const size_t search_from = text_.size() > hold_ ? text_.size() - hold_ : 0;
  if (const auto piece = detokenizer_.step(token)) text_ += *piece;
  size_t stop_at = std::string::npos;
  for (const std::string& stop : stops_)
    if (!stop.empty()) stop_at = std::min(stop_at, text_.find(stop, search_from));
  if (stop_at == std::string::npos) return false;
  text_.resize(stop_at);
  streamed_ = std::min(streamed_, stop_at);
  return true;
}

std::string_view TextStream::take(bool final) {
  size_t end = text_.size();
  if (!final) {
    end = std::max(streamed_, end > hold_ ? end - hold_ : 0);
    while (end > streamed_ && end < text_.size() && utf8_continuation(text_[end])) --end;
  }
  const std::string_view piece(text_.data() + streamed_, end - streamed_);
  streamed_ = end;
  return piece;
}

}  // namespace mxmoe
