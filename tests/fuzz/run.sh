#!/usr/bin/env bash
# Builds the safetensors header fuzzer with clang (libFuzzer + ASan + UBSan) and runs it.
#   tests/fuzz/run.sh [seconds, default 300]   (needs Debian's clang: apt-get install clang)
# The corpus grows in build-fuzz/corpus; seeds are written fresh each run.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
out=${BUILD_FUZZ:-$root/build-fuzz}
seconds=${1:-300}
mkdir -p "$out/corpus" "$out/seeds"
cuda=$(dirname "$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)")/..
# The parser and what it links against (tensor.cpp for shape_str; no CUDA code runs).
clang++ -std=c++20 -O1 -g -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
  -I"$root" -isystem "$cuda/include" \
  "$root/tests/fuzz/safetensors_header_fuzz.cpp" "$root/loader/safetensors.cpp" "$root/engine/dtype.cpp" \
  "$root/engine/tensor.cpp" "$root/engine/memory.cpp" -L"$cuda/lib64" -lcudart -Wl,-rpath,"$cuda/lib64" \
  -o "$out/safetensors_header_fuzz"
# Seeds: a valid two-tensor file, one with metadata, and an empty header.
seed() { printf "$(printf '\\x%02x' $(( ${#2} & 255 )) $(( (${#2} >> 8) & 255 )) 0 0 0 0 0 0)%s%s" "$2" "$3" > "$out/seeds/$1"; }
seed valid '{"a":{"dtype":"BF16","shape":[2,2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}}' 'abcdefghijkl'
seed meta '{"__metadata__":{"format":"pt"},"w":{"dtype":"F8_E4M3","shape":[3],"data_offsets":[0,3]}}' 'xyz'
seed empty '{}' ''
"$out/safetensors_header_fuzz" -max_total_time="$seconds" -max_len=4096 -print_final_stats=1 "$out/corpus" "$out/seeds" 2>&1 |
  tee "$out/fuzz.log" | grep -E "^#[0-9]+ +(DONE|pulse)|stat::|ERROR|SUMMARY" || true
grep -q "ERROR" "$out/fuzz.log" && { echo "fuzzer found a bug: see $out/fuzz.log"; exit 1; }
echo "no crash in ${seconds} s"
