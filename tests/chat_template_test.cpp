// Chat templates vs transformers: every conversation in the goldens written by
// tests/data/make_tokenizer_goldens.py must render byte-identically to apply_chat_template
// (Qwen3, DeepSeek-V3), and the Jinja snippets to jinja2 with transformers' settings.
#include "engine/chat_template.h"

#include <fstream>
#include <random>

#include <gtest/gtest.h>

#include "engine/error.h"
#include "engine/jinja_template.h"
#include "tests/test_util.h"

using mxmoe::ChatTemplate;
using nlohmann::ordered_json;

namespace {

const std::string kData = MXMOE_TEST_DATA;

ordered_json read_json(const std::string& path) {
  std::ifstream f(path);
  EXPECT_TRUE(f) << "cannot open " << path;
  return ordered_json::parse(f);
}

class ChatGoldens : public ::testing::TestWithParam<std::string> {};

TEST_P(ChatGoldens, MatchTransformers) {
  const ChatTemplate tmpl = ChatTemplate::from_dir(kData + "/tokenizers/" + GetParam());
  const auto gold = read_json(kData + "/tokenizer_goldens/" + GetParam() + ".json").at("chat");
  ASSERT_GE(gold.at("cases").size(), 10u);
  for (const auto& c : gold.at("cases")) {
    SCOPED_TRACE("messages: " + c.at("messages").dump() + " variables: " + c.at("variables").dump());
    EXPECT_EQ(tmpl.render(c.at("messages"), c.at("add_generation_prompt").get<bool>(), c.at("variables")),
              c.at("text").get<std::string>());
  }
}

INSTANTIATE_TEST_SUITE_P(Checkpoints, ChatGoldens, ::testing::Values("qwen3", "deepseek_v3"));

TEST(Jinja, SnippetsMatchJinja2) {
  const auto gold = read_json(kData + "/tokenizer_goldens/jinja.json");
  ASSERT_GE(gold.size(), 20u);
  for (const auto& c : gold) {
    const std::string src = c.at("template");
    SCOPED_TRACE("template: " + src);
    try {
      const mxmoe::jinja::Template t(src, "snippet");
      EXPECT_EQ(t.render(mxmoe::jinja::from_json(c.at("variables"))), c.at("text").get<std::string>());
    } catch (const mxmoe::Error& e) {
      ADD_FAILURE() << e.what();
    }
  }
}

void expect_error(const std::string& src, const std::string& needle, const ordered_json& vars = ordered_json::object()) {
  try {
    const mxmoe::jinja::Template t(src, "tmpl");
    t.render(mxmoe::jinja::from_json(vars));
    ADD_FAILURE() << "no error for " << src;
  } catch (const mxmoe::Error& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
}

TEST(Jinja, ErrorsNameThePosition) {
  expect_error("ab\n{% if x %}yes", "tmpl: line 2, column 14: unexpected end of template, expected 'endif'");
  expect_error("{{ 1 + }}", "tmpl: line 1, column 8: expected an expression");
  expect_error("x\n  {{ 'a' | nosuch }}", "tmpl: line 2, column 10: unknown filter 'nosuch'");
  expect_error("{% for %}", "line 1, column 8: expected a name");
  expect_error("{{ 'abc }}", "unterminated string literal");
  expect_error("{% endfor %}", "misplaced statement 'endfor'");
  expect_error("{{ raise_exception('roles must alternate') }}", "raise_exception: roles must alternate");
  expect_error("{{ x.y }}", "line 1, column 5: cannot read attribute 'y' of an undefined value");
  expect_error("{{ 'a' + 1 }}", "unsupported operand types for +: str and int");
  expect_error("{% set ns = 3 %}{% set ns.a = 1 %}", "'ns' is not a namespace");
  expect_error("{{ " + std::string(5000, '(') + "1" + std::string(5000, ')') + " }}", "nested too deeply");
  std::string deep;
  for (int k = 0; k < 5000; ++k) deep += "{% if true %}";
  expect_error(deep, "statements nested too deeply");
  expect_error("{{ " + std::string(5000, '[') + " }}", "nested too deeply");
  std::string nots;
  for (int k = 0; k < 5000; ++k) nots += "not ";
  expect_error("{{ " + nots + "1 }}", "nested too deeply");
  expect_error("{% macro f(n) %}{{ f(n) }}{% endmacro %}{{ f(1) }}", "recursion deeper than");
  expect_error("{{ '\\uZZZZ' }}", "bad \\u escape");
  expect_error("{{ 99999999999999999999 }}", "integer literal out of range");
}

// Damaged templates (random cuts, deletions, duplicated spans of the Qwen3 template) either
// render or fail with an mxmoe::Error; nothing else escapes and nothing crashes.
TEST(Jinja, FuzzDamagedTemplates) {
  const uint64_t seed = mxmoe::testing::fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  const std::string src = read_json(kData + "/tokenizers/qwen3/tokenizer_config.json").at("chat_template");
  const auto vars = mxmoe::jinja::from_json(ordered_json{
      {"messages", {{{"role", "system"}, {"content", "s"}}, {{"role", "user"}, {"content", "u"}},
                    {{"role", "assistant"}, {"content", "<think>t</think>a"}}}},
      {"add_generation_prompt", true}});
  int errors = 0;
  for (int iter = 0; iter < 300; ++iter) {
    std::string t = src;
    for (int edits = 1 + static_cast<int>(rng() % 3); edits > 0; --edits) {
      const size_t a = rng() % t.size(), len = 1 + rng() % 12;
      switch (rng() % 3) {
        case 0: t.erase(a, len); break;
        case 1: t.insert(a, t.substr(rng() % t.size(), len)); break;
        default: t.resize(a); break;
      }
      if (t.empty()) t = "{{";
    }
    try {
      mxmoe::jinja::Template(t, "fuzz").render(vars);
    } catch (const mxmoe::Error&) {
      ++errors;
    }
  }
  EXPECT_GT(errors, 0);
}

TEST(Jinja, StrftimeNow) {
  const std::string year = mxmoe::jinja::Template("{{ strftime_now('%Y') }}", "t").render(mxmoe::jinja::from_json(ordered_json::object()));
  ASSERT_EQ(year.size(), 4u);
  EXPECT_GE(std::stoi(year), 2024);
}

TEST(ChatTemplate, MissingTemplateIsAnError) {
  try {
    ChatTemplate::from_dir(kData + "/tokenizers/llama2");
    FAIL() << "no error";
  } catch (const mxmoe::Error& e) {
    EXPECT_NE(std::string(e.what()).find("no chat_template"), std::string::npos) << e.what();
  }
}

}  // namespace
