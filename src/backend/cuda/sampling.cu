// Sampling on the GPU (Backend::sample): one block per row, every filter an O(vocab) pass with
// block-wide reductions, and only the chosen ids copied back. The draw is the one
// ops/sampling_math.h defines, so each row gets exactly the CPU reference's token.
//
// A row's passes (each reads the row's logits once; penalised tokens are marked in a shared
// bitmap and changed on the fly, so the logits stay untouched for a logprobs download):
//   1. the largest key (logit, then lower id): greedy ends here;
//   2. top-k: the k-th largest key, by a radix select (below);
//   3. top-p: the total weight of the top-k tokens, then a radix select weighted by q for the
//      key where the running weight from the top reaches ceil(top_p * total);
//   4. the kept weight per warp segment (a warp owns a contiguous run of ids), and the draw's
//      point in it: the warp whose segment holds the point scans it 32 ids at a time.
// Radix select: 8 bits of the 64-bit key per pass, from the top. A pass adds up the weights of
// the keys that match the digits found so far into 256 bins (shared-memory atomics; a thread
// adds runs of one bin locally first, since the top digit is mostly the logit's sign and
// exponent); the bin where the running weight from the largest bin reaches what is still needed
// is the next digit. When all of that bin is needed the search stops: every key in the bin is
// kept (for distinct logits that happens within the logit's 4 bytes). All weights are integers,
// so the atomics' order changes nothing: the same run gives the same token.
#include <cuda_runtime.h>

#include <algorithm>
#include <map>
#include <mutex>
#include <vector>

#include "backend/cuda/cuda_allocator.h"
#include "backend/cuda/cuda_backend.h"
#include "backend/cuda/cuda_common.h"
#include "ops/sample_reference.h"
#include "ops/sampling_math.h"

namespace statelm {

namespace {

using u64 = unsigned long long;  // what CUDA's 64-bit atomics and shuffles take
static_assert(sizeof(u64) == sizeof(uint64_t));

constexpr int kThreads = 1024;
constexpr int kWarps = kThreads / 32;
constexpr unsigned kAllLanes = 0xffffffffu;

// One row's arguments, prepared on the host.
struct RowArgs {
  u64 draw;           // sampling::draw_bits(seed, step)
  u64 least_weight;   // sampling::min_p_weight(min_p)
  float inv_t;        // 1 / temperature
  float penalty;
  float top_p;        // 1 = off
  int32_t top_k;      // 0 = off (also when it keeps the whole vocabulary)
  int32_t logits_row;
  int32_t greedy;
  int32_t pen_begin, pen_count;  // the row's penalised ids in the id list (0 = no penalty)
};

struct SharedState {
  u64 hist[256];
  u64 partial[kWarps];
  u64 found[3];  // radix select: the bin, the weight above it, its weight; the draw: warp, point
};

// A row's logits as the filters see them: the penalised tokens (bits of `penalised`) changed.
struct Row {
  const float* logits;
  const uint32_t* penalised;  // null: no penalty
  float penalty;
  int vocab;
  __device__ float logit(int i) const {
    const float l = logits[i];
    return penalised && ((penalised[i >> 5] >> (i & 31)) & 1u) ? sampling::penalize(l, penalty) : l;
  }
};

__device__ __forceinline__ u64 warp_sum(u64 v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(kAllLanes, v, o);
  return v;
}

__device__ __forceinline__ u64 warp_max(u64 v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const u64 other = __shfl_xor_sync(kAllLanes, v, o);
    v = other > v ? other : v;
  }
  return v;
}

// Inclusive prefix sum over the warp's lanes.
__device__ __forceinline__ u64 warp_scan(u64 v) {
  const int lane = threadIdx.x & 31;
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const u64 t = __shfl_up_sync(kAllLanes, v, o);
    if (lane >= o) v += t;
  }
  return v;
}

// The block's sum (or max); every thread gets it.
template <bool kMax>
__device__ u64 block_reduce(u64 v, SharedState& sh) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  v = kMax ? warp_max(v) : warp_sum(v);
  __syncthreads();  // the previous user of sh.partial is done with it
  if (lane == 0) sh.partial[warp] = v;
  __syncthreads();
  v = sh.partial[lane];  // kWarps == 32: one value per lane
  return kMax ? warp_max(v) : warp_sum(v);
}

// Warp 0: the bin, from 255 down, where the running weight reaches `need` (the bins hold at least
// that much in all). Lane L sums bins 255 - 8L down to 248 - 8L, a scan over lanes finds the lane,
// and that lane walks its 8 bins.
__device__ void find_bin(SharedState& sh, u64 need) {
  const int lane = threadIdx.x, top = 255 - 8 * lane;
  u64 own = 0;
  for (int j = 0; j < 8; ++j) own += sh.hist[top - j];
  const u64 upto = warp_scan(own);
  const unsigned hit = __ballot_sync(kAllLanes, upto >= need);
  if (lane != __ffs(hit) - 1) return;
  u64 above = upto - own;
  for (int j = 0; j < 8; ++j) {
    const u64 h = sh.hist[top - j];
    if (above + h >= need) {
      sh.found[0] = u64(top - j);
      sh.found[1] = above;
      sh.found[2] = h;
      return;
    }
    above += h;
  }
}

// The threshold key from which on the largest keys, weighted by weight(logit, key), first reach
// `target` (the weights add up to at least that): keep the keys >= it. See the top of the file.
template <typename Weight>
__device__ u64 select_from(const Row& row, u64 target, Weight weight, SharedState& sh) {
  u64 prefix = 0, need = target;
  for (int shift = 56;; shift -= 8) {
    for (int b = threadIdx.x; b < 256; b += blockDim.x) sh.hist[b] = 0;
    __syncthreads();
    int run_bin = 0;
    u64 run = 0;
    for (int i = threadIdx.x; i < row.vocab; i += blockDim.x) {
      const float l = row.logit(i);
      const u64 key = sampling::sample_key(l, uint32_t(i));
      if (shift < 56 && (key >> (shift + 8)) != prefix) continue;
      const u64 w = weight(l, key);
      if (w == 0) continue;
      const int bin = int(key >> shift) & 255;
      if (bin != run_bin) {
        if (run) atomicAdd(&sh.hist[run_bin], run);
        run_bin = bin;
        run = 0;
      }
      run += w;
    }
    if (run) atomicAdd(&sh.hist[run_bin], run);
    __syncthreads();
    if (threadIdx.x < 32) find_bin(sh, need);
    __syncthreads();  // every thread reads found before warp 0 writes it again (after 2 more syncs)
    need -= sh.found[1];
    prefix = (prefix << 8) | sh.found[0];
    if (sh.found[2] == need || shift == 0) return prefix << shift;
  }
}

__global__ void __launch_bounds__(kThreads)
    sample_kernel(const float* __restrict__ logits, int64_t row_stride, int vocab, const RowArgs* __restrict__ args,
                  const int32_t* __restrict__ penalised_ids, int32_t* __restrict__ out) {
  __shared__ SharedState sh;
  extern __shared__ uint32_t penalised[];  // vocab bits when some row has a penalty
  const RowArgs a = args[blockIdx.x];
  Row row{logits + int64_t(a.logits_row) * row_stride, nullptr, a.penalty, vocab};
  if (a.pen_count > 0) {  // the same for the whole block
    for (int w = threadIdx.x; w < (vocab + 31) / 32; w += blockDim.x) penalised[w] = 0;
    __syncthreads();
    for (int j = threadIdx.x; j < a.pen_count; j += blockDim.x) {
      const int id = penalised_ids[a.pen_begin + j];
      atomicOr(&penalised[id >> 5], 1u << (id & 31));
    }
    __syncthreads();
    row.penalised = penalised;
  }

  // 1. The best token.
  u64 best = 0;
  for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
    const u64 key = sampling::sample_key(row.logit(i), uint32_t(i));
    best = key > best ? key : best;
  }
  best = block_reduce<true>(best, sh);
  const float top = sampling::key_logit(best);
  if (a.greedy || !isfinite(top)) {
    if (threadIdx.x == 0) out[blockIdx.x] = int32_t(sampling::key_id(best));
    return;
  }

  // 2. top-k.
  u64 keep_from = 0;
  if (a.top_k > 0) keep_from = select_from(row, u64(a.top_k), [](float, u64) { return u64(1); }, sh);
  const float inv_t = a.inv_t;
  const u64 top_k_from = keep_from;
  auto top_k_weight = [&](float l, u64 key) -> u64 {
    return key >= top_k_from ? sampling::quantized_weight(l, top, inv_t) : 0;
  };

  // 3. top-p.
  if (a.top_p < 1.0f) {
    u64 total = 0;
    for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
      const float l = row.logit(i);
      total += top_k_weight(l, sampling::sample_key(l, uint32_t(i)));
    }
    total = block_reduce<false>(total, sh);
    const u64 from = select_from(row, sampling::top_p_target(a.top_p, total), top_k_weight, sh);
    keep_from = from > keep_from ? from : keep_from;
  }

  // 4. min-p, and the draw over the kept weights in id order.
  auto kept_weight = [&](int i) -> u64 {
    const float l = row.logit(i);
    if (sampling::sample_key(l, uint32_t(i)) < keep_from) return 0;
    const u64 w = sampling::quantized_weight(l, top, inv_t);
    return w >= a.least_weight ? w : 0;
  };
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int per_warp = (vocab + kWarps - 1) / kWarps;
  const int begin = min(vocab, warp * per_warp), end = min(vocab, begin + per_warp);
  u64 mine = 0;
  for (int i = begin + lane; i < end; i += 32) mine += kept_weight(i);
  mine = warp_sum(mine);
  __syncthreads();  // the last block_reduce's readers are done with sh.partial
  if (lane == 0) sh.partial[warp] = mine;
  __syncthreads();
  if (threadIdx.x == 0) {
    u64 kept = 0;
    for (int w = 0; w < kWarps; ++w) kept += sh.partial[w];
    const u64 point = sampling::draw_point(a.draw, kept);  // < kept: the best token is always kept
    u64 before = 0;
    int w = 0;
    while (w < kWarps - 1 && before + sh.partial[w] <= point) before += sh.partial[w++];
    sh.found[0] = u64(w);
    sh.found[1] = point - before;
  }
  __syncthreads();
  if (warp != int(sh.found[0])) return;
  const u64 point = sh.found[1];
  u64 carry = 0;
  for (int base = begin; base < end; base += 32) {
    const int i = base + lane;
    const u64 upto = carry + warp_scan(i < end ? kept_weight(i) : 0);
    const unsigned hit = __ballot_sync(kAllLanes, upto > point);
    if (hit) {
      if (lane == __ffs(hit) - 1) out[blockIdx.x] = i;
      return;
    }
    carry = __shfl_sync(kAllLanes, upto, 31);
  }
}

// Per device: the stream the kernel runs on and its transfer buffers, reused from call to call
// (each call waits for its own work, so nothing is in flight when they are reused). Never
// destroyed, like the allocator: buffers and streams may outlive static destruction order.
struct SamplingContext {
  std::mutex mu;
  cudaStream_t stream = nullptr;
  char* host = nullptr;  // pinned: arguments and ids in, ids out
  size_t host_bytes = 0;
  Buffer device;
};

SamplingContext& sampling_context(int device) {
  static std::mutex mu;
  static auto* contexts = new std::map<int, SamplingContext*>();
  std::lock_guard<std::mutex> lock(mu);
  SamplingContext*& c = (*contexts)[device];
  if (!c) {
    auto* made = new SamplingContext();
    STATELM_CUDA_CHECK(cudaStreamCreateWithFlags(&made->stream, cudaStreamNonBlocking), "sample: stream on device ",
                       device);
    c = made;
  }
  return *c;
}

size_t round_up(size_t n, size_t to) { return (n + to - 1) / to * to; }

}  // namespace

void CudaBackend::sample(const Tensor& logits, std::span<const SampleRow> rows, std::span<int32_t> out_ids) {
  STATELM_CHECK(logits.defined() && logits.device == Device::Cuda && logits.dtype == DType::F32 && logits.ndim == 2 &&
                    (logits.shape[1] <= 1 || logits.stride[1] == 1) && logits.stride[0] >= logits.shape[1],
                "sample: logits must be a 2-D float32 CUDA tensor with contiguous rows, got ", logits.describe());
  const int64_t n = logits.shape[0], vocab = logits.shape[1];
  check_sample_rows(rows, out_ids.size(), n, vocab, "sample");
  if (rows.empty()) return;

  std::vector<RowArgs> args(rows.size());
  std::vector<int32_t> ids;
  for (size_t r = 0; r < rows.size(); ++r) {
    const SampleRow& s = rows[r];
    RowArgs& a = args[r];
    a.draw = sampling::draw_bits(s.seed, s.step);
    a.least_weight = sampling::min_p_weight(s.min_p);
    a.greedy = s.temperature == 0.0f;
    a.inv_t = a.greedy ? 0.0f : 1.0f / s.temperature;
    a.penalty = s.repetition_penalty;
    a.top_p = s.top_p;
    a.top_k = s.top_k < vocab ? s.top_k : 0;
    a.logits_row = s.logits_row;
    a.pen_begin = int32_t(ids.size());
    if (s.repetition_penalty != 1.0f) ids.insert(ids.end(), s.penalized.begin(), s.penalized.end());
    a.pen_count = int32_t(ids.size()) - a.pen_begin;
  }
  const bool any_penalty = !ids.empty();
  STATELM_CHECK(ids.size() < size_t(INT32_MAX), "sample: ", ids.size(), " penalised ids");
  const size_t args_bytes = round_up(args.size() * sizeof(RowArgs), 16);
  const size_t in_bytes = args_bytes + round_up(ids.size() * sizeof(int32_t), 16);
  const size_t total_bytes = in_bytes + rows.size() * sizeof(int32_t);

  // The penalty bitmap lives in dynamic shared memory: beyond 48 KiB (a vocabulary over 393K)
  // the kernel must ask for more, up to what the device allows.
  const size_t bitmap_bytes = any_penalty ? size_t((vocab + 31) / 32) * sizeof(uint32_t) : 0;
  STATELM_CUDA_CHECK(cudaSetDevice(device_), "sample: select device ", device_);
  if (bitmap_bytes > 48 * 1024) {
    int optin = 0;
    STATELM_CUDA_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device_), "sample");
    if (bitmap_bytes + sizeof(SharedState) > size_t(optin))
      fail(ErrorKind::Unsupported, "sample: a repetition penalty over a vocabulary of ", vocab, " needs ",
           bitmap_bytes + sizeof(SharedState), " bytes of shared memory; the device has ", optin);
    STATELM_CUDA_CHECK(cudaFuncSetAttribute(sample_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                            int(bitmap_bytes)),
                       "sample: shared memory for a vocabulary of ", vocab);
  }

  // The logits come from work queued on the backend's stream, which is private to
  // cuda_backend.cu: wait for it here, then sample on this file's own stream.
  synchronize("sample: the work that computed the logits");
  SamplingContext& ctx = sampling_context(device_);
  std::lock_guard<std::mutex> lock(ctx.mu);
  if (ctx.host_bytes < total_bytes) {
    if (ctx.host) cudaFreeHost(ctx.host);
    ctx.host = nullptr;
    ctx.host_bytes = std::max(total_bytes, 2 * ctx.host_bytes);
    STATELM_CUDA_CHECK(cudaMallocHost(&ctx.host, ctx.host_bytes), "sample: pinned buffer of ", ctx.host_bytes, " bytes");
  }
  if (ctx.device.bytes() < total_bytes) ctx.device = cuda::device_alloc(device_, std::max(total_bytes, 2 * ctx.device.bytes()));
  std::copy(args.begin(), args.end(), reinterpret_cast<RowArgs*>(ctx.host));
  std::copy(ids.begin(), ids.end(), reinterpret_cast<int32_t*>(ctx.host + args_bytes));
  char* dev = static_cast<char*>(ctx.device.data());
  STATELM_CUDA_CHECK(cudaMemcpyAsync(dev, ctx.host, in_bytes, cudaMemcpyHostToDevice, ctx.stream), "sample: arguments");
  sample_kernel<<<unsigned(rows.size()), kThreads, bitmap_bytes, ctx.stream>>>(
      logits.ptr<float>(), logits.stride[0], int(vocab), reinterpret_cast<const RowArgs*>(dev),
      reinterpret_cast<const int32_t*>(dev + args_bytes), reinterpret_cast<int32_t*>(dev + in_bytes));
  STATELM_CUDA_LAUNCHED("sample: ", rows.size(), " rows of ", vocab);
  STATELM_CUDA_CHECK(cudaMemcpyAsync(ctx.host + in_bytes, dev + in_bytes, rows.size() * sizeof(int32_t),
                                     cudaMemcpyDeviceToHost, ctx.stream),
                     "sample: ids");
  STATELM_CUDA_CHECK(cudaStreamSynchronize(ctx.stream), "sample: ", rows.size(), " rows of ", vocab);
  std::copy_n(reinterpret_cast<const int32_t*>(ctx.host + in_bytes), rows.size(), out_ids.begin());
}

}  // namespace statelm
