#include "engine/chat_template.h"

#include <filesystem>
#include <fstream>
#include <sstream>

#include "engine/error.h"
#include "engine/jinja_template.h"

namespace mxmoe {
namespace {

std::string read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  MXMOE_CHECK(f, "cannot open ", path);
  std::ostringstream s;
  s << f.rdbuf();
  return s.str();
}

}  // namespace

ChatTemplate::ChatTemplate(const std::string& source, const nlohmann::ordered_json& special_tokens,
                           const std::string& what)
    : template_(std::make_shared<const jinja::Template>(source, what)), special_tokens_(special_tokens) {}

ChatTemplate ChatTemplate::from_config(const nlohmann::ordered_json& config, const std::string& what) {
  MXMOE_CHECK(config.is_object(), what, ": not a JSON object");
  // Special tokens are strings or AddedToken objects {"content": ...}; null ones are left out.
  nlohmann::ordered_json special = nlohmann::ordered_json::object();
  for (const char* key : {"bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token"}) {
    const auto it = config.find(key);
    if (it == config.end() || it->is_null()) continue;
    if (it->is_string()) special[key] = *it;
    else if (it->is_object() && it->contains("content")) special[key] = (*it)["content"];
    else fail(what, ": ", key, " must be a string or an AddedToken object, got ", it->dump());
  }
  const auto it = config.find("chat_template");
  MXMOE_CHECK(it != config.end() && !it->is_null(), what, ": no chat_template (this checkpoint has no chat format)");
  std::string source;
  if (it->is_string()) {
    source = it->get<std::string>();
  } else if (it->is_array()) {  // [{"name": "default", "template": ...}, {"name": "tool_use", ...}]
    for (const auto& t : *it) {
      if (t.value("name", "") == "default") source = t.at("template").get<std::string>();
    }
    MXMOE_CHECK(!source.empty(), what, ": chat_template list has no 'default' template");
  } else {
    fail(what, ": chat_template must be a string or a list of named templates");
  }
  return ChatTemplate(source, special, what + " chat_template");
}

ChatTemplate ChatTemplate::from_dir(const std::string& dir) {
  const std::string config_path = dir + "/tokenizer_config.json";
  nlohmann::ordered_json config = nlohmann::ordered_json::object();
  if (std::filesystem::exists(config_path)) {
    try {
      config = nlohmann::ordered_json::parse(read_file(config_path));
    } catch (const nlohmann::json::exception& e) {
      fail(config_path, ": invalid JSON: ", e.what());
    }
  }
  const std::string jinja_path = dir + "/chat_template.jinja";
  if (std::filesystem::exists(jinja_path)) config["chat_template"] = read_file(jinja_path);
  return from_config(config, std::filesystem::exists(jinja_path) ? jinja_path : config_path);
}

std::string ChatTemplate::render(const nlohmann::ordered_json& messages, bool add_generation_prompt,
                                 const nlohmann::ordered_json& variables) const {
  MXMOE_CHECK(messages.is_array(), "chat template: messages must be a list, got ", messages.dump());
  nlohmann::ordered_json clean = nlohmann::ordered_json::array();
  for (const auto& m : messages) {
    MXMOE_CHECK(m.is_object(), "chat template: each message must be an object, got ", m.dump());
    // Reasoning given as reasoning_content, thinking or reasoning is visible under the first
    // two names, with "thinking" first (transformers' _alias_reasoning_fields).
    nlohmann::ordered_json reasoning;
    for (const char* key : {"reasoning_content", "thinking", "reasoning"}) {
      if (reasoning.is_null() && m.contains(key) && !m[key].is_null()) reasoning = m[key];
    }
    nlohmann::ordered_json c = nlohmann::ordered_json::object();
    if (!reasoning.is_null()) c["thinking"] = reasoning;
    for (const auto& [k, v] : m.items()) {
      if (!v.is_null()) c[k] = v;
    }
    if (!reasoning.is_null()) c["reasoning_content"] = reasoning;
    clean.push_back(std::move(c));
  }
  nlohmann::ordered_json vars = special_tokens_;
  vars["messages"] = std::move(clean);
  vars["tools"] = nullptr;
  vars["documents"] = nullptr;
  vars["add_generation_prompt"] = add_generation_prompt;
  MXMOE_CHECK(variables.is_object(), "chat template: variables must be an object");
  for (const auto& [k, v] : variables.items()) vars[k] = v;
  return template_->render(jinja::from_json(vars));
}

}  // namespace mxmoe
