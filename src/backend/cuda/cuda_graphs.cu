#include "backend/cuda/cuda_graphs.h"

#include <cstring>

#include "backend/cuda/cuda_allocator.h"
#include "backend/cuda/cuda_common.h"

namespace statelm::cuda {

namespace {
size_t align16(size_t n) { return (n + 15) / 16 * 16; }
}  // namespace

// One recorded forward and its input region: [ids | spans | block tables], each 16-byte aligned,
// in pinned host memory and in device memory at fixed addresses.
struct GraphRecorder::Graph {
  cudaGraphExec_t exec = nullptr;
  size_t n_ids = 0, n_spans = 0, n_tables = 0;
  size_t spans_at = 0, tables_at = 0, bytes = 0;
  char* host = nullptr;
  Buffer dev;
  cudaEvent_t copied = nullptr;  // the last copy out of `host` (refilled only after it finished)
  bool copy_pending = false;

  ~Graph() {
    if (exec) cudaGraphExecDestroy(exec);
    if (copied) cudaEventDestroy(copied);
    if (host) cudaFreeHost(host);
  }
};

GraphRecorder::GraphRecorder(int device, cudaStream_t stream) : device_(device), stream_(stream) {}

GraphRecorder::~GraphRecorder() {
  abort();
  cudaStreamSynchronize(stream_);  // replays may still read the regions
}

void GraphRecorder::begin(size_t n_ids, size_t n_spans, size_t table_entries) {
  STATELM_CHECK(!recording_, "graph recorder: a recording is already open");
  auto g = std::make_unique<Graph>();
  g->n_ids = n_ids;
  g->n_spans = n_spans;
  g->n_tables = table_entries;
  g->spans_at = align16(n_ids * sizeof(int32_t));
  g->tables_at = g->spans_at + align16(n_spans * sizeof(SeqSpan));
  g->bytes = std::max<size_t>(g->tables_at + table_entries * sizeof(int32_t), 16);
  // Everything the capture needs is allocated before it starts: no allocation while recording.
  STATELM_CUDA_CHECK(cudaMallocHost(reinterpret_cast<void**>(&g->host), g->bytes), "graph inputs: ", g->bytes,
                     " pinned bytes");
  std::memset(g->host, 0, g->bytes);
  g->dev = device_alloc(device_, g->bytes);
  STATELM_CUDA_CHECK(cudaEventCreateWithFlags(&g->copied, cudaEventDisableTiming), "graph inputs: event");
  // Thread-local mode: another thread's CUDA calls (a server thread uploading a snapshot) do not
  // break this capture, and this thread's calls that would wait for the host fail it.
  STATELM_CUDA_CHECK(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal), "graph: begin capture");
  recording_ = std::move(g);
}

const int32_t* GraphRecorder::place_ids(std::span<const int32_t> ids) {
  STATELM_CHECK(recording_ && ids.size() == recording_->n_ids, "graph recorder: ", ids.size(), " token ids, recording ",
                recording_ ? recording_->n_ids : 0);
  std::memcpy(recording_->host, ids.data(), ids.size_bytes());
  return reinterpret_cast<const int32_t*>(recording_->dev.data());
}

const SeqSpan* GraphRecorder::place_spans(std::span<const SeqSpan> spans) {
  STATELM_CHECK(recording_ && spans.size() == recording_->n_spans, "graph recorder: ", spans.size(),
                " spans, recording ", recording_ ? recording_->n_spans : 0);
  std::memcpy(recording_->host + recording_->spans_at, spans.data(), spans.size_bytes());
  return reinterpret_cast<const SeqSpan*>(static_cast<char*>(recording_->dev.data()) + recording_->spans_at);
}

const int32_t* GraphRecorder::place_tables(std::span<const int32_t> tables) {
  STATELM_CHECK(recording_ && tables.size() == recording_->n_tables, "graph recorder: ", tables.size(),
                " block-table entries, recording ", recording_ ? recording_->n_tables : 0);
  if (tables.empty()) return nullptr;
  std::memcpy(recording_->host + recording_->tables_at, tables.data(), tables.size_bytes());
  return reinterpret_cast<const int32_t*>(static_cast<char*>(recording_->dev.data()) + recording_->tables_at);
}

int GraphRecorder::end() {
  STATELM_CHECK(recording_, "graph recorder: end without begin");
  std::unique_ptr<Graph> g = std::move(recording_);
  cudaGraph_t graph = nullptr;
  const cudaError_t err = cudaStreamEndCapture(stream_, &graph);
  if (err != cudaSuccess || !graph) {
    cudaGetLastError();  // a failed capture leaves its error behind; the stream itself is fine
    if (graph) cudaGraphDestroy(graph);
    return -1;
  }
  const cudaError_t inst = cudaGraphInstantiate(&g->exec, graph, 0);
  cudaGraphDestroy(graph);
  if (inst != cudaSuccess) {
    cudaGetLastError();
    g->exec = nullptr;
    return -1;
  }
  graphs_.push_back(std::move(g));
  return int(graphs_.size()) - 1;
}

void GraphRecorder::abort() {
  if (!recording_) return;
  cudaGraph_t graph = nullptr;
  cudaStreamEndCapture(stream_, &graph);
  if (graph) cudaGraphDestroy(graph);
  cudaGetLastError();
  recording_.reset();
}

void GraphRecorder::fill(Graph& g, std::span<const int32_t> ids, std::span<const SeqSpan> spans,
                         std::span<const int32_t> tables) {
  STATELM_CHECK(ids.size() == g.n_ids && spans.size() == g.n_spans && tables.size() == g.n_tables,
                "graph replay: inputs of ", ids.size(), " ids, ", spans.size(), " spans, ", tables.size(),
                " table entries for a graph recorded with ", g.n_ids, ", ", g.n_spans, ", ", g.n_tables);
  if (g.copy_pending) STATELM_CUDA_CHECK(cudaEventSynchronize(g.copied), "graph replay: previous input copy");
  g.copy_pending = false;
  std::memcpy(g.host, ids.data(), ids.size_bytes());
  std::memcpy(g.host + g.spans_at, spans.data(), spans.size_bytes());
  if (!tables.empty()) std::memcpy(g.host + g.tables_at, tables.data(), tables.size_bytes());
}

void GraphRecorder::replay(int id, std::span<const int32_t> ids, std::span<const SeqSpan> spans,
                           std::span<const int32_t> tables) {
  STATELM_CHECK(id >= 0 && size_t(id) < graphs_.size(), "graph replay: no graph ", id);
  Graph& g = *graphs_[size_t(id)];
  fill(g, ids, spans, tables);
  STATELM_CUDA_CHECK(cudaMemcpyAsync(g.dev.data(), g.host, g.bytes, cudaMemcpyHostToDevice, stream_),
                     "graph replay: inputs");
  STATELM_CUDA_CHECK(cudaEventRecord(g.copied, stream_), "graph replay: inputs");
  g.copy_pending = true;
  STATELM_CUDA_CHECK(cudaGraphLaunch(g.exec, stream_), "graph replay: launch of a ", g.n_spans, "-sequence forward");
}

void GraphRecorder::clear() {
  abort();
  // Replays queued before may still run: wait for them before their regions are freed.
  STATELM_CUDA_CHECK(cudaStreamSynchronize(stream_), "graph: drop graphs");
  graphs_.clear();
}

}  // namespace statelm::cuda
