// Snapshot / restore of one sequence: its whole state (every Mamba layer's conv + SSM state in
// its slot, the K/V of its first n_tokens positions in every attention layer) and its token ids
// as one versioned, checksummed blob. Restoring continues generation exactly as if the sequence
// had never left the runner, in any free slot and any KV blocks.
//
// Blob: one zstd frame (content size declared, content checksum on) whose content is, little
// endian, version 2:
//   [0]  "STLMSNAP"                       magic
//   [8]  u32 format version               kSnapshotVersion
//   [12] u32 header bytes                 offset of the first section (a multiple of 8)
//   [16] str model fingerprint            u32 length + bytes (ModelRunner::fingerprint())
//        str state dtype                  u32 length + bytes ("float32", "bfloat16" or
//                                         "float16": the Mamba state's, RunnerOptions::
//                                         state_dtype; the KV cache's for a model without
//                                         Mamba layers)
//        i64 n_tokens                     positions held by the state
//        i64 first_id                     position of the first id kept (version 2; 0 in 1)
//        u64 n_ids, i32[n_ids] token ids  the sequence's ids of positions first_id onwards;
//                                         first_id <= n_tokens <= first_id + n_ids, and ids past
//                                         n_tokens are pending (sampled, not yet fed)
//        u32 n_layers, then per layer     u8 mixer kind (MixerKind), u64 bytes of section a,
//                                         u64 bytes of section b; zero padding to header bytes
//   then per layer, in order:             Mamba: a = conv state [C, K-1], b = SSM state, in
//                                         the state dtype; attention: a = K [n_tokens, Hkv, Dh],
//                                         b = V (same), in the KV dtype (the compute dtype)
// KV is stored by position, not by block, so a blob restores into any KV block size. Nothing
// read from a blob is trusted: zstd detects truncation and corruption, and every size in the
// header is checked against the model before a byte of state is copied. Version 1 blobs (every
// id kept, no first_id) are still read.
//
// Ids: a snapshot keeps at most the last kSnapshotKeptIds of them (and every pending one). The
// state needs none — a Mamba state is the whole past — so a session that keeps taking input for
// hours stays the same size; the ids kept serve the repetition penalty of the next turns (its
// window: exact for conversations up to that length) and the detokenizer's replay.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "runtime/model_runner.h"

namespace statelm {

inline constexpr uint32_t kSnapshotVersion = 2;
inline constexpr int64_t kSnapshotKeptIds = 1 << 16;

// What a snapshot says about itself (no model needed to read it).
struct SnapshotHeader {
  uint32_t version = 0;
  std::string fingerprint;  // of the model it was taken from
  std::string state_dtype;  // dtype of that runner's state cache, e.g. "float32"
  int64_t n_tokens = 0;     // positions in the state
  int64_t first_id = 0;     // position of tokens[0]: the ids before it were not kept
  std::vector<int32_t> tokens;  // the sequence's ids from first_id on; past n_tokens they are pending
  int64_t pending() const { return first_id + int64_t(tokens.size()) - n_tokens; }
  int64_t state_bytes = 0;      // bytes of state in its sections, uncompressed (as the header claims)
};

// Both calls read or write the runner's caches: make them where the runner is stepped (the
// engine thread), never while a step is running.

// Serialises `seq`'s state. `tokens` are the sequence's ids from position `first_id` on: up to
// the n_tokens it was fed, then any pending ones (e.g. the last sampled token, never fed);
// Error(InvalidArgument) when they do not reach n_tokens or start past it. Only the last
// kSnapshotKeptIds ids (at least the pending ones) are kept.
std::string snapshot_sequence(ModelRunner& runner, const Sequence& seq, std::span<const int32_t> tokens,
                              int64_t first_id = 0);

// A new sequence holding the blob's state: it takes a free slot (and KV blocks for n_tokens),
// Error(OutOfMemory) when none is free. Error(InvalidArgument) for a blob of another model or
// state dtype, or more tokens than the runner's context; Error(Format) for an empty, truncated,
// corrupted or foreign blob, or another format version. Nothing is taken when it throws.
// `tokens` (optional) receives the blob's token ids, `first_id` the position of the first.
Sequence restore_sequence(ModelRunner& runner, std::string_view blob, std::vector<int32_t>* tokens = nullptr,
                          int64_t* first_id = nullptr);

// The empty state (zeroed slot, no tokens), as a blob: restoring it is opening a fresh
// sequence. What a new server session starts from.
std::string empty_snapshot(ModelRunner& runner);

// Everything restore_sequence() checks — format, zstd checksum, model, dtype, every size —
// without restoring: Error(Format) / Error(InvalidArgument) as restore_sequence(), else the
// header. Neither this nor empty_snapshot() touches the runner's caches (only its fingerprint
// and shapes, fixed at load), so both may run on any thread while the engine steps.
SnapshotHeader check_snapshot(ModelRunner& runner, std::string_view blob);

// The largest blob a snapshot of up to n_tokens positions and ids can be, whatever its
// contents: what a request body limit must allow for a state to be imported. Shapes only.
uint64_t max_snapshot_bytes(ModelRunner& runner, int64_t n_tokens);

// Reads only the header (decompressing no further), e.g. to size a runner before restoring or
// to index a session store. The checksum covers the whole frame, so only restore_sequence()
// verifies it. Error(Format) as restore_sequence().
SnapshotHeader read_snapshot_header(std::string_view blob);

}  // namespace statelm
