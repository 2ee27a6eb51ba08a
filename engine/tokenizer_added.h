#pragma once
// Added tokens of tokenizer.json ("added_tokens"): special tokens such as <|im_start|> and extra
// tokens that are cut out of the text before normalization (normalized=false) or after it
// (normalized=true), never split by the model. Matching is leftmost-longest, as the Aho-Corasick
// automaton of tokenizers does, with the lstrip/rstrip/single_word options.
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace mxmoe {

struct AddedToken {
  int32_t id = 0;
  std::string content;
  bool single_word = false, lstrip = false, rstrip = false, normalized = false, special = false;
};

// A piece of text: either plain text (token < 0) or one added token's span.
struct TextPiece {
  size_t begin, end;
  int32_t token;  // id of the added token, or -1
};

class AddedTokenMatcher {
 public:
  // `patterns[k]` is the text that stands for `tokens[k]` (its content, normalized if needed).
  AddedTokenMatcher(const std::vector<const AddedToken*>& tokens, const std::vector<std::string>& patterns);

  // Splits `text` into plain pieces and added-token pieces, in order; no piece is empty.
  std::vector<TextPiece> split(std::string_view text) const;

 private:
  // Byte trie over the patterns; node 0 is the root.
  struct Node {
    std::vector<std::pair<unsigned char, int32_t>> children;
    int32_t token = -1;  // index into tokens_ when a pattern ends here
  };
  // Length of the longest pattern starting at text[pos] and its token index, or {0, -1}.
  std::pair<size_t, int32_t> longest_at(std::string_view text, size_t pos) const;

  std::vector<Node> nodes_{1};
  std::vector<const AddedToken*> tokens_;
  bool first_byte_[256] = {};
};

}  // namespace mxmoe
