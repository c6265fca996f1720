// CudaBackend: memory, transfers, argument checks, and the dispatch of every op to its kernel
// family's launcher on the backend's one stream. The math lives in the family files (norm.cu,
// elementwise.cu, gemm.cu, moe.cu; conv1d.cu, selective_scan.cu, ssd.cu, rope.cu, attention.cu).
//
// A failed check is a bug of the caller (the forward or a test), so it is an Internal error whose
// message names the op, the tensor and its shape, as the CPU backend's checks do.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstring>
#include <string>
#include <vector>

#include "backend/cuda/core_kernels.h"
#include "backend/cuda/cuda_allocator.h"
#include "backend/cuda/cuda_graphs.h"
#include "backend/cuda/cuda_backend.h"
#include "backend/cuda/cuda_common.h"
#include "backend/cuda/cuda_kernels.h"
#include "backend/cuda/device_info.h"
#include "model/rope_frequencies.h"

namespace statelm {

namespace cuda {

void throw_cuda_error(cudaError_t err, const char* call, const char* file, int line, const std::string& op) {
  cudaGetLastError();  // clear a non-sticky error so the next call reports its own
  const ErrorKind kind = err == cudaErrorMemoryAllocation ? ErrorKind::OutOfMemory : ErrorKind::Internal;
  fail(kind, op.empty() ? std::string("CUDA") : op, ": ", cudaGetErrorName(err), " (", cudaGetErrorString(err), ") in ",
       call, " at ", file, ":", line);
}

}  // namespace cuda

namespace {

constexpr size_t kScratchAlign = 256;

// Host bytes copied to the device through pinned memory: the copy is queued on the stream and
// the host returns at once. The pinned buffer is refilled only after the previous copy out of
// it has finished (an event; in a steady state it has long finished when the next batch comes).
class Staging {
 public:
  Staging(int device, cudaStream_t stream) : device_(device), stream_(stream) {
    STATELM_CUDA_CHECK(cudaEventCreateWithFlags(&done_, cudaEventDisableTiming), "staging event");
  }
  ~Staging() {
    if (done_) cudaEventDestroy(done_);
    if (host_) cudaFreeHost(host_);
  }
  Staging(const Staging&) = delete;
  Staging& operator=(const Staging&) = delete;

  // Copies `bytes` from `src` into device memory valid until the next put().
  void* put(const void* src, size_t bytes, const char* what) {
    if (bytes == 0) return nullptr;
    if (pending_) STATELM_CUDA_CHECK(cudaEventSynchronize(done_), what, ": previous staging copy");
    pending_ = false;
    if (host_bytes_ < bytes) {
      if (host_) cudaFreeHost(host_);
      host_ = nullptr;
      host_bytes_ = std::max(bytes, 2 * host_bytes_);
      STATELM_CUDA_CHECK(cudaMallocHost(&host_, host_bytes_), what, ": pinned staging of ", host_bytes_, " bytes");
    }
    if (dev_.bytes() < bytes) dev_ = cuda::device_alloc(device_, std::max(bytes, 2 * dev_.bytes()));
    std::memcpy(host_, src, bytes);
    STATELM_CUDA_CHECK(cudaMemcpyAsync(dev_.data(), host_, bytes, cudaMemcpyHostToDevice, stream_), what);
    STATELM_CUDA_CHECK(cudaEventRecord(done_, stream_), what);
    pending_ = true;
    return dev_.data();
  }

 private:
  int device_;
  cudaStream_t stream_;
  cudaEvent_t done_ = nullptr;
  bool pending_ = false;
  void* host_ = nullptr;
  size_t host_bytes_ = 0;
  Buffer dev_;
};

// Launcher scratch (cuda::Scratch): a bump allocator over one device block. Every get() of one
// op call stays valid until the call ends; a call that needs more than the block gets extra
// blocks, and the next call starts with one block as large as that call's total, so a steady
// state allocates nothing. Blocks replaced here go back to the caching allocator while kernels
// may still read them, which is safe on one stream (cuda_allocator.h).
class Arena final : public cuda::Scratch {
 public:
  explicit Arena(int device) : device_(device) {}
  void reset() {
    if (!extra_.empty()) {
      size_t total = main_.bytes();
      for (const Buffer& b : extra_) total += b.bytes();
      extra_.clear();
      main_ = cuda::device_alloc(device_, total);
      ++replaced_;  // recorded graphs hold addresses in the old block
    }
    used_ = 0;
  }
  void* get(size_t bytes) override {
    bytes = (std::max<size_t>(bytes, 1) + kScratchAlign - 1) / kScratchAlign * kScratchAlign;
    if (used_ + bytes <= main_.bytes()) {
      void* p = static_cast<char*>(main_.data()) + used_;
      used_ += bytes;
      return p;
    }
    extra_.push_back(cuda::device_alloc(device_, bytes));
    return extra_.back().data();
  }
  uint64_t replaced() const { return replaced_; }

 private:
  int device_;
  uint64_t replaced_ = 0;
  Buffer main_;
  size_t used_ = 0;
  std::vector<Buffer> extra_;
};

// ---------------------------------------------------------------------------------------------
// Argument checks.

std::string dims(std::initializer_list<int64_t> shape) {
  std::string s = "[";
  for (int64_t d : shape) s += (s.size() > 1 ? ", " : "") + std::to_string(d);
  return s + "]";
}

// A device tensor of exactly `shape` whose dimensions after the first are packed (row stride free).
void check_view(const Tensor& t, std::initializer_list<int64_t> shape, const char* op, const char* what) {
  STATELM_CHECK(t.defined() && t.device == Device::Cuda, op, ": ", what, " must be a CUDA tensor, got ", t.describe());
  bool same = t.ndim == int(shape.size());
  int i = 0;
  for (int64_t d : shape) same = same && i < t.ndim && t.shape[i++] == d;
  STATELM_CHECK(same, op, ": ", what, " must be ", dims(shape), ", got ", t.describe());
  int64_t packed = 1;
  for (int k = t.ndim - 1; k >= 1; --k) {
    STATELM_CHECK(t.shape[k] <= 1 || t.stride[k] == packed, op, ": ", what, " needs packed inner dimensions, got ",
                  t.describe());
    packed *= t.shape[k];
  }
  STATELM_CHECK(t.ndim == 0 || t.shape[0] <= 1 || t.stride[0] >= packed, op, ": ", what, " rows overlap: ",
                t.describe());
}

// An activation: `dtype` (the call's), shape as check_view.
void check_act(const Tensor& t, DType dtype, std::initializer_list<int64_t> shape, const char* op, const char* what) {
  check_view(t, shape, op, what);
  STATELM_CHECK(t.dtype == dtype, op, ": ", what, " must be ", dtype_name(dtype), " like the other activations, got ",
                t.describe());
}

// A per-channel parameter: fp32 (bf16 too when `bf16_ok`), contiguous.
void check_param(const Tensor& t, std::initializer_list<int64_t> shape, const char* op, const char* what,
                 bool bf16_ok = false) {
  check_view(t, shape, op, what);
  STATELM_CHECK(t.is_contiguous(), op, ": ", what, " must be contiguous, got ", t.describe());
  STATELM_CHECK(t.dtype == DType::F32 || (bf16_ok && t.dtype == DType::BF16), op, ": ", what,
                bf16_ok ? " must be float32 or bfloat16" : " must be float32", ", got ", t.describe());
}

// A recurrent state: fp32, bf16 or f16 (RunnerOptions::state_dtype; the kernels' dispatch_state),
// contiguous, `shape` as check_view.
void check_state(const Tensor& t, std::initializer_list<int64_t> shape, const char* op) {
  check_view(t, shape, op, "state");
  STATELM_CHECK(t.is_contiguous(), op, ": state must be contiguous, got ", t.describe());
  STATELM_CHECK(t.dtype == DType::F32 || t.dtype == DType::BF16 || t.dtype == DType::F16, op,
                ": state must be float32, bfloat16 or float16, got ", t.describe());
}

// What upload/download move: contiguous device tensors in fp32 or bf16, and f16 for state
// tensors (RunnerOptions::state_dtype), as on the CPU.
bool transferable(const Tensor& t) {
  return t.device == Device::Cuda && t.is_contiguous() &&
         (t.dtype == DType::F32 || t.dtype == DType::BF16 || t.dtype == DType::F16);
}

void check_float(const Tensor& t, const char* op, const char* what) {
  STATELM_CHECK(t.dtype == DType::F32 || t.dtype == DType::BF16, op, ": ", what, " must be float32 or bfloat16, got ",
                t.describe());
}

// A rotation of head_dim-wide heads: even rotary_dim within the head (or none).
void check_rope(const RopeSpec& r, int64_t head_dim, const char* op) {
  STATELM_CHECK(rope_fits_head(r, head_dim), op, ": rotary_dim ", r.rotary_dim, " of head_dim ", head_dim);
}

// The arguments matmul and matmul_row_rms share: out[t, n] = x[t, k] · w[n, k]ᵀ (+ bias).
void check_matmul(const Tensor& x, const Tensor& w, const Tensor& bias, const Tensor& out, const char* op) {
  const int64_t t = x.shape[0], k = x.shape[1], n = w.shape[0];
  check_view(x, {t, k}, op, "x");
  check_float(x, op, "x");
  check_act(w, x.dtype, {n, k}, op, "weight");
  check_view(out, {t, n}, op, "out");
  STATELM_CHECK(out.dtype == x.dtype || out.dtype == DType::F32, op, ": out must be ", dtype_name(x.dtype),
                " or float32, got ", out.describe());
  if (bias.defined()) check_param(bias, {n}, op, "bias");
}

// Spans inside the batch, not sharing tokens, each owning a distinct slot below n_slots.
void check_spans(const BatchView& b, int64_t n_tokens, int64_t n_slots, const char* op) {
  STATELM_CHECK(b.n_tokens == n_tokens, op, ": batch has ", b.n_tokens, " tokens but the inputs have ", n_tokens,
                " rows");
  std::vector<uint8_t> used(size_t(std::max<int64_t>(n_slots, 0)), 0);
  std::vector<std::pair<int64_t, int64_t>> ranges;
  for (size_t s = 0; s < b.spans.size(); ++s) {
    const SeqSpan& sp = b.spans[s];
    STATELM_CHECK(sp.len >= 1 && sp.start >= 0 && int64_t(sp.start) + sp.len <= n_tokens && sp.pos >= 0, op, ": span ",
                  s, " {start ", sp.start, ", len ", sp.len, ", pos ", sp.pos, "} outside the batch of ", n_tokens,
                  " tokens");
    if (n_slots >= 0) {
      STATELM_CHECK(sp.slot >= 0 && sp.slot < n_slots, op, ": span ", s, " has slot ", sp.slot, " of ", n_slots);
      STATELM_CHECK(!used[size_t(sp.slot)], op, ": slot ", sp.slot, " appears in two spans of one batch");
      used[size_t(sp.slot)] = 1;
    }
    ranges.emplace_back(sp.start, int64_t(sp.start) + sp.len);
  }
  std::sort(ranges.begin(), ranges.end());
  for (size_t i = 1; i < ranges.size(); ++i)
    STATELM_CHECK(ranges[i].first >= ranges[i - 1].second, op, ": spans share tokens [", ranges[i].first, ", ",
                  ranges[i - 1].second, ")");
}

#define STATELM_CUDA_FAMILY_MISSING(family)                                                                  \
  fail(ErrorKind::Unsupported, #family ": this build has no CUDA kernels for it yet (src/backend/cuda/" #family \
       ".cu is not part of the build)")

// The sums of squares a RowRms divides by.
void check_row_rms(const RowRms& rms, int64_t t, const char* op) {
  check_view(rms.sumsq, {t, rms.sumsq.shape[1]}, op, "sumsq");
  STATELM_CHECK(rms.sumsq.dtype == DType::F32 && rms.sumsq.ndim == 2 && rms.sumsq.shape[1] >= 1 && rms.n > 0, op,
                ": sumsq must be float32 [", t, ", partials], got ", rms.sumsq.describe(), " (n ", rms.n, ")");
}
// The kernels' row scale of an optional RowRms (none where rms.sumsq is undefined), checked.
cuda::RowScale row_scale_if(const RowRms& rms, int64_t t, const char* op) {
  if (!rms.sumsq.defined()) return {};
  check_row_rms(rms, t, op);
  return cuda::row_scale_of(rms);
}

}  // namespace

// ---------------------------------------------------------------------------------------------

struct CudaBackend::Impl {
  cudaStream_t stream = nullptr;
  std::unique_ptr<cuda::Gemm> gemm;
  std::unique_ptr<Staging> batch_staging, ids_staging;
  std::unique_ptr<Arena> arena;
  std::unique_ptr<cuda::GraphRecorder> graphs;
  uint64_t allocations = 0;  // allocate() calls: with the arena's replacements, the memory epoch
  int32_t* moe_counts = nullptr;  // pinned
  size_t moe_counts_capacity = 0;
  // What the last prepare_batch uploaded, to recognise a prepared BatchView.
  const SeqSpan* prepared_host_spans = nullptr;
  size_t prepared_n_spans = 0;
  const SeqSpan* prepared_device_spans = nullptr;
  std::vector<char> pack;  // host bytes of spans + block tables
};

CudaBackend::CudaBackend(CudaBackendOptions o) : device_(o.device), dtype_(o.dtype), impl_(std::make_unique<Impl>()) {
  if (o.dtype != DType::F32 && o.dtype != DType::BF16)
    fail(ErrorKind::InvalidArgument, "CUDA backend dtype must be float32 or bfloat16, got ", dtype_name(o.dtype));
  const auto devices = cuda::list_devices();
  if (devices.empty()) fail(ErrorKind::Unsupported, "--device cuda: no CUDA device is visible (no driver or no GPU)");
  if (o.device < 0 || o.device >= int(devices.size()))
    fail(ErrorKind::InvalidArgument, "--device cuda:", o.device, ": only ", devices.size(), " CUDA device(s) visible");
  STATELM_CUDA_CHECK(cudaSetDevice(device_), "CUDA backend: select device ", device_);
  STATELM_CUDA_CHECK(cudaStreamCreateWithFlags(&impl_->stream, cudaStreamNonBlocking), "CUDA backend: stream");
  impl_->gemm = std::make_unique<cuda::Gemm>(impl_->stream);
  impl_->batch_staging = std::make_unique<Staging>(device_, impl_->stream);
  impl_->ids_staging = std::make_unique<Staging>(device_, impl_->stream);
  impl_->arena = std::make_unique<Arena>(device_);
  impl_->graphs = std::make_unique<cuda::GraphRecorder>(device_, impl_->stream);
}

CudaBackend::~CudaBackend() {
  if (impl_->stream) cudaStreamSynchronize(impl_->stream);
  impl_->graphs.reset();
  impl_->gemm.reset();
  impl_->batch_staging.reset();
  impl_->ids_staging.reset();
  impl_->arena.reset();
  if (impl_->moe_counts) cudaFreeHost(impl_->moe_counts);
  if (impl_->stream) cudaStreamDestroy(impl_->stream);
}

void CudaBackend::synchronize(const char* what) {
  STATELM_CUDA_CHECK(cudaStreamSynchronize(impl_->stream), what, ": a queued CUDA kernel failed");
}

CudaMemoryStats CudaBackend::memory_stats() const {
  const cuda::AllocatorStats a = cuda::allocator_stats(device_);
  CudaMemoryStats s;
  s.in_use = a.in_use;
  s.peak_in_use = a.peak_in_use;
  s.cached = a.cached;
  cudaMemGetInfo(&s.device_free, &s.device_total);
  return s;
}

size_t CudaBackend::available_memory() const {
  const CudaMemoryStats s = memory_stats();
  return s.device_free + s.cached;
}

// ---------------------------------------------------------------------------------------------
// Memory and transfers.

Buffer CudaBackend::allocate(size_t bytes) {
  ++impl_->allocations;
  Buffer b = cuda::device_alloc(device_, bytes);
  STATELM_CUDA_CHECK(cudaMemsetAsync(b.data(), 0, bytes, impl_->stream), "allocate: zero ", bytes, " bytes");
  return b;
}

void CudaBackend::upload(const Tensor& dst, const float* host) {
  STATELM_CHECK(transferable(dst), "upload: CUDA tensors are contiguous float32 or bfloat16 (or float16 state): ",
                dst.describe());
  const size_t n = size_t(dst.numel());
  if (n == 0) return;
  // Weights at load and snapshots restored: not on a step's path, so it waits for the copy and
  // the caller may reuse `host` at once.
  std::vector<uint16_t> bits;
  const void* src = host;
  if (dst.dtype != DType::F32) {  // round to nearest even, as torch (f16: ±inf past 65504)
    bits.resize(n);
    convert_from_f32(dst.dtype, host, bits.data(), n);
    src = bits.data();
  }
  STATELM_CUDA_CHECK(cudaMemcpyAsync(dst.data, src, dst.nbytes(), cudaMemcpyHostToDevice, impl_->stream), "upload ",
                     dst.describe());
  synchronize("upload");
}

void CudaBackend::download(const Tensor& src, float* host) {
  STATELM_CHECK(transferable(src), "download: CUDA tensors are contiguous float32 or bfloat16 (or float16 state): ",
                src.describe());
  const size_t n = size_t(src.numel());
  if (src.dtype == DType::F32) {
    if (n) STATELM_CUDA_CHECK(cudaMemcpyAsync(host, src.data, n * 4, cudaMemcpyDeviceToHost, impl_->stream), "download ",
                              src.describe());
    synchronize("download (a kernel queued before it failed)");
    return;
  }
  std::vector<uint16_t> bits(n);
  if (n) STATELM_CUDA_CHECK(cudaMemcpyAsync(bits.data(), src.data, n * 2, cudaMemcpyDeviceToHost, impl_->stream),
                            "download ", src.describe());
  synchronize("download (a kernel queued before it failed)");
  convert_to_f32(src.dtype, bits.data(), host, n);
}

void CudaBackend::fill_zero(const Tensor& t) {
  STATELM_CHECK(t.device == Device::Cuda && t.is_contiguous(), "fill_zero of ", t.describe());
  STATELM_CUDA_CHECK(cudaMemsetAsync(t.data, 0, t.nbytes(), impl_->stream), "fill_zero ", t.describe());
}

void CudaBackend::copy(const Tensor& dst, const Tensor& src) {
  STATELM_CHECK(dst.device == Device::Cuda && src.device == Device::Cuda && dst.is_contiguous() && src.is_contiguous(),
                "copy of a strided or host view ", dst.describe(), " <- ", src.describe());
  STATELM_CHECK(dst.dtype == src.dtype && dst.ndim == src.ndim && std::equal(dst.shape, dst.shape + dst.ndim, src.shape),
                "copy between different tensors ", dst.describe(), " <- ", src.describe());
  if (dst.data != src.data && dst.nbytes())
    STATELM_CUDA_CHECK(cudaMemcpyAsync(dst.data, src.data, dst.nbytes(), cudaMemcpyDeviceToDevice, impl_->stream),
                       "copy ", dst.describe(), " <- ", src.describe());
}

// Spans, then block tables (both int32-based), in one pinned copy.
void CudaBackend::prepare_batch(BatchView& b) {
  const size_t span_bytes = b.spans.size() * sizeof(SeqSpan);
  const size_t table_entries = b.block_tables ? b.spans.size() * size_t(std::max(b.max_blocks_per_seq, 0)) : 0;
  const size_t table_at = (span_bytes + 15) / 16 * 16;
  const size_t total = table_at + table_entries * sizeof(int32_t);
  auto& pack = impl_->pack;
  pack.assign(total, 0);
  if (span_bytes) std::memcpy(pack.data(), b.spans.data(), span_bytes);
  if (impl_->graphs->recording()) {  // the graph's own input region, refilled at each replay
    b.device_spans = impl_->graphs->place_spans(b.spans);
    b.device_block_tables = impl_->graphs->place_tables(std::span(b.block_tables, table_entries));
  } else {
    if (table_entries) std::memcpy(pack.data() + table_at, b.block_tables, table_entries * sizeof(int32_t));
    char* dev = static_cast<char*>(impl_->batch_staging->put(pack.data(), total, "prepare_batch"));
    b.device_spans = span_bytes ? reinterpret_cast<const SeqSpan*>(dev) : nullptr;
    b.device_block_tables = table_entries ? reinterpret_cast<const int32_t*>(dev + table_at) : nullptr;
  }
  impl_->prepared_host_spans = b.spans.data();
  impl_->prepared_n_spans = b.spans.size();
  impl_->prepared_device_spans = b.device_spans;
}

const BatchView& CudaBackend::prepared(const BatchView& batch, BatchView& tmp) {
  if (batch.device_spans && batch.device_spans == impl_->prepared_device_spans &&
      batch.spans.data() == impl_->prepared_host_spans && batch.spans.size() == impl_->prepared_n_spans)
    return batch;
  tmp = batch;
  prepare_batch(tmp);
  return tmp;
}

// ---------------------------------------------------------------------------------------------
// Graphs (cuda_graphs.h).

void CudaBackend::begin_graph(size_t n_ids, size_t n_spans, size_t table_entries) {
  impl_->graphs->begin(n_ids, n_spans, table_entries);
}
int CudaBackend::end_graph() { return impl_->graphs->end(); }
void CudaBackend::abort_graph() { impl_->graphs->abort(); }
void CudaBackend::replay_graph(int graph, std::span<const int32_t> ids, std::span<const SeqSpan> spans,
                               std::span<const int32_t> block_tables) {
  impl_->graphs->replay(graph, ids, spans, block_tables);
}
void CudaBackend::drop_graphs() { impl_->graphs->clear(); }
uint64_t CudaBackend::memory_epoch() const { return impl_->allocations + impl_->arena->replaced(); }

// ---------------------------------------------------------------------------------------------
// Non-SSM ops.

void CudaBackend::embed(std::span<const int32_t> ids, const Tensor& table, const Tensor& out) {
  const int64_t n = int64_t(ids.size()), d = table.shape[1];
  check_view(table, {table.shape[0], d}, "embed", "table");
  check_float(table, "embed", "table");
  check_act(out, table.dtype, {n, d}, "embed", "out");
  for (int64_t t = 0; t < n; ++t)
    STATELM_CHECK(ids[size_t(t)] >= 0 && ids[size_t(t)] < table.shape[0], "embed: token id ", ids[size_t(t)],
                  " outside the table ", table.describe());
  if (n == 0) return;
  auto* dev_ids = impl_->graphs->recording()
                      ? impl_->graphs->place_ids(ids)
                      : static_cast<const int32_t*>(impl_->ids_staging->put(ids.data(), ids.size_bytes(), "embed ids"));
  cuda::embed(dev_ids, table, out, impl_->stream);
}

void CudaBackend::rms_norm(const Tensor& x, const Tensor& weight, float eps, const Tensor& out) {
  const int64_t n = x.shape[0], d = x.shape[1];
  check_view(x, {n, d}, "rms_norm", "x");
  check_float(x, "rms_norm", "x");
  check_act(out, x.dtype, {n, d}, "rms_norm", "out");
  check_param(weight, {d}, "rms_norm", "weight");
  cuda::rms_norm(x, weight, eps, out, impl_->stream);
}

void CudaBackend::add_rms_norm(const Tensor& residual, const Tensor& x, const Tensor& weight, float eps,
                               const Tensor& out) {
  const int64_t n = residual.shape[0], d = residual.shape[1];
  check_view(residual, {n, d}, "add_rms_norm", "residual");
  check_float(residual, "add_rms_norm", "residual");
  check_act(x, residual.dtype, {n, d}, "add_rms_norm", "x");
  check_act(out, residual.dtype, {n, d}, "add_rms_norm", "out");
  check_param(weight, {d}, "add_rms_norm", "weight");
  cuda::add_rms_norm(residual, x, weight, eps, out, impl_->stream);
}

void CudaBackend::gated_rms_norm(const Tensor& y, const Tensor& z, const Tensor& weight, int64_t group_size, float eps,
                                 const Tensor& out) {
  const int64_t n = y.shape[0], d = y.shape[1];
  check_view(y, {n, d}, "gated_rms_norm", "y");
  check_float(y, "gated_rms_norm", "y");
  check_act(z, y.dtype, {n, d}, "gated_rms_norm", "z");
  check_act(out, y.dtype, {n, d}, "gated_rms_norm", "out");
  check_param(weight, {d}, "gated_rms_norm", "weight");
  STATELM_CHECK(group_size > 0 && d % group_size == 0 && d / group_size <= 65535, "gated_rms_norm: group ", group_size,
                " of ", d);
  cuda::gated_rms_norm(y, z, weight, group_size, eps, out, impl_->stream);
}

void CudaBackend::matmul(const Tensor& x, const Tensor& w, const Tensor& bias, const Tensor& out) {
  check_matmul(x, w, bias, out, "matmul");
  impl_->gemm->run(x, w, bias, out);
}

void CudaBackend::matmul_row_rms(const Tensor& x, const Tensor& w, const Tensor& bias, const RowRms& rms,
                                 const Tensor& out) {
  const char* op = "matmul_row_rms";
  check_matmul(x, w, bias, out, op);
  check_row_rms(rms, x.shape[0], op);
  impl_->gemm->run(x, w, bias, out, op, cuda::row_scale_of(rms));
}

// The product into the residual in the skinny kernel's epilogue; elsewhere (batches the
// tensor-core kernel or cuBLASLt take) the product, then one pass that adds and sums squares.
void CudaBackend::matmul_residual(const Tensor& x, const Tensor& w, const Tensor& bias, const RowRms& rms,
                                  const ResidualAdd& add, const Tensor& out) {
  const char* op = "matmul_residual";
  const int64_t t = x.shape[0], n = w.shape[0];
  check_matmul(x, w, bias, out, op);
  check_act(add.residual, x.dtype, {t, n}, op, "residual");
  check_act(add.normed, x.dtype, {t, n}, op, "normed");
  check_param(add.weight, {n}, op, "norm weight");
  check_view(add.sumsq, {t, residual_sumsq_partials(n)}, op, "sumsq");
  STATELM_CHECK(add.sumsq.dtype == DType::F32, op, ": sumsq must be float32, got ", add.sumsq.describe());
  const cuda::RowScale scale = row_scale_if(rms, t, op);
  const cuda::ResidualSums sums{add.sumsq.ptr<float>(), add.sumsq.stride[0], add.weight.ptr<const float>(),
                                add.normed.data, add.normed.stride[0]};
  if (impl_->gemm->run_residual(x, w, bias, scale, add.residual, sums)) return;
  impl_->gemm->run(x, w, bias, out, op, scale);
  cuda::add_sum_squares(add.residual, out, add.weight, add.normed, add.sumsq, impl_->stream);
}

int64_t CudaBackend::residual_sumsq_partials(int64_t n) const { return cuda::skinny_gemm_blocks(n); }

// Where the CUDA-core skinny kernel runs the decode step's linear layers: one token (bf16 batches
// of 2-16 go to the tensor-core kernel, which has no norm or residual epilogue: split there, the
// norm would cost two passes instead of one), fp32 rows up to its limit; rows of 16-byte packs.
bool CudaBackend::splits_block_norms(int64_t tokens, int64_t d_model) const {
  const int64_t es = int64_t(dtype_size(dtype_));
  const bool skinny = tokens == 1 || (dtype_ == DType::F32 && tokens <= cuda::kSkinnyMaxTokens);
  return skinny && tokens >= 1 && (d_model * es) % 16 == 0;
}

int64_t CudaBackend::ssd_gate_partials(int64_t heads, int64_t head_dim) const {
  return cuda::ssd_gate_partials(heads, head_dim);
}

void CudaBackend::swiglu(const Tensor& gate_up, const Tensor& out) {
  const int64_t n = out.shape[0], f = out.shape[1];
  check_view(out, {n, f}, "swiglu", "out");
  check_float(out, "swiglu", "out");
  check_act(gate_up, out.dtype, {n, 2 * f}, "swiglu", "gate_up");
  cuda::swiglu(gate_up, out, impl_->stream);
}

// One token (and fp32 rows up to the skinny kernel's limit): the weight-streaming kernel applies
// SwiGLU to its gate and up rows in its epilogue, and the product never goes to memory. Batches
// that the tensor-core skinny kernel or cuBLASLt take run the product and the swiglu kernel.
void CudaBackend::matmul_swiglu(const Tensor& x, const Tensor& w, const Tensor& bias, const RowRms& rms,
                                const Tensor& gate_up, const Tensor& out) {
  const int64_t t = x.shape[0], f = out.shape[1];
  check_view(out, {t, f}, "matmul_swiglu", "out");
  check_act(gate_up, out.dtype, {t, 2 * f}, "matmul_swiglu", "gate_up");
  check_matmul(x, w, bias, gate_up, "matmul_swiglu");
  if (impl_->gemm->run_swiglu(x, w, bias, row_scale_if(rms, t, "matmul_swiglu"), out)) return;
  Backend::matmul_swiglu(x, w, bias, rms, gate_up, out);  // the product, then the swiglu kernel
}

void CudaBackend::add(const Tensor& acc, const Tensor& x) {
  const int64_t n = acc.shape[0], d = acc.shape[1];
  check_view(acc, {n, d}, "add", "acc");
  check_float(acc, "add", "acc");
  check_act(x, acc.dtype, {n, d}, "add", "x");
  cuda::add(acc, x, impl_->stream);
}

void CudaBackend::moe(const MoeParams& p) {
  const int64_t n = p.x.shape[0], d = p.x.shape[1], e = p.router.shape[0], f = p.gate_up.shape[1] / 2;
  check_view(p.x, {n, d}, "moe", "x");
  check_float(p.x, "moe", "x");
  check_act(p.out, p.x.dtype, {n, d}, "moe", "out");
  check_act(p.router, p.x.dtype, {e, d}, "moe", "router");
  check_act(p.gate_up, p.x.dtype, {e, 2 * f, d}, "moe", "gate_up");
  check_act(p.down, p.x.dtype, {e, d, f}, "moe", "down");
  STATELM_CHECK(p.gate_up.is_contiguous() && p.down.is_contiguous(), "moe: expert weights must be contiguous");
  STATELM_CHECK(p.top_k >= 1 && p.top_k <= e, "moe: top_k ", p.top_k, " of ", e, " experts");
  if (impl_->moe_counts_capacity < size_t(e)) {
    if (impl_->moe_counts) cudaFreeHost(impl_->moe_counts);
    impl_->moe_counts = nullptr;
    STATELM_CUDA_CHECK(cudaMallocHost(&impl_->moe_counts, size_t(e) * sizeof(int32_t)), "moe: pinned counts");
    impl_->moe_counts_capacity = size_t(e);
  }
  impl_->arena->reset();
  cuda::moe(p, *impl_->gemm, *impl_->arena, impl_->moe_counts, impl_->stream);
}

// ---------------------------------------------------------------------------------------------
// SSM and attention ops: checks here, kernels behind the launchers of cuda_kernels.h.

namespace {
void check_conv1d(const Conv1dParams& p, const BatchView& batch) {
  const int64_t T = p.x.shape[0], C = p.x.shape[1], K = p.weight.shape[1];
  check_view(p.x, {T, C}, "conv1d", "x");
  check_float(p.x, "conv1d", "x");
  check_act(p.out, p.x.dtype, {T, C}, "conv1d", "out");
  check_param(p.weight, {C, K}, "conv1d", "weight", true);
  if (p.bias.defined()) check_param(p.bias, {C}, "conv1d", "bias", true);
  check_state(p.state, {p.state.shape[0], C, K - 1}, "conv1d");
  check_spans(batch, T, p.state.shape[0], "conv1d");
}
}  // namespace

void CudaBackend::conv1d(const Conv1dParams& p, const BatchView& batch) {
  check_conv1d(p, batch);
  const int64_t T = p.x.shape[0];
  if (T == 0) return;
  BatchView tmp;
  [[maybe_unused]] const BatchView& b = prepared(batch, tmp);
#ifdef STATELM_CUDA_MISSING_CONV1D
  STATELM_CUDA_FAMILY_MISSING(conv1d);
#else
  cuda::conv1d(p, b, impl_->stream);
#endif
}

// A decode step (one token a span, spans in token order) whose conv reads a column range of the
// product, with an fp32 window of kConvStepTaps − 1 inputs: the conv runs in the product's
// epilogue where the CUDA-core skinny kernel streams the weights (Gemm::run_conv), else after it.
void CudaBackend::matmul_conv1d(const Tensor& x, const Tensor& w, const Tensor& bias, const RowRms& rms,
                                const Tensor& out, const Conv1dParams& conv, const BatchView& batch) {
  const char* op = "matmul_conv1d";
  check_matmul(x, w, bias, out, op);
  check_conv1d(conv, batch);
  const int64_t T = x.shape[0], C = conv.x.shape[1], es = int64_t(dtype_size(out.dtype));
  const int64_t begin = (static_cast<const char*>(conv.x.data) - static_cast<const char*>(out.data)) / es;
  // Token t must be span t's (as Forward lays a decode step out): the kernel finds a token's slot so.
  bool in_order = T == int64_t(batch.spans.size());
  for (int64_t t = 0; in_order && t < T; ++t) in_order = batch.spans[size_t(t)].start == t;
  const bool fusable = T > 0 && in_order && conv.state.dtype == DType::F32 &&
                       conv.weight.shape[1] == cuda::kConvStepTaps && conv.x.dtype == out.dtype &&
                       conv.x.stride[0] == out.stride[0] && begin >= 0 && begin + C <= out.shape[1] &&
                       static_cast<const char*>(out.data) + begin * es == conv.x.data && conv.out.dtype == out.dtype;
  if (fusable) {
    BatchView tmp;
    const BatchView& b = prepared(batch, tmp);
    const cuda::ConvStep step{int(begin),
                              int(C),
                              cuda::param_of(conv.weight, op, "conv weight"),
                              cuda::param_of(conv.bias, op, "conv bias"),
                              conv.weight.stride[0],
                              conv.state.ptr<float>(),
                              conv.state.stride[0],
                              conv.state.stride[1],
                              conv.out.data,
                              conv.out.stride[0],
                              b.device_spans,
                              conv.silu};
    if (impl_->gemm->run_conv(x, w, bias, row_scale_if(rms, T, op), out, step, op)) return;
  }
  Backend::matmul_conv1d(x, w, bias, rms, out, conv, batch);
}

void CudaBackend::selective_scan(const SelectiveScanParams& p, const BatchView& batch) {
  const int64_t T = p.u.shape[0], Di = p.u.shape[1], N = p.A.shape[1];
  const char* op = "selective_scan";
  check_view(p.u, {T, Di}, op, "u");
  check_float(p.u, op, "u");
  const DType a = p.u.dtype;
  check_act(p.delta, a, {T, Di}, op, "delta");
  check_act(p.B, a, {T, N}, op, "B");
  check_act(p.C, a, {T, N}, op, "C");
  if (p.z.defined()) check_act(p.z, a, {T, Di}, op, "z");
  check_act(p.out, a, {T, Di}, op, "out");
  check_param(p.delta_bias, {Di}, op, "delta_bias", true);
  check_param(p.A, {Di, N}, op, "A", true);
  check_param(p.D, {Di}, op, "D", true);
  check_state(p.state, {p.state.shape[0], Di, N}, op);
  check_spans(batch, T, p.state.shape[0], op);
  if (T == 0) return;
  BatchView tmp;
  [[maybe_unused]] const BatchView& b = prepared(batch, tmp);
#ifdef STATELM_CUDA_MISSING_SELECTIVE_SCAN
  STATELM_CUDA_FAMILY_MISSING(selective_scan);
#else
  impl_->arena->reset();
  cuda::selective_scan(p, b, *impl_->arena, impl_->stream);
#endif
}

void CudaBackend::ssd(const SsdParams& p, const BatchView& batch) {
  const int64_t T = p.x.shape[0], H = p.x.shape[1], P = p.x.shape[2], G = p.B.shape[1], N = p.B.shape[2];
  const char* op = "ssd";
  check_view(p.x, {T, H, P}, op, "x");
  check_float(p.x, op, "x");
  const DType a = p.x.dtype;
  check_act(p.dt, a, {T, H}, op, "dt");
  check_act(p.B, a, {T, G, N}, op, "B");
  check_act(p.C, a, {T, G, N}, op, "C");
  check_act(p.out, a, {T, H, P}, op, "out");
  check_param(p.dt_bias, {H}, op, "dt_bias", true);
  check_param(p.A, {H}, op, "A", true);
  check_param(p.D, {H}, op, "D", true);
  check_state(p.state, {p.state.shape[0], H, P, N}, op);
  STATELM_CHECK(G > 0 && H % G == 0, op, ": ", H, " heads in ", G, " groups");
  STATELM_CHECK(p.chunk_size > 0, op, ": chunk size ", p.chunk_size);
  if (p.gate.z.defined()) {
    check_act(p.gate.z, a, {T, H * P}, op, "gate z");
    check_param(p.gate.weight, {H * P}, op, "gate weight");
    check_view(p.gate.sumsq, {T, cuda::ssd_gate_partials(H, P)}, op, "gate sumsq");
  }
  check_spans(batch, T, p.state.shape[0], op);
  if (T == 0) return;
  BatchView tmp;
  [[maybe_unused]] const BatchView& b = prepared(batch, tmp);
#ifdef STATELM_CUDA_MISSING_SSD
  STATELM_CUDA_FAMILY_MISSING(ssd);
#else
  impl_->arena->reset();
  cuda::ssd(p, b, *impl_->arena, impl_->stream);
#endif
}

void CudaBackend::rope(const RopeParams& p, const BatchView& batch) {
  const int64_t T = p.q.shape[0], Hq = p.q.shape[1], Dh = p.q.shape[2], Hkv = p.k.shape[1];
  check_view(p.q, {T, Hq, Dh}, "rope", "q");
  check_float(p.q, "rope", "q");
  check_act(p.k, p.q.dtype, {T, Hkv, Dh}, "rope", "k");
  check_rope(p.rope, Dh, "rope");
  check_spans(batch, T, -1, "rope");
  if (T == 0 || p.rope.kind == RopeKind::None) return;
  BatchView tmp;
  [[maybe_unused]] const BatchView& b = prepared(batch, tmp);
#ifdef STATELM_CUDA_MISSING_ROPE
  STATELM_CUDA_FAMILY_MISSING(rope);
#else
  cuda::rope(p, b, impl_->stream);
#endif
}

void CudaBackend::attention(const AttentionParams& p, const BatchView& batch) {
  const int64_t T = p.q.shape[0], Hq = p.q.shape[1], Dh = p.q.shape[2], Hkv = p.k.shape[1];
  const char* op = "attention";
  check_view(p.q, {T, Hq, Dh}, op, "q");
  check_float(p.q, op, "q");
  check_act(p.k, p.q.dtype, {T, Hkv, Dh}, op, "k");
  check_act(p.v, p.q.dtype, {T, Hkv, Dh}, op, "v");
  check_act(p.out, p.q.dtype, {T, Hq, Dh}, op, "out");
  const int64_t n_blocks = p.k_cache.shape[0], bs = p.k_cache.shape[1];
  check_view(p.k_cache, {n_blocks, bs, Hkv, Dh}, op, "k_cache");
  check_view(p.v_cache, {n_blocks, bs, Hkv, Dh}, op, "v_cache");
  check_float(p.k_cache, op, "k_cache");
  STATELM_CHECK(p.v_cache.dtype == p.k_cache.dtype, op, ": k_cache and v_cache dtypes differ");
  STATELM_CHECK(Hkv > 0 && Hq % Hkv == 0, op, ": ", Hq, " query heads over ", Hkv, " KV heads");
  STATELM_CHECK(batch.block_tables && batch.block_size == bs && batch.max_blocks_per_seq > 0, op,
                ": the batch needs block tables of block size ", bs);
  check_rope(p.rope, Dh, op);
  check_spans(batch, T, -1, op);
  for (const SeqSpan& sp : batch.spans)
    STATELM_CHECK(int64_t(sp.pos) + sp.len <= int64_t(batch.max_blocks_per_seq) * bs, op, ": span at ", sp.pos, "+",
                  sp.len, " beyond its ", batch.max_blocks_per_seq, " blocks");
  if (T == 0) return;
  BatchView tmp;
  [[maybe_unused]] const BatchView& b = prepared(batch, tmp);
#ifdef STATELM_CUDA_MISSING_ATTENTION
  STATELM_CUDA_FAMILY_MISSING(attention);
#else
  impl_->arena->reset();
  cuda::attention(p, b, *impl_->arena, impl_->stream);
#endif
}

}  // namespace statelm
