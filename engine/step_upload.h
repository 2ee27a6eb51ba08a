#pragma once
// The host side of a forward step: its index arrays, packed into one i32 buffer and sent to the
// device in one asynchronous copy from pinned staging (instead of one synchronous copy each).
#include <cuda_runtime.h>

#include <cstdint>
#include <memory>
#include <vector>

#include "engine/stream.h"
#include "models/model.h"

namespace mxmoe {

// T new tokens of S sequences; R logit rows. Arrays in the order they are packed.
struct HostStep {
  std::vector<int32_t> token_ids, positions, kv_slots;  // [T] each
  std::vector<int32_t> cu_seqlens;                     // [S + 1]
  std::vector<int32_t> seq_lens;                       // [S]
  std::vector<int32_t> logit_rows;                     // [R]
  std::vector<int32_t> block_tables;                   // [S, table_width] row-major
  int64_t table_width = 0;
  int64_t max_seq_len = 0;  // >= every seq_lens[s]: sizes attention's split along the keys

  int64_t num_tokens() const { return int64_t(token_ids.size()); }
  int64_t num_seqs() const { return int64_t(seq_lens.size()); }
  size_t packed_size() const;  // i32 elements
};

// The step padded to `batch` sequences of one token each (a decode step, for a CUDA graph of that
// batch): padding rows feed token 0 at position 0 into no cache slot (slot -1: kv_cache_write
// skips it) and attend to the first cached token of the first real sequence (finite values; the
// real rows never see them). Logit rows are padded with row 0; the table is widened to
// `table_width` and max_seq_len set to `max_seq_len`.
HostStep pad_decode_step(const HostStep& step, int64_t batch, int64_t table_width, int64_t max_seq_len);

class StepUploader {
 public:
  explicit StepUploader(Device device);
  // Packs `step` into `dest` (i32 [>= packed_size()] on the device, or empty: a new tensor made
  // here, from the active step arena if any) with one copy on `stream`, and returns the model's
  // inputs as views of it. fed: i32 [n] on the device, or nullptr: copied over the first n token
  // ids after that copy (tokens sampled by the previous step, not read back yet).
  StepInputs upload(const HostStep& step, cudaStream_t stream, Tensor dest = {}, const Tensor* fed = nullptr);

 private:
  Device device_;
  std::unique_ptr<Allocation> staging_;  // pinned, reused: the previous copy is waited for first
  std::unique_ptr<Event> copied_;  // recorded after each copy (GPU only)
};

}  // namespace mxmoe
