// Tokenizer encode speed (MB/s of UTF-8, one thread) for the Qwen3, Llama-2 and DeepSeek-V3
// tokenizers, in two modes: "documents" encodes each document of the corpus separately,
// "one call" encodes all of them joined by newlines at once. The corpus is the golden text set
// (tests/data/tokenizer_goldens/texts.json) repeated to --mb MiB, exactly as
// `python3 tests/data/make_tokenizer_goldens.py --bench` builds it for Hugging Face tokenizers
// (encode_batch / encode with RAYON_NUM_THREADS=1), so token counts must agree and MB/s compare.
// The repeated text set keeps both word caches warm; --corpus takes a JSON list of documents
// instead, e.g. the cache-cold one written by `make_tokenizer_goldens.py --random-corpus FILE`.
//   bench-tokenizer [--data tests/data] [--mb 4] [--corpus docs.json]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "engine/error.h"
#include "engine/tokenizer.h"

namespace {

// The documents of a JSON list of strings, repeated to at least `mb` MiB (mb = 0: once).
std::vector<std::string> corpus(const std::string& path, double mb) {
  std::ifstream f(path);
  MXMOE_CHECK(f, "cannot open ", path, " (run from the repository root or pass --data <repo>/tests/data)");
  std::vector<std::string> texts;
  size_t size = 0;
  for (const auto& t : nlohmann::json::parse(f)) {
    if (t.get<std::string>().empty()) continue;
    texts.push_back(t.get<std::string>());
    size += texts.back().size();
  }
  const auto min_bytes = static_cast<size_t>(mb * (1 << 20));
  std::vector<std::string> docs = texts;
  for (size_t k = 1; k < (min_bytes + size - 1) / size; ++k) docs.insert(docs.end(), texts.begin(), texts.end());
  return docs;
}

template <class F>
double best_of_3(F&& f) {
  double best = 1e30;
  for (int rep = 0; rep < 3; ++rep) {
    const auto t0 = std::chrono::steady_clock::now();
    f();
    best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  return best;
}

}  // namespace

int main(int argc, char** argv) {
  std::string data = "tests/data", corpus_path;
  double mb = 4;
  for (int k = 1; k < argc; ++k) {
    if (!std::strcmp(argv[k], "--data") && k + 1 < argc) {
      data = argv[++k];
    } else if (!std::strcmp(argv[k], "--mb") && k + 1 < argc) {
      mb = std::atof(argv[++k]);
    } else if (!std::strcmp(argv[k], "--corpus") && k + 1 < argc) {
      corpus_path = argv[++k];
    } else {
      std::fprintf(stderr, "usage: %s [--data tests/data] [--mb 4] [--corpus docs.json]\n", argv[0]);
      return 2;
    }
  }
  try {
    const auto docs = corpus_path.empty() ? corpus(data + "/tokenizer_goldens/texts.json", mb) : corpus(corpus_path, 0);
    std::string whole;
    size_t doc_bytes = 0;
    for (const auto& d : docs) {
      whole += (whole.empty() ? "" : "\n") + d;
      doc_bytes += d.size();
    }
    for (const char* name : {"qwen3", "llama2", "deepseek_v3"}) {
      const auto t0 = std::chrono::steady_clock::now();
      const auto tok = mxmoe::Tokenizer::from_file(data + "/tokenizers/" + name + "/tokenizer.json");
      const double load = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      for (size_t k = 0; k < 1000; ++k) tok.encode(docs[k % docs.size()], false);  // warm-up
      size_t n = 0;
      const double t_docs = best_of_3([&] {
        n = 0;
        for (const auto& d : docs) n += tok.encode(d, false).size();
      });
      std::printf("mxmoe      %-12s documents %.2f MB %8zu tokens %8.2f MB/s  (load %.2f s)\n", name,
                  static_cast<double>(doc_bytes) / 1e6, n, static_cast<double>(doc_bytes) / 1e6 / t_docs, load);
      const double t_whole = best_of_3([&] { n = tok.encode(whole, false).size(); });
      std::printf("mxmoe      %-12s one call  %.2f MB %8zu tokens %8.2f MB/s\n", name,
                  static_cast<double>(whole.size()) / 1e6, n, static_cast<double>(whole.size()) / 1e6 / t_whole);
    }
  } catch (const mxmoe::Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
