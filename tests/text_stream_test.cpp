// TextStream: what run-model prints and the Engine streams. With a real tokenizer (Qwen3, byte-level
// BPE, so one CJK or emoji character spans several tokens): the pieces concatenate to the text, no
// piece splits a UTF-8 character, nothing that could begin a stop string is shown early, and the
// text ends just before a stop string even when the stop string spans tokens.
#include <gtest/gtest.h>

#include "engine/text_stream.h"
#include "engine/utf8.h"

namespace mxmoe {
namespace {

const Tokenizer& qwen3() {
  static const Tokenizer t = Tokenizer::from_file(std::string(MXMOE_TEST_DATA) + "/tokenizers/qwen3/tokenizer.json");
  return t;
}

struct Streamed {
  std::string shown, text;
  std::vector<std::string> pieces;
  bool stopped = false;
};

Streamed stream(const std::string& completion, const std::vector<std::string>& stops) {
  TextStream s(qwen3(), stops);
  Streamed out;
  for (int32_t id : qwen3().encode(completion, false)) {
    out.stopped = s.push(id);
    out.pieces.emplace_back(s.take(out.stopped));
    out.shown += out.pieces.back();
    if (out.stopped) break;
  }
  if (!out.stopped) out.shown += s.take(true);
  out.text = s.text();
  return out;
}

TEST(TextStream, PiecesAreWholeCharactersAndAddUpToTheText) {
  const std::string text = "Grüße, 世界! 🦀 emoji 👩‍👩‍👧 and tabs\tend";
  const Streamed s = stream(text, {});
  EXPECT_EQ(s.shown, text);
  EXPECT_EQ(s.text, text);
  for (const std::string& piece : s.pieces) EXPECT_EQ(utf8::find_invalid(piece), std::string::npos) << "piece splits a character: " << piece;
}

TEST(TextStream, StopsBeforeAStopStringSpanningTokens) {
  const Streamed s = stream("In the beginning God created the heaven and the earth.", {"the heav", "zzz"});
  EXPECT_TRUE(s.stopped);
  EXPECT_EQ(s.text, "In the beginning God created ");
  EXPECT_EQ(s.shown, s.text);  // nothing of "the heav" was shown before it was recognized
}

TEST(TextStream, HoldsBackOnlyWhatCouldBeginAStopString) {
  TextStream s(qwen3(), {"<END>"});
  std::string shown;
  for (int32_t id : qwen3().encode("abc def ghi", false)) {
    EXPECT_FALSE(s.push(id));
    shown += s.take(false);
  }
  // At most len("<END>") - 1 = 4 bytes are held back, and all of them come out at the end.
  EXPECT_GE(shown.size(), s.text().size() - 4);
  shown += s.take(true);
  EXPECT_EQ(shown, "abc def ghi");
}

TEST(TextStream, HeldBackMultibyteTailIsNotSplit) {
  // A one-byte hold-back (stop "xy") would cut the 3-byte "界" in the middle: the piece must stop
  // at the character boundary instead.
  TextStream s(qwen3(), {"xy"});
  std::string shown;
  for (int32_t id : qwen3().encode("世界", false)) {
    s.push(id);
    const std::string piece(s.take(false));
    EXPECT_EQ(utf8::find_invalid(piece), std::string::npos) << piece;
    shown += piece;
  }
  shown += s.take(true);
  EXPECT_EQ(shown, "世界");
}

}  // namespace
}  // namespace mxmoe
