// CUDA graphs of whole forwards: a decode step of a 64-layer model queues ~400 kernels, and
// launching them one by one costs more than the kernels themselves at batch 1 (each launch is
// a few microseconds of host and driver time; the step's weights take ~1.3 ms to read). A
// recorded graph replays all of them with one launch.
//
// What may change between replays is only what the forward reads from the host: the token ids,
// the spans (slot, position) and the block tables. While recording, CudaBackend's embed() and
// prepare_batch() put those into this recorder's input region (place_*) instead of the staging
// buffers, so the recorded kernels read them from fixed device addresses; replay() refills the
// region (one pinned host-to-device copy) and launches the graph. Everything else a recorded
// kernel touches (weights, caches, the forward's scratch, launcher scratch) must stay where it
// was: the caller drops its graphs when the backend's memory_epoch() moves.
//
// Launch shapes are recorded too, so a graph is only valid for batches of the shape it was
// recorded with (ModelRunner keys graphs by batch size, key capacity and block-table width).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "core/tensor.h"
#include "ops/ops.h"

namespace statelm::cuda {

class GraphRecorder {
 public:
  GraphRecorder(int device, cudaStream_t stream);
  ~GraphRecorder();
  GraphRecorder(const GraphRecorder&) = delete;
  GraphRecorder& operator=(const GraphRecorder&) = delete;

  bool recording() const { return recording_ != nullptr; }
  // Starts capturing the stream's work for a forward of n_ids tokens in n_spans spans with
  // table_entries block-table entries.
  void begin(size_t n_ids, size_t n_spans, size_t table_entries);
  // While recording: copies the host inputs into the region, returns their device addresses.
  const int32_t* place_ids(std::span<const int32_t> ids);
  const SeqSpan* place_spans(std::span<const SeqSpan> spans);
  const int32_t* place_tables(std::span<const int32_t> tables);
  // Ends the capture: the graph's id, or -1 when the capture failed (an op that cannot be
  // recorded, e.g. one that waits for the host); the stream is usable either way.
  int end();
  // Ends a capture abandoned by an exception.
  void abort();
  // Runs graph `id` on new inputs of the recorded sizes.
  void replay(int id, std::span<const int32_t> ids, std::span<const SeqSpan> spans, std::span<const int32_t> tables);
  void clear();
  size_t size() const { return graphs_.size(); }

 private:
  struct Graph;
  void fill(Graph& g, std::span<const int32_t> ids, std::span<const SeqSpan> spans, std::span<const int32_t> tables);

  int device_;
  cudaStream_t stream_;
  std::unique_ptr<Graph> recording_;
  std::vector<std::unique_ptr<Graph>> graphs_;
};

}  // namespace statelm::cuda
