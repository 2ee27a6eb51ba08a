#pragma once
// A checkpoint's chat template (Jinja, from chat_template.jinja or tokenizer_config.json's
// "chat_template"), rendered as transformers' apply_chat_template(..., tokenize=False) does:
// variables messages, add_generation_prompt, the special tokens of tokenizer_config.json
// (bos_token, eos_token, unk_token, pad_token, ...) and any extra ones (tools, enable_thinking, ...).
// tests/chat_template_test.cpp checks the output against transformers for Qwen3 and DeepSeek-V3.
#include <memory>
#include <string>

#include <nlohmann/json.hpp>

namespace mxmoe {

namespace jinja {
class Template;
}

class ChatTemplate {
 public:
  // From a checkpoint directory: chat_template.jinja if present, else tokenizer_config.json.
  // Error when neither holds a template (e.g. Llama-2's tokenizer_config.json).
  static ChatTemplate from_dir(const std::string& dir);
  // `config` is tokenizer_config.json's content; `what` names it in errors.
  static ChatTemplate from_config(const nlohmann::ordered_json& config, const std::string& what);
  // A template source with the given special-token variables (e.g. {"bos_token": "<s>"}).
  ChatTemplate(const std::string& source, const nlohmann::ordered_json& special_tokens, const std::string& what);

  // `messages`: [{"role": ..., "content": ...}, ...]. As in transformers, keys whose value is
  // null are dropped and reasoning_content/thinking/reasoning are aliased; tools and documents
  // are none unless `variables` sets them. `variables` (an object) adds or overrides template variables.
  std::string render(const nlohmann::ordered_json& messages, bool add_generation_prompt,
                     const nlohmann::ordered_json& variables = nlohmann::ordered_json::object()) const;

 private:
  std::shared_ptr<const jinja::Template> template_;
  nlohmann::ordered_json special_tokens_;
};

}  // namespace mxmoe
