// config.json -> ModelConfig: the published configs under loader/configs, the transformers
// defaults of each model type, and an error naming the field and the file for bad input.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "engine/error.h"
#include "loader/generation_config.h"
#include "loader/model_config.h"

namespace mxmoe {
namespace {

const std::string kConfigs = std::string(MXMOE_TEST_DATA) + "/../../loader/configs/";

ModelConfig parse(const std::string& text) { return parse_model_config(nlohmann::json::parse(text), "test/config.json"); }

// Expects parse(text) to fail with every part (and the file name) in the message.
void expect_bad(const std::string& text, std::vector<std::string> parts) {
  parts.push_back("test/config.json");
  try {
    parse(text);
    ADD_FAILURE() << "no error for " << text;
  } catch (const Error& e) {
    for (const std::string& p : parts) EXPECT_NE(std::string(e.what()).find(p), std::string::npos) << e.what() << "\n  lacks: " << p;
  }
}

TEST(ModelConfig, Qwen3_30B_A3B) {
  const ModelConfig c = load_model_config(kConfigs + "qwen3-30b-a3b.json");
  EXPECT_EQ(c.model_type, "qwen3_moe");
  EXPECT_EQ(c.architecture, "Qwen3MoeForCausalLM");
  EXPECT_EQ(c.hidden_size, 2048);
  EXPECT_EQ(c.num_hidden_layers, 48);
  EXPECT_EQ(c.num_attention_heads, 32);
  EXPECT_EQ(c.num_key_value_heads, 4);
  EXPECT_EQ(c.head_dim, 128);  // given explicitly: hidden_size / heads would be 64
  EXPECT_EQ(c.vocab_size, 151936);
  EXPECT_EQ(c.num_experts, 128);
  EXPECT_EQ(c.num_experts_per_tok, 8);
  EXPECT_EQ(c.moe_intermediate_size, 768);
  EXPECT_EQ(c.intermediate_size, 6144);
  EXPECT_TRUE(c.norm_topk_prob);
  EXPECT_DOUBLE_EQ(c.rms_norm_eps, 1e-6);
  EXPECT_DOUBLE_EQ(c.rope.theta, 1e6);
  EXPECT_EQ(c.rope.type, RopeType::default_rope);
  EXPECT_EQ(c.max_position_embeddings, 40960);
  EXPECT_FALSE(c.tie_word_embeddings);
  EXPECT_FALSE(c.qkv_bias);
  EXPECT_EQ(c.bos_token_ids, std::vector<int64_t>{151643});
  EXPECT_EQ(c.eos_token_ids, std::vector<int64_t>{151645});
  EXPECT_EQ(c.dtype, DType::bf16);
  for (int64_t l = 0; l < 48; ++l) EXPECT_TRUE(c.is_moe_layer(l));
}

TEST(ModelConfig, Mixtral_8x7B) {
  const ModelConfig c = load_model_config(kConfigs + "mixtral-8x7b-v0.1.json");
  EXPECT_EQ(c.model_type, "mixtral");
  EXPECT_EQ(c.num_experts, 8);  // num_local_experts
  EXPECT_EQ(c.num_experts_per_tok, 2);
  EXPECT_EQ(c.moe_intermediate_size, 14336);
  EXPECT_EQ(c.hidden_size, 4096);
  EXPECT_EQ(c.num_key_value_heads, 8);
  EXPECT_EQ(c.head_dim, 128);
  EXPECT_EQ(c.vocab_size, 32000);
  EXPECT_TRUE(c.norm_topk_prob);
  EXPECT_DOUBLE_EQ(c.rms_norm_eps, 1e-5);
  EXPECT_EQ(c.max_position_embeddings, 32768);
  EXPECT_EQ(c.bos_token_ids, std::vector<int64_t>{1});
  EXPECT_TRUE(c.is_moe_layer(31));
}

TEST(ModelConfig, OLMoE_1B_7B) {
  const ModelConfig c = load_model_config(kConfigs + "olmoe-1b-7b-0924.json");
  EXPECT_EQ(c.model_type, "olmoe");
  EXPECT_EQ(c.num_experts, 64);
  EXPECT_EQ(c.num_experts_per_tok, 8);
  EXPECT_EQ(c.moe_intermediate_size, 1024);
  EXPECT_EQ(c.num_hidden_layers, 16);
  EXPECT_EQ(c.num_key_value_heads, 16);
  EXPECT_EQ(c.head_dim, 128);
  EXPECT_EQ(c.vocab_size, 50304);
  EXPECT_FALSE(c.norm_topk_prob);
  EXPECT_FALSE(c.clip_qkv.has_value());
  EXPECT_TRUE(c.bos_token_ids.empty());
  EXPECT_EQ(c.eos_token_ids, std::vector<int64_t>{50279});
}

TEST(ModelConfig, Qwen2MoeSharedExpertAndBias) {
  const ModelConfig c = parse(R"({"model_type":"qwen2_moe","vocab_size":151936,"hidden_size":2048,
    "intermediate_size":5632,"num_hidden_layers":24,"num_attention_heads":16,"num_key_value_heads":16,
    "moe_intermediate_size":1408,"shared_expert_intermediate_size":5632,"num_experts":60,"num_experts_per_tok":4,
    "bos_token_id":151643,"eos_token_id":[151643,151645],"dtype":"bfloat16","torch_dtype":"float32"})");
  EXPECT_EQ(c.shared_expert_intermediate_size, 5632);
  EXPECT_EQ(c.num_experts, 60);
  EXPECT_TRUE(c.qkv_bias);
  EXPECT_FALSE(c.o_proj_bias);
  EXPECT_EQ(c.eos_token_ids, (std::vector<int64_t>{151643, 151645}));
  EXPECT_EQ(c.dtype, DType::bf16);  // "dtype" wins over the older "torch_dtype"
  EXPECT_EQ(c.head_dim, 128);
  expect_bad(R"({"model_type":"qwen2_moe","vocab_size":8,"hidden_size":64,"num_hidden_layers":2,
    "num_attention_heads":4,"num_key_value_heads":4,"moe_intermediate_size":32,"num_experts":4,"num_experts_per_tok":2})",
             {"\"shared_expert_intermediate_size\"", "missing"});
}

TEST(ModelConfig, TransformersDefaults) {
  const std::string base = R"("vocab_size":100,"hidden_size":256,"intermediate_size":512,"num_hidden_layers":2,"num_attention_heads":4)";
  const ModelConfig llama = parse("{\"model_type\":\"llama\"," + base + "}");
  EXPECT_EQ(llama.num_key_value_heads, 4);  // None -> num_attention_heads
  EXPECT_EQ(llama.head_dim, 64);
  EXPECT_DOUBLE_EQ(llama.rms_norm_eps, 1e-6);
  EXPECT_EQ(llama.max_position_embeddings, 2048);
  EXPECT_EQ(llama.bos_token_ids, std::vector<int64_t>{1});
  EXPECT_EQ(llama.dtype, DType::f32);
  EXPECT_FALSE(llama.is_moe());
  const ModelConfig qwen3 = parse("{\"model_type\":\"qwen3\",\"num_key_value_heads\":2," + base + "}");
  EXPECT_EQ(qwen3.head_dim, 128);  // Qwen3Config default, not hidden/heads
  const ModelConfig qwen2 = parse("{\"model_type\":\"qwen2\",\"num_key_value_heads\":2," + base + "}");
  EXPECT_TRUE(qwen2.qkv_bias);
  EXPECT_EQ(qwen2.head_dim, 64);
  const ModelConfig qwen3moe = parse(R"({"model_type":"qwen3_moe","vocab_size":100,"hidden_size":256,
    "intermediate_size":512,"num_hidden_layers":4,"num_attention_heads":4,"num_key_value_heads":4,
    "moe_intermediate_size":64,"num_experts":8,"num_experts_per_tok":2,"decoder_sparse_step":2,"mlp_only_layers":[3]})");
  EXPECT_FALSE(qwen3moe.is_moe_layer(0));
  EXPECT_TRUE(qwen3moe.is_moe_layer(1));
  EXPECT_FALSE(qwen3moe.is_moe_layer(2));
  EXPECT_FALSE(qwen3moe.is_moe_layer(3));  // mlp_only_layers
  EXPECT_EQ(qwen3moe.intermediate_size, 512);
  EXPECT_FALSE(qwen3moe.norm_topk_prob);
}

TEST(ModelConfig, RopeScaling) {
  const std::string base = R"("model_type":"llama","vocab_size":100,"hidden_size":256,"intermediate_size":512,"num_hidden_layers":2,"num_attention_heads":4,)";
  const ModelConfig l3 = parse("{" + base + R"("rope_scaling":{"factor":8.0,"low_freq_factor":1.0,"high_freq_factor":4.0,
    "original_max_position_embeddings":8192,"rope_type":"llama3"}})");
  EXPECT_EQ(l3.rope.type, RopeType::llama3);
  EXPECT_DOUBLE_EQ(l3.rope.factor, 8.0);
  EXPECT_DOUBLE_EQ(l3.rope.high_freq_factor, 4.0);
  EXPECT_EQ(l3.rope.original_max_position_embeddings, 8192);
  const ModelConfig yarn = parse("{" + base + R"("rope_scaling":{"type":"yarn","factor":4.0,"original_max_position_embeddings":32768}})");
  EXPECT_EQ(yarn.rope.type, RopeType::yarn);
  EXPECT_DOUBLE_EQ(yarn.rope.beta_fast, 32.0);
  EXPECT_DOUBLE_EQ(yarn.rope.beta_slow, 1.0);
  EXPECT_EQ(yarn.rope.mscale, 0.0);  // absent
  EXPECT_EQ(parse("{" + base + R"("rope_scaling":{"type":"linear","factor":2}})").rope.type, RopeType::linear);
  EXPECT_EQ(parse("{" + base + R"("rope_scaling":{"rope_type":"dynamic","factor":2}})").rope.type, RopeType::dynamic);
  EXPECT_EQ(parse("{" + base + R"("rope_scaling":{"rope_type":"default"}})").rope.type, RopeType::default_rope);
  expect_bad("{" + base + R"("rope_scaling":{"rope_type":"longrope","factor":2}})", {"longrope", "supported: default, linear"});
  expect_bad("{" + base + R"("rope_scaling":{"rope_type":"llama3","factor":8,"high_freq_factor":4,"original_max_position_embeddings":8192}})",
             {"low_freq_factor", "llama3"});
  expect_bad("{" + base + R"("rope_scaling":{"rope_type":"linear"}})", {"factor", "linear"});
  expect_bad("{" + base + R"("rope_scaling":{"factor":2}})", {"rope_type"});
}

TEST(ModelConfig, MissingOrInconsistentFieldsNameTheField) {
  expect_bad(R"({"model_type":"mixtral","vocab_size":100,"num_hidden_layers":2,"num_attention_heads":4,
    "intermediate_size":64,"num_local_experts":4,"num_experts_per_tok":2})", {"\"hidden_size\"", "missing"});
  expect_bad(R"({"model_type":"mixtral","vocab_size":100,"hidden_size":"256","num_hidden_layers":2})",
             {"\"hidden_size\"", "must be an integer", "\"256\""});
  expect_bad(R"({"model_type":"mixtral","vocab_size":100,"hidden_size":256,"num_hidden_layers":2,"num_attention_heads":4,
    "num_key_value_heads":4,"intermediate_size":64,"num_experts_per_tok":2})", {"\"num_local_experts\"", "missing"});
  expect_bad(R"({"model_type":"olmoe","vocab_size":100,"hidden_size":256,"num_hidden_layers":2,"num_attention_heads":4,
    "intermediate_size":64,"num_experts":4,"num_experts_per_tok":5})", {"\"num_experts_per_tok\"", "exceeds"});
  expect_bad(R"({"model_type":"llama","vocab_size":100,"hidden_size":256,"intermediate_size":64,"num_hidden_layers":2,
    "num_attention_heads":6})", {"\"hidden_size\"", "multiple of num_attention_heads"});
  expect_bad(R"({"model_type":"llama","vocab_size":100,"hidden_size":256,"intermediate_size":64,"num_hidden_layers":2,
    "num_attention_heads":4,"num_key_value_heads":3})", {"\"num_key_value_heads\"", "must divide"});
  expect_bad(R"({"model_type":"llama","vocab_size":0,"hidden_size":256,"intermediate_size":64,"num_hidden_layers":2,
    "num_attention_heads":4})", {"\"vocab_size\"", "positive"});
  expect_bad(R"({"model_type":"llama","vocab_size":10,"hidden_size":256,"intermediate_size":64,"num_hidden_layers":2,
    "num_attention_heads":4,"tie_word_embeddings":1})", {"\"tie_word_embeddings\"", "true or false"});
  expect_bad(R"({"model_type":"llama","vocab_size":10,"hidden_size":256,"intermediate_size":64,"num_hidden_layers":2,
    "num_attention_heads":4,"eos_token_id":"x"})", {"\"eos_token_id\""});
  expect_bad(R"({"model_type":"llama","vocab_size":10,"hidden_size":256,"intermediate_size":64,"num_hidden_layers":2,
    "num_attention_heads":4,"torch_dtype":"int8"})", {"\"torch_dtype\"", "bfloat16"});
  expect_bad(R"({"model_type":"qwen3_moe","vocab_size":100,"hidden_size":256,"num_hidden_layers":4,"num_attention_heads":4,
    "moe_intermediate_size":64,"num_experts":8,"num_experts_per_tok":2,"mlp_only_layers":[4]})", {"\"mlp_only_layers\""});
  // A dense layer exists (mlp_only_layers) but the dense width is missing.
  expect_bad(R"({"model_type":"qwen3_moe","vocab_size":100,"hidden_size":256,"num_hidden_layers":4,"num_attention_heads":4,
    "moe_intermediate_size":64,"num_experts":8,"num_experts_per_tok":2,"mlp_only_layers":[0]})", {"\"intermediate_size\"", "missing"});
}

TEST(ModelConfig, UnknownArchitectureListsSupported) {
  expect_bad(R"({"model_type":"gpt2","vocab_size":100})", {"\"gpt2\"", "qwen3_moe, mixtral, olmoe, qwen2_moe, llama, qwen2, qwen3"});
  expect_bad(R"({"vocab_size":100})", {"\"model_type\"", "missing", "qwen3_moe"});
}

TEST(ModelConfig, FileErrorsNameTheFile) {
  try {
    load_model_config("/nonexistent/config.json");
    ADD_FAILURE();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("/nonexistent/config.json"), std::string::npos);
  }
  const std::string bad = ::testing::TempDir() + "/bad-config.json";
  FILE* f = std::fopen(bad.c_str(), "w");
  std::fputs("{\"model_type\": ", f);
  std::fclose(f);
  try {
    load_model_config(bad);
    ADD_FAILURE();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(bad), std::string::npos);
    EXPECT_NE(std::string(e.what()).find("not valid JSON"), std::string::npos);
  }
}

// transformers >= 5 writes rope_parameters (theta inside) and Qwen3-MoE's num_local_experts; the
// golden checkpoints in tests/data/models are such files.
TEST(ModelConfig, TransformersFiveFieldNames) {
  const ModelConfig l = load_model_config(std::string(MXMOE_TEST_DATA) + "/models/llama");
  EXPECT_EQ(l.rope.type, RopeType::llama3);
  EXPECT_DOUBLE_EQ(l.rope.factor, 8.0);
  EXPECT_EQ(l.rope.original_max_position_embeddings, 64);
  EXPECT_DOUBLE_EQ(l.rope.theta, 10000.0);
  const ModelConfig m = load_model_config(std::string(MXMOE_TEST_DATA) + "/models/mixtral");
  EXPECT_DOUBLE_EQ(m.rope.theta, 1e6);
  EXPECT_EQ(m.rope.type, RopeType::default_rope);
  const ModelConfig q = load_model_config(std::string(MXMOE_TEST_DATA) + "/models/qwen3_moe");
  EXPECT_EQ(q.num_experts, 4);  // written as num_local_experts
  EXPECT_EQ(load_model_config(std::string(MXMOE_TEST_DATA) + "/models/qwen3").rope.type, RopeType::yarn);
}

// Stop ids: config.json's eos_token_id united with generation_config.json's (an int or a list).
TEST(ModelConfig, StopIdsMergeGenerationConfig) {
  const std::string dir = ::testing::TempDir() + "/stop-ids";
  std::filesystem::remove_all(dir);  // a file left by an earlier run would change the first case
  std::filesystem::create_directories(dir);
  const ModelConfig c = parse(R"({"model_type": "llama", "hidden_size": 64, "num_hidden_layers": 1,
      "num_attention_heads": 2, "intermediate_size": 64, "vocab_size": 32, "eos_token_id": [7, 2]})");
  const auto write = [&](const char* text) { std::ofstream(dir + "/generation_config.json") << text; };
  EXPECT_EQ(load_stop_ids(dir, c), (std::vector<int32_t>{2, 7}));  // no generation_config.json yet
  write(R"({"eos_token_id": 9})");
  EXPECT_EQ(load_stop_ids(dir, c), (std::vector<int32_t>{2, 7, 9}));
  write(R"({"eos_token_id": [9, 7, 11]})");
  EXPECT_EQ(load_stop_ids(dir, c), (std::vector<int32_t>{2, 7, 9, 11}));
  write(R"({"eos_token_id": ["</s>"]})");
  try {
    load_stop_ids(dir, c);
    ADD_FAILURE() << "no error for a string eos_token_id";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(dir + "/generation_config.json"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("eos_token_id"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace mxmoe
