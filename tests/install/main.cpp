// A program that embeds mxmoe through its installed CMake package (tests/install/CMakeLists.txt)
// and, built in-tree as install_probe, through the build tree: the greedy tokens of one prompt on
// the CPU backend.
//   embed_mxmoe MODEL_DIR [EXPECTED_IDS...]
// prints the ids (the text goes to stderr); given expected ids, exits 1 unless they match.
#include <cstdio>
#include <string>
#include <vector>

#include "engine/mxmoe.h"

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s MODEL_DIR [EXPECTED_IDS...]\n", argv[0]);
    return 2;
  }
  try {
    mxmoe::EngineOptions options;
    options.model = argv[1];
    options.device = "cpu";
    options.max_model_len = 128;
    mxmoe::Engine engine(options);

    mxmoe::Request request;
    request.prompt = "And it came to pass";
    request.max_new_tokens = 8;
    request.ignore_eos = true;
    request.sampling.temperature = 0;  // greedy
    std::string streamed;
    const mxmoe::Result result = engine.generate(request, [&](int32_t, std::string_view text) {
      streamed += text;
      return true;
    });
    std::fprintf(stderr, "%s%s\n", request.prompt.c_str(), streamed.c_str());
    if (result.finish != mxmoe::FinishReason::length || streamed != result.text) {
      std::fprintf(stderr, "finished by %s: %s\n", mxmoe::to_string(result.finish), result.error.c_str());
      return 1;
    }
    std::string ids;
    for (int32_t id : result.token_ids) {
      if (!ids.empty()) ids += ' ';
      ids += std::to_string(id);
    }
    std::printf("%s\n", ids.c_str());

    if (argc > 2) {
      std::string expected = argv[2];
      for (int i = 3; i < argc; ++i) expected += std::string(" ") + argv[i];
      if (expected != ids) {
        std::fprintf(stderr, "expected tokens %s, got %s\n", expected.c_str(), ids.c_str());
        return 1;
      }
    }
    return 0;
  } catch (const mxmoe::Error& e) {
    std::fprintf(stderr, "mxmoe: %s\n", e.what());
    return 1;
  }
}
