// Snapshot / restore (src/runtime/snapshot.h): a restored sequence continues exactly as if it had
// never been interrupted (same greedy tokens, bitwise-equal logits on the batch-invariant CPU
// engine) in another slot and other KV blocks, and every bad blob (another model, truncated,
// corrupted, another version, empty) is refused with a clear error and nothing leaked.
#include <gtest/gtest.h>
#include <zstd.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "backend/cpu/cpu_backend.h"
#include "core/error.h"
#include "runtime/model_runner.h"
#include "runtime/snapshot.h"
#include "unit/test_support.h"

namespace statelm {
namespace {

namespace fs = std::filesystem;

std::string model_dir(const std::string& name) { return test::fixture("models/" + name).string(); }

std::vector<int32_t> greedy_prompt(const std::string& name) {
  auto j = nlohmann::json::parse(test::read_file(test::fixture("models/" + name + "/reference.json")));
  return j["greedy"]["prompt"].get<std::vector<int32_t>>();
}

RunnerOptions small_runner(int32_t slots = 3, int32_t block_size = 4) {
  RunnerOptions o;
  o.max_sequences = slots;
  o.max_context = 160;
  o.kv_block_size = block_size;  // small blocks: the prompt spans many, the last one partly
  return o;
}

int32_t argmax(const std::vector<float>& v) { return int32_t(std::max_element(v.begin(), v.end()) - v.begin()); }

// Greedy decoding: feeds `next` (already sampled), then samples and feeds n - 1 more; returns the
// n + 1 tokens seen (next first) and every step's logits.
struct Continuation {
  std::vector<int32_t> tokens;
  std::vector<float> logits;
};
Continuation decode(ModelRunner& runner, Sequence& seq, int32_t next, int n) {
  Continuation c;
  Sequence* seqs[] = {&seq};
  c.tokens.push_back(next);
  for (int i = 0; i < n; ++i) {
    std::vector<int32_t> feed = {c.tokens.back()};
    std::vector<float> l = runner.step(seqs, std::span(&feed, 1));
    c.logits.insert(c.logits.end(), l.begin(), l.end());
    c.tokens.push_back(argmax(l));
  }
  return c;
}

// fn() must throw an Error of `kind` whose message contains `needle`.
template <typename Fn>
void expect_error(Fn&& fn, ErrorKind kind, const std::string& needle, const std::string& what) {
  try {
    fn();
    ADD_FAILURE() << what << ": no error";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), kind) << what << ": " << e.what();
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << what << ": " << e.what();
  }
}

float max_abs_diff(const std::vector<float>& a, const std::vector<float>& b) {
  float d = 0;
  for (size_t i = 0; i < std::min(a.size(), b.size()); ++i) d = std::max(d, std::fabs(a[i] - b[i]));
  return d;
}

// Makes other sequences scribble over the slots and blocks a closed sequence left behind.
void dirty_the_caches(ModelRunner& runner, std::vector<Sequence>& hold, int n_sequences) {
  for (int i = 0; i < n_sequences; ++i) {
    hold.push_back(runner.open());
    Sequence* seqs[] = {&hold.back()};
    std::vector<int32_t> junk(40, 0);
    for (size_t t = 0; t < junk.size(); ++t) junk[t] = int32_t((t * 7 + 3 + size_t(i)) % 50);
    runner.step(seqs, std::span(&junk, 1));
  }
}

// A blob taken after the prompt, with the first sampled token pending (as a session saves it).
struct Taken {
  std::string blob;
  std::vector<int32_t> tokens;
  int32_t slot = -1;
  std::vector<int32_t> blocks;
};
Taken take_snapshot(ModelRunner& runner, const std::vector<int32_t>& prompt) {
  Sequence seq = runner.open();
  Sequence* seqs[] = {&seq};
  std::vector<float> l = runner.step(seqs, std::span(&prompt, 1));
  Taken t;
  t.tokens = prompt;
  t.tokens.push_back(argmax(l));
  t.blob = snapshot_sequence(runner, seq, t.tokens);
  t.slot = seq.slot;
  t.blocks = seq.blocks.blocks;
  runner.close(seq);
  return t;
}

class SnapshotModel : public ::testing::TestWithParam<const char*> {
 protected:
  CpuBackend backend;
};

TEST_P(SnapshotModel, RestoreContinuesExactlyInAnotherSlot) {
  const std::string name = GetParam();
  const std::vector<int32_t> prompt = greedy_prompt(name);
  ModelRunner runner(model_dir(name), backend, small_runner());
  const bool has_kv = !runner.kv().empty();

  // Uninterrupted.
  Sequence whole = runner.open();
  Sequence* w[] = {&whole};
  const int32_t first = argmax(runner.step(w, std::span(&prompt, 1)));
  const Continuation want = decode(runner, whole, first, 16);
  runner.close(whole);

  // Interrupted: snapshot, let others reuse the slot and blocks, restore elsewhere.
  const int free_slots = runner.free_slots(), free_blocks = runner.free_blocks();
  Taken taken = take_snapshot(runner, prompt);
  std::vector<Sequence> others;
  dirty_the_caches(runner, others, 1);
  std::vector<int32_t> tokens;
  Sequence seq = restore_sequence(runner, taken.blob, &tokens);
  EXPECT_NE(seq.slot, taken.slot);
  if (has_kv) {
    EXPECT_NE(seq.blocks.blocks, taken.blocks);
  }
  EXPECT_EQ(tokens, taken.tokens);
  EXPECT_EQ(seq.n_tokens, int64_t(prompt.size()));
  const Continuation got = decode(runner, seq, tokens.back(), 16);
  EXPECT_EQ(got.tokens, want.tokens) << name;
  EXPECT_LE(max_abs_diff(got.logits, want.logits), 1e-6f) << name;
  EXPECT_TRUE(got.logits == want.logits) << name << ": the CPU engine should be bitwise reproducible";

  runner.close(seq);
  for (Sequence& s : others) runner.close(s);
  EXPECT_EQ(runner.free_slots(), free_slots);
  EXPECT_EQ(runner.free_blocks(), free_blocks);
}

TEST_P(SnapshotModel, RestoresIntoAnotherRunnerWithOtherBlockSize) {
  const std::string name = GetParam();
  const std::vector<int32_t> prompt = greedy_prompt(name);
  ModelRunner a(model_dir(name), backend, small_runner(2, 4));
  ModelRunner b(model_dir(name), backend, small_runner(3, 16));
  EXPECT_EQ(a.fingerprint(), b.fingerprint());
  Taken taken = take_snapshot(a, prompt);
  Sequence sa = restore_sequence(a, taken.blob), sb = restore_sequence(b, taken.blob);
  const Continuation ca = decode(a, sa, taken.tokens.back(), 8), cb = decode(b, sb, taken.tokens.back(), 8);
  EXPECT_EQ(ca.tokens, cb.tokens) << name;
  EXPECT_LE(max_abs_diff(ca.logits, cb.logits), 1e-6f) << name;
  a.close(sa);
  b.close(sb);
}

TEST_P(SnapshotModel, DamagedBlobsAreRefusedWithoutLeaks) {
  const std::string name = GetParam();
  ModelRunner runner(model_dir(name), backend, small_runner());
  const std::string blob = take_snapshot(runner, greedy_prompt(name)).blob;
  const int free_slots = runner.free_slots(), free_blocks = runner.free_blocks();
  auto refused = [&](std::string_view bad, const std::string& needle, const std::string& what) {
    expect_error(
        [&] {
          Sequence s = restore_sequence(runner, bad);
          runner.close(s);
        },
        ErrorKind::Format, needle, name + ": " + what);
    EXPECT_EQ(runner.free_slots(), free_slots) << what;
    EXPECT_EQ(runner.free_blocks(), free_blocks) << what;
  };

  refused("", "empty", "an empty blob");
  refused("hello, world", "not a statelm snapshot", "text");
  for (size_t k = 1; k < 8; ++k) {
    const size_t n = blob.size() * k / 8;
    refused(std::string_view(blob).substr(0, n), "truncated", str_cat("the first ", n, " of ", blob.size(), " bytes"));
  }
  refused(blob.substr(0, blob.size() - 1), "truncated", "all but the last byte");
  refused(blob + "x", "after its zstd frame", "a trailing byte");
  // Every byte position near the ends (frame header, block headers, checksum), a spread in between.
  const size_t stride = std::max<size_t>(1, blob.size() / 97);
  for (size_t at = 0; at < blob.size(); at += (at < 64 || at + 64 > blob.size()) ? 1 : stride) {
    std::string bad = blob;
    bad[at] = char(bad[at] ^ 0xff);
    refused(bad, "snapshot", str_cat("byte ", at, " of ", blob.size(), " flipped"));
  }

  // Another format version, in an otherwise valid frame.
  std::string raw(ZSTD_getFrameContentSize(blob.data(), blob.size()), '\0');
  ASSERT_EQ(ZSTD_decompress(raw.data(), raw.size(), blob.data(), blob.size()), raw.size());
  const uint32_t version = kSnapshotVersion + 1;
  std::memcpy(raw.data() + 8, &version, 4);
  ZSTD_CCtx* cctx = ZSTD_createCCtx();
  ZSTD_CCtx_setParameter(cctx, ZSTD_c_checksumFlag, 1);
  std::string repacked(ZSTD_compressBound(raw.size()), '\0');
  repacked.resize(ZSTD_compress2(cctx, repacked.data(), repacked.size(), raw.data(), raw.size()));
  ZSTD_freeCCtx(cctx);
  refused(repacked, str_cat("version ", version, " is not supported"), "another version");
}

INSTANTIATE_TEST_SUITE_P(Models, SnapshotModel, ::testing::Values("mamba-tiny", "mamba2-tiny", "jamba-tiny", "llama-tiny"),
                         [](const auto& info) {
                           std::string s = info.param;
                           std::replace(s.begin(), s.end(), '-', '_');
                           return s;
                         });

TEST(Snapshot, HeaderSaysWhatTheBlobHolds) {
  CpuBackend backend;
  ModelRunner runner(model_dir("jamba-tiny"), backend, small_runner());
  Taken taken = take_snapshot(runner, greedy_prompt("jamba-tiny"));
  SnapshotHeader h = read_snapshot_header(taken.blob);
  EXPECT_EQ(h.version, kSnapshotVersion);
  EXPECT_EQ(h.fingerprint, runner.fingerprint());
  EXPECT_EQ(h.fingerprint.size(), 32u);
  EXPECT_EQ(h.state_dtype, "float32");
  EXPECT_EQ(h.n_tokens, int64_t(taken.tokens.size()) - 1);
  EXPECT_EQ(h.tokens, taken.tokens);
}

TEST(Snapshot, BlobOfAnotherModelIsRefused) {
  CpuBackend backend;
  ModelRunner jamba(model_dir("jamba-tiny"), backend, small_runner());
  const std::string blob = take_snapshot(jamba, greedy_prompt("jamba-tiny")).blob;

  // The same shapes with one weight changed: a different checkpoint, a different fingerprint.
  test::TempDir dir;
  for (const char* f : {"config.json", "model.safetensors"})
    fs::copy_file(test::fixture(std::string("models/jamba-tiny/") + f), dir / f);
  std::string weights = test::read_file(dir / "model.safetensors");
  weights.back() = char(weights.back() ^ 0x01);
  test::write_file(dir / "model.safetensors", weights);

  for (const std::string& other : {model_dir("jamba-tiny-b"), model_dir("mamba2-tiny"), model_dir("llama-tiny"),
                                   dir.path().string()}) {
    ModelRunner runner(other, backend, small_runner());
    EXPECT_NE(runner.fingerprint(), jamba.fingerprint()) << other;
    const int free_slots = runner.free_slots(), free_blocks = runner.free_blocks();
    expect_error([&] { restore_sequence(runner, blob); }, ErrorKind::InvalidArgument, "another model", other);
    expect_error([&] { restore_sequence(runner, blob); }, ErrorKind::InvalidArgument, other, other);
    EXPECT_EQ(runner.free_slots(), free_slots);
    EXPECT_EQ(runner.free_blocks(), free_blocks);
  }
  ModelRunner again(model_dir("jamba-tiny"), backend, small_runner(1));
  EXPECT_EQ(again.fingerprint(), jamba.fingerprint());
}

TEST(Snapshot, RestoreNeedsAFreeSlotAndBlocks) {
  CpuBackend backend;
  ModelRunner runner(model_dir("jamba-tiny"), backend, small_runner(2));
  const std::string blob = take_snapshot(runner, greedy_prompt("jamba-tiny")).blob;

  Sequence a = runner.open(), b = runner.open();
  auto restore = [&] {
    Sequence s = restore_sequence(runner, blob);
    runner.close(s);
  };
  expect_error(restore, ErrorKind::OutOfMemory, "slot", "all slots in use");
  runner.close(b);

  BlockList hog;  // every KV block taken, one slot free
  ASSERT_TRUE(runner.kv().reserve(hog, int64_t(runner.free_blocks()) * runner.kv().block_size()));
  const int free_slots = runner.free_slots();
  expect_error(restore, ErrorKind::OutOfMemory, "KV cache full", "all blocks in use");
  EXPECT_EQ(runner.free_slots(), free_slots);
  EXPECT_EQ(runner.free_blocks(), 0);
  runner.kv().release(hog);
  runner.close(a);
}

TEST(Snapshot, ContextLimitAndBadArgumentsAreClearErrors) {
  CpuBackend backend;
  ModelRunner runner(model_dir("llama-tiny"), backend, small_runner());
  const std::vector<int32_t> prompt = greedy_prompt("llama-tiny");
  const std::string blob = take_snapshot(runner, prompt).blob;
  RunnerOptions short_context = small_runner();
  short_context.max_context = int64_t(prompt.size()) - 1;
  ModelRunner small(model_dir("llama-tiny"), backend, short_context);
  expect_error([&] { restore_sequence(small, blob); }, ErrorKind::InvalidArgument, "context", "a short context");

  Sequence seq = runner.open();
  Sequence* seqs[] = {&seq};
  runner.step(seqs, std::span(&prompt, 1));
  const std::vector<int32_t> too_few(prompt.begin(), prompt.end() - 1);
  expect_error([&] { snapshot_sequence(runner, seq, too_few); }, ErrorKind::InvalidArgument, "token ids", "too few ids");
  runner.close(seq);
  expect_error([&] { snapshot_sequence(runner, seq, prompt); }, ErrorKind::InvalidArgument, "closed", "closed");
}

TEST(Snapshot, EmptySequenceRoundTrips) {
  CpuBackend backend;
  ModelRunner runner(model_dir("mamba2-tiny"), backend, small_runner());
  Sequence seq = runner.open();
  const std::string blob = snapshot_sequence(runner, seq, {});
  runner.close(seq);
  Sequence back = restore_sequence(runner, blob);
  EXPECT_EQ(back.n_tokens, 0);
  runner.close(back);
}

}  // namespace
}  // namespace statelm
