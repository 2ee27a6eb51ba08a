#include "engine/step_upload.h"

#include <algorithm>
#include <cstring>

#include "engine/error.h"

namespace mxmoe {

size_t HostStep::packed_size() const {
  return token_ids.size() + positions.size() + kv_slots.size() + cu_seqlens.size() + seq_lens.size() +
         logit_rows.size() + block_tables.size();
}

HostStep pad_decode_step(const HostStep& step, int64_t batch, int64_t table_width, int64_t max_seq_len) {
  const int64_t s = step.num_seqs();
  MXMOE_CHECK(step.num_tokens() == s && s >= 1 && s <= batch && int64_t(step.logit_rows.size()) <= batch &&
                  table_width >= step.table_width && max_seq_len >= step.max_seq_len,
              "pad_decode_step: a step of ", step.num_tokens(), " tokens of ", s, " sequences does not pad to ", batch,
              " sequences of one token with a table of ", table_width, " blocks");
  HostStep p;
  p.table_width = table_width;
  p.max_seq_len = max_seq_len;
  const auto padded = [batch](const std::vector<int32_t>& v, int32_t fill) {
    std::vector<int32_t> out = v;
    out.resize(size_t(batch), fill);
    return out;
  };
  p.token_ids = padded(step.token_ids, 0);
  p.positions = padded(step.positions, 0);
  p.kv_slots = padded(step.kv_slots, -1);
  p.seq_lens = padded(step.seq_lens, 1);
  p.logit_rows = padded(step.logit_rows, 0);
  p.cu_seqlens.resize(size_t(batch) + 1);
  for (int64_t i = 0; i <= batch; ++i) p.cu_seqlens[size_t(i)] = int32_t(i);
  p.block_tables.assign(size_t(batch * table_width), 0);
  for (int64_t r = 0; r < batch; ++r) {
    const int64_t from = r < s ? r : 0;  // padding rows read the first sequence's blocks
    std::copy_n(step.block_tables.begin() + from * step.table_width, step.table_width,
                p.block_tables.begin() + r * table_width);
  }
  return p;
}

StepUploader::StepUploader(Device device) : device_(device) {
  if (device_ == Device::cuda) copied_ = std::make_unique<Event>(cudaEventDisableTiming);
}

StepInputs StepUploader::upload(const HostStep& step, cudaStream_t stream, Tensor dest, const Tensor* fed) {
  const size_t n = step.packed_size();
  int32_t* host = nullptr;
  Tensor packed;
  if (device_ == Device::cpu) {
    packed = Tensor::empty({int64_t(n)}, DType::i32, Device::cpu);
    host = packed.data_as<int32_t>();
  } else {
    copied_->synchronize();  // the previous copy has read the staging buffer (a fresh event is complete)
    if (!staging_ || staging_->size() < n * sizeof(int32_t))
      staging_ = std::make_unique<Allocation>(std::max<size_t>(n * sizeof(int32_t), 4096) * 2, MemoryKind::pinned);
    host = static_cast<int32_t*>(staging_->data());
    packed = dest.defined() ? dest : Tensor::empty({int64_t(n)}, DType::i32, Device::cuda);
    MXMOE_CHECK(packed.dtype() == DType::i32 && packed.numel() >= int64_t(n), "step upload: destination of ",
                packed.numel(), " elements, need ", n);
  }
  int64_t offset = 0;
  std::vector<Tensor> views;
  for (const std::vector<int32_t>* v : {&step.token_ids, &step.positions, &step.kv_slots, &step.cu_seqlens,
                                        &step.seq_lens, &step.logit_rows, &step.block_tables}) {
    std::memcpy(host + offset, v->data(), v->size() * sizeof(int32_t));
    views.push_back(packed.slice(offset, offset + int64_t(v->size())));
    offset += int64_t(v->size());
  }
  if (device_ == Device::cuda) {
    CUDA_CHECK(cudaMemcpyAsync(packed.data(), host, n * sizeof(int32_t), cudaMemcpyHostToDevice, stream));
    copied_->record(stream);
  }
  if (fed) views[0].slice(0, fed->numel()).copy_from(*fed, stream);
  StepInputs in;
  in.token_ids = views[0];
  in.positions = views[1];
  in.kv_slots = views[2];
  in.attention.cu_seqlens = views[3];
  in.attention.seq_lens = views[4];
  in.logit_rows = views[5];
  in.attention.block_tables = views[6].view({step.num_seqs(), step.table_width});
  in.attention.max_seq_len = step.max_seq_len;
  return in;
}

}  // namespace mxmoe
