// Writing and reading snapshot blobs (the format is in snapshot.h).
//
// Restore reads in three steps so that nothing in a blob is trusted before it is checked: the
// fixed prefix and the header are inflated alone; the header is checked against the model
// (fingerprint, dtype, every layer's kind and section size); only then is the rest inflated
// (to exactly the size the header implies, checksum verified by zstd) and copied into a slot.
#include "runtime/snapshot.h"

#include <zstd.h>

#include <algorithm>
#include <bit>
#include <cstring>
#include <memory>

#include "core/error.h"

namespace statelm {

namespace {

static_assert(std::endian::native == std::endian::little, "snapshot blobs are little endian: add byte swaps here");

constexpr char kMagic[8] = {'S', 'T', 'L', 'M', 'S', 'N', 'A', 'P'};
constexpr size_t kPrefixBytes = 16;  // magic, version, header bytes
constexpr uint32_t kMaxStringBytes = 256;
constexpr uint64_t kMaxTokens = uint64_t(1) << 26;  // bounds what a forged header makes us allocate
constexpr uint32_t kMaxLayers = 1u << 16;
constexpr size_t kZstdMaxFrameHeader = 18;  // RFC 8878: magic + at most 14 bytes
constexpr int kZstdLevel = 3;

// Bytes of one layer's two state sections for a sequence of n_tokens positions.
struct LayerSections {
  MixerKind kind = MixerKind::Mamba1;
  uint64_t a = 0, b = 0;
};

uint64_t row_bytes(const Tensor& t) { return uint64_t(t.nbytes() / size_t(t.dim(0))); }

std::vector<LayerSections> model_sections(ModelRunner& runner, int64_t n_tokens) {
  const ModelSpec& spec = runner.spec();
  std::vector<LayerSections> out(spec.layers.size());
  for (size_t l = 0; l < out.size(); ++l) {
    const int64_t layer = int64_t(l);
    out[l].kind = spec.layers[l].mixer_kind();
    if (spec.layers[l].is_mamba()) {
      out[l].a = row_bytes(runner.states().conv(layer));
      out[l].b = row_bytes(runner.states().ssm(layer));
    } else {
      const Tensor& k = runner.kv().k(layer);  // [n_blocks, block_size, Hkv, Dh]
      out[l].a = out[l].b = uint64_t(n_tokens) * uint64_t(k.dim(2) * k.dim(3)) * dtype_size(k.dtype);
    }
  }
  return out;
}

// The dtype the runner keeps recurrent state in (RunnerOptions::state_dtype) when the model has
// Mamba layers, else the KV cache's: the dtype a restore must match. Each section is stored in
// its own tensor's dtype, so a Jamba blob with bf16 state has bf16 Mamba and fp32 KV sections.
DType state_dtype(ModelRunner& runner) {
  for (int64_t l = 0; l < runner.spec().n_layers(); ++l)
    if (runner.states().conv(l).defined()) return runner.states().dtype();
  for (int64_t l = 0; l < runner.spec().n_layers(); ++l)
    if (runner.kv().k(l).defined()) return runner.kv().k(l).dtype;
  return DType::F32;
}

// Visits the state of `seq` section by section, in blob order: fn(byte offset into the
// sections, tensor) for each contiguous piece (a slot row, or the used positions of one KV block).
template <typename Fn>
void for_each_piece(ModelRunner& runner, const Sequence& seq, Fn&& fn) {
  const ModelSpec& spec = runner.spec();
  size_t at = 0;
  for (int64_t l = 0; l < spec.n_layers(); ++l) {
    if (spec.layers[size_t(l)].is_mamba()) {
      for (const Tensor* t : {&runner.states().conv(l), &runner.states().ssm(l)}) {
        Tensor row = t->rows(seq.slot, 1);
        fn(at, row);
        at += row.nbytes();
      }
      continue;
    }
    const int64_t bs = runner.kv().block_size();
    for (const Tensor* t : {&runner.kv().k(l), &runner.kv().v(l)}) {
      for (int64_t i = 0; i * bs < seq.n_tokens; ++i) {
        const int64_t count = std::min(bs, seq.n_tokens - i * bs);
        // [block_size, Hkv, Dh] of block i, its first `count` positions
        Tensor piece = t->rows(seq.blocks.blocks[size_t(i)], 1).reshape({bs, t->dim(2), t->dim(3)}).rows(0, count);
        fn(at, piece);
        at += piece.nbytes();
      }
    }
  }
}

// A piece's values cross the backend as fp32 (upload/download) and are kept in the blob in the
// piece's own dtype: bf16 and f16 state round-trip exactly (widening, then rounding a value
// that is already bf16 / f16; an f16 ±inf stays inf). fp32 pieces are copied bytewise: after a
// 16-bit section an fp32 one may be only 2-aligned.
void piece_to_blob(Backend& backend, const Tensor& t, char* dst) {
  static thread_local std::vector<float> values;
  values.resize(size_t(t.numel()));
  backend.download(t, values.data());
  if (t.dtype == DType::F32) {
    std::memcpy(dst, values.data(), t.nbytes());
    return;
  }
  STATELM_CHECK(t.dtype == DType::BF16 || t.dtype == DType::F16, "snapshot of a ", dtype_name(t.dtype),
                " state tensor");
  convert_from_f32(t.dtype, values.data(), dst, values.size());
}

void piece_from_blob(Backend& backend, const Tensor& t, const char* src) {
  static thread_local std::vector<float> values;
  values.resize(size_t(t.numel()));
  STATELM_CHECK(t.dtype == DType::F32 || t.dtype == DType::BF16 || t.dtype == DType::F16, "restore of a ",
                dtype_name(t.dtype), " state tensor");
  convert_to_f32(t.dtype, src, values.data(), values.size());
  backend.upload(t, values.data());
}

template <typename T>
void put(std::string& out, T v) {
  out.append(reinterpret_cast<const char*>(&v), sizeof v);
}

void put_string(std::string& out, std::string_view s) {
  put(out, uint32_t(s.size()));
  out.append(s);
}

// Bounds-checked reads of the header: sizes come from the blob, so each is checked first.
class HeaderReader {
 public:
  explicit HeaderReader(std::string_view bytes) : bytes_(bytes) {}

  template <typename T>
  T get(const char* what) {
    if (bytes_.size() - pos_ < sizeof(T)) fail(ErrorKind::Format, "snapshot header ends inside its ", what);
    T v;
    std::memcpy(&v, bytes_.data() + pos_, sizeof v);
    pos_ += sizeof v;
    return v;
  }
  std::string string(const char* what) {
    const uint32_t n = get<uint32_t>(what);
    if (n > kMaxStringBytes || bytes_.size() - pos_ < n)
      fail(ErrorKind::Format, "snapshot header: ", what, " of ", n, " bytes does not fit");
    std::string s(bytes_.substr(pos_, n));
    pos_ += n;
    return s;
  }
  size_t remaining() const { return bytes_.size() - pos_; }

 private:
  std::string_view bytes_;
  size_t pos_ = 0;
};

// Inflates the blob's one zstd frame only as far as asked, so a header is read without the whole
// state, and memory grows with what the data really decodes to, never with a size it claims.
class FrameReader {
 public:
  explicit FrameReader(std::string_view blob) : in_{blob.data(), blob.size(), 0} {
    static constexpr unsigned char kZstdMagic[4] = {0x28, 0xb5, 0x2f, 0xfd};
    if (blob.empty()) fail(ErrorKind::Format, "snapshot blob is empty");
    if (std::memcmp(blob.data(), kZstdMagic, std::min<size_t>(4, blob.size())) != 0)
      fail(ErrorKind::Format, "not a statelm snapshot: the blob does not start with a zstd frame");
    const unsigned long long size = ZSTD_getFrameContentSize(blob.data(), blob.size());
    if (size == ZSTD_CONTENTSIZE_ERROR)
      fail(ErrorKind::Format, blob.size() < kZstdMaxFrameHeader ? "snapshot blob is truncated: " : "snapshot blob is corrupted: ",
           blob.size(), " bytes and no valid zstd frame header");
    // Frame header descriptor bit 2: content checksum (RFC 8878 3.1.1.1.1). We always set both.
    if (size == ZSTD_CONTENTSIZE_UNKNOWN || !(uint8_t(blob[4]) & 0x04))
      fail(ErrorKind::Format, "not a statelm snapshot: its zstd frame lacks a content size or checksum");
    if (!dctx_) fail(ErrorKind::OutOfMemory, "zstd: cannot create a decompression context");
    content_size_ = size;
  }

  uint64_t content_size() const { return content_size_; }

  // The first n bytes of content; Error(Format) naming `what` when the frame is shorter.
  std::string_view read_to(size_t n, const char* what) {
    inflate(n);
    if (produced_ < n) fail(ErrorKind::Format, "snapshot ends inside its ", what);
    return std::string_view(out_.data(), n);
  }

  // The whole content, which must be exactly `total` bytes, and the frame the whole blob.
  std::string& read_all(uint64_t total) {
    inflate(size_t(total) + 1);  // one byte more: a longer frame shows itself
    if (!done_ || produced_ != total)
      fail(ErrorKind::Format, "snapshot content is ", done_ ? "" : "more than ", produced_, " bytes; its header describes ",
           total);
    if (in_.pos != in_.size) fail(ErrorKind::Format, "snapshot blob has ", in_.size - in_.pos, " bytes after its zstd frame");
    out_.resize(produced_);
    return out_;
  }

 private:
  void inflate(size_t limit) {
    while (!done_ && produced_ < limit) {
      const size_t room = std::min(limit, std::max(produced_ * 2, size_t(1) << 16));
      if (out_.size() < room) out_.resize(room);
      ZSTD_outBuffer out{out_.data(), room, produced_};
      const size_t in_before = in_.pos;
      const size_t r = ZSTD_decompressStream(dctx_.get(), &out, &in_);
      if (ZSTD_isError(r)) fail(ErrorKind::Format, "snapshot blob is corrupted (zstd: ", ZSTD_getErrorName(r), ")");
      const bool progressed = out.pos != produced_ || in_.pos != in_before;
      produced_ = out.pos;
      if (r == 0) {
        done_ = true;
      } else if (in_.pos == in_.size && out.pos < out.size) {
        // zstd flushed all it could and wants input that is not there.
        fail(ErrorKind::Format, "snapshot blob is truncated: its ", in_.size, " bytes end inside the zstd frame");
      } else if (!progressed) {
        fail(ErrorKind::Format, "snapshot blob is corrupted (zstd made no progress)");
      }
    }
  }

  ZSTD_inBuffer in_;
  std::unique_ptr<ZSTD_DCtx, size_t (*)(ZSTD_DCtx*)> dctx_{ZSTD_createDCtx(), ZSTD_freeDCtx};
  std::string out_;
  size_t produced_ = 0;
  bool done_ = false;
  uint64_t content_size_ = 0;
};

// Reads the prefix and the header; sections[] get the per-layer sizes the blob claims.
SnapshotHeader parse_header(FrameReader& frame, std::vector<LayerSections>* sections, uint32_t* header_bytes) {
  std::string_view prefix = frame.read_to(kPrefixBytes, "fixed header");
  if (std::memcmp(prefix.data(), kMagic, sizeof kMagic) != 0)
    fail(ErrorKind::Format, "not a statelm snapshot: bad magic inside the zstd frame");
  SnapshotHeader h;
  std::memcpy(&h.version, prefix.data() + 8, 4);
  if (h.version != kSnapshotVersion && h.version != 1)
    fail(ErrorKind::Format, "snapshot format version ", h.version, " is not supported (this statelm reads versions 1 to ",
         kSnapshotVersion, ")");
  uint32_t bytes;
  std::memcpy(&bytes, prefix.data() + 12, 4);
  if (bytes < kPrefixBytes || bytes % 8 != 0 || bytes > frame.content_size())
    fail(ErrorKind::Format, "snapshot header size ", bytes, " is invalid for a frame of ", frame.content_size(), " bytes");
  HeaderReader r(frame.read_to(bytes, "header").substr(kPrefixBytes));
  h.fingerprint = r.string("model fingerprint");
  h.state_dtype = r.string("state dtype");
  h.n_tokens = r.get<int64_t>("token count");
  if (h.version >= 2) h.first_id = r.get<int64_t>("first id position");
  const uint64_t n_ids = r.get<uint64_t>("id count");
  if (n_ids > kMaxTokens || n_ids * 4 > r.remaining())
    fail(ErrorKind::Format, "snapshot header: ", n_ids, " token ids do not fit in its ", bytes, " bytes");
  if (h.n_tokens < 0 || h.first_id < 0 || h.first_id > h.n_tokens || uint64_t(h.n_tokens - h.first_id) > n_ids)
    fail(ErrorKind::Format, "snapshot header: token count ", h.n_tokens, " is not within its ", n_ids,
         " token ids from position ", h.first_id);
  h.tokens.resize(size_t(n_ids));
  for (int32_t& id : h.tokens) id = r.get<int32_t>("token ids");
  const uint32_t n_layers = r.get<uint32_t>("layer count");
  if (n_layers > kMaxLayers) fail(ErrorKind::Format, "snapshot header: ", n_layers, " layers is implausible");
  sections->resize(n_layers);
  for (LayerSections& s : *sections) {
    const uint8_t kind = r.get<uint8_t>("layer kinds");
    if (kind > uint8_t(MixerKind::Attention)) fail(ErrorKind::Format, "snapshot header: unknown layer kind ", int(kind));
    s.kind = MixerKind(kind);
    s.a = r.get<uint64_t>("section sizes");
    s.b = r.get<uint64_t>("section sizes");
    // Saturating: the sizes are unchecked here, and a forged pair must not wrap around.
    const uint64_t sum = s.a > uint64_t(INT64_MAX) || s.b > uint64_t(INT64_MAX) ? uint64_t(INT64_MAX) : s.a + s.b;
    h.state_bytes = int64_t(std::min<uint64_t>(uint64_t(INT64_MAX), uint64_t(h.state_bytes) + sum));
  }
  *header_bytes = bytes;
  return h;
}

// Every claim of the header against this runner; returns the content size they imply.
uint64_t check_against_model(ModelRunner& runner, const SnapshotHeader& h, const std::vector<LayerSections>& sections,
                             uint32_t header_bytes) {
  if (h.fingerprint != runner.fingerprint())
    fail(ErrorKind::InvalidArgument, "snapshot is of another model (fingerprint ", h.fingerprint, "), not of ",
         runner.model_dir(), " (fingerprint ", runner.fingerprint(), ")");
  const std::string_view dtype = dtype_name(state_dtype(runner));
  if (h.state_dtype != dtype)
    fail(ErrorKind::InvalidArgument, "snapshot holds ", h.state_dtype, " state; this runner keeps ", dtype, " state");
  const ModelSpec& spec = runner.spec();
  if (sections.size() != spec.layers.size())
    fail(ErrorKind::Format, "snapshot has ", sections.size(), " layers; ", runner.model_dir(), " has ", spec.layers.size());
  const bool has_kv = !runner.kv().empty();
  if (has_kv && h.n_tokens > runner.max_context())
    fail(ErrorKind::InvalidArgument, "snapshot holds ", h.n_tokens, " tokens, beyond this runner's context of ",
         runner.max_context());
  for (int32_t id : h.tokens)
    if (id < 0 || id >= spec.vocab_size)
      fail(ErrorKind::Format, "snapshot token id ", id, " is outside the vocabulary of ", spec.vocab_size);
  const std::vector<LayerSections> want = model_sections(runner, h.n_tokens);
  uint64_t total = header_bytes;
  for (size_t l = 0; l < want.size(); ++l) {
    if (sections[l].kind != want[l].kind)
      fail(ErrorKind::Format, "snapshot layer ", l, " is ", mixer_kind_name(sections[l].kind), "; in the model it is ",
           mixer_kind_name(want[l].kind));
    if (sections[l].a != want[l].a || sections[l].b != want[l].b)
      fail(ErrorKind::Format, "snapshot layer ", l, " sections of ", sections[l].a, " + ", sections[l].b,
           " bytes; the model needs ", want[l].a, " + ", want[l].b);
    total += want[l].a + want[l].b;
  }
  return total;
}

// The uncompressed content: header, then the state sections, zero-filled for the caller to
// write (or to leave zero: the empty state). *header_bytes receives the sections' offset.
std::string layout_content(ModelRunner& runner, int64_t n_tokens, std::span<const int32_t> tokens, int64_t first_id,
                           uint32_t* header_bytes) {
  const std::vector<LayerSections> sections = model_sections(runner, n_tokens);
  std::string raw(kMagic, sizeof kMagic);
  put(raw, kSnapshotVersion);
  put(raw, uint32_t(0));  // header bytes, patched below
  put_string(raw, runner.fingerprint());
  put_string(raw, dtype_name(state_dtype(runner)));
  put(raw, int64_t(n_tokens));
  put(raw, int64_t(first_id));
  put(raw, uint64_t(tokens.size()));
  raw.append(reinterpret_cast<const char*>(tokens.data()), tokens.size_bytes());
  put(raw, uint32_t(sections.size()));
  for (const LayerSections& s : sections) {
    put(raw, uint8_t(s.kind));
    put(raw, s.a);
    put(raw, s.b);
  }
  raw.resize((raw.size() + 7) / 8 * 8, '\0');  // sections start 8-aligned: fp32 copies straight in
  *header_bytes = uint32_t(raw.size());
  std::memcpy(raw.data() + 12, header_bytes, 4);
  uint64_t total = *header_bytes;
  for (const LayerSections& s : sections) total += s.a + s.b;
  raw.resize(size_t(total));
  return raw;
}

std::string compress(const std::string& raw) {
  std::unique_ptr<ZSTD_CCtx, size_t (*)(ZSTD_CCtx*)> cctx{ZSTD_createCCtx(), ZSTD_freeCCtx};
  if (!cctx) fail(ErrorKind::OutOfMemory, "zstd: cannot create a compression context");
  ZSTD_CCtx_setParameter(cctx.get(), ZSTD_c_compressionLevel, kZstdLevel);
  ZSTD_CCtx_setParameter(cctx.get(), ZSTD_c_checksumFlag, 1);
  ZSTD_CCtx_setParameter(cctx.get(), ZSTD_c_contentSizeFlag, 1);
  std::string blob(ZSTD_compressBound(raw.size()), '\0');
  const size_t n = ZSTD_compress2(cctx.get(), blob.data(), blob.size(), raw.data(), raw.size());
  if (ZSTD_isError(n)) fail(ErrorKind::Internal, "zstd compression of a snapshot failed: ", ZSTD_getErrorName(n));
  blob.resize(n);
  return blob;
}

// The blob's whole content, checked: the header against the model, the frame (checksum,
// size) by zstd. Reads only the runner's shapes and fingerprint, never its caches.
std::string checked_content(ModelRunner& runner, std::string_view blob, SnapshotHeader* h, uint32_t* header_bytes) {
  FrameReader frame(blob);
  std::vector<LayerSections> sections;
  *h = parse_header(frame, &sections, header_bytes);
  // Inflate all (zstd verifies the checksum) before judging the header against the model, so a
  // corrupted blob is called corrupted, not "of another model"; but never more than the largest
  // state this runner could hold.
  uint64_t cap = *header_bytes;
  for (const LayerSections& s : model_sections(runner, runner.kv().empty() ? 0 : runner.max_context())) cap += s.a + s.b;
  uint64_t claimed = *header_bytes;  // saturates at cap + 1: forged sizes must not wrap around
  for (const LayerSections& s : sections)
    claimed = (s.a > cap || s.b > cap) ? cap + 1 : std::min(cap + 1, claimed + s.a + s.b);
  if (claimed > cap || claimed != frame.content_size()) {
    // Not a state this runner could hold: say why in the model's terms where the header allows.
    const uint64_t total = check_against_model(runner, *h, sections, *header_bytes);
    fail(ErrorKind::Format, "snapshot frame declares ", frame.content_size(), " bytes; its header describes ", total);
  }
  std::string raw = std::move(frame.read_all(claimed));
  check_against_model(runner, *h, sections, *header_bytes);
  return raw;
}

}  // namespace

std::string snapshot_sequence(ModelRunner& runner, const Sequence& seq, std::span<const int32_t> tokens, int64_t first_id) {
  if (seq.slot < 0) fail(ErrorKind::InvalidArgument, "snapshot of a closed sequence");
  if (first_id < 0 || first_id > seq.n_tokens || first_id + int64_t(tokens.size()) < seq.n_tokens)
    fail(ErrorKind::InvalidArgument, "snapshot: ", tokens.size(), " token ids from position ", first_id,
         " for a sequence of ", seq.n_tokens, " tokens");
  STATELM_CHECK(runner.kv().empty() || int64_t(seq.blocks.blocks.size()) >= runner.kv().blocks_for(seq.n_tokens),
                "sequence holds too few KV blocks");
  // The last kSnapshotKeptIds ids, and every pending one.
  const int64_t pending = first_id + int64_t(tokens.size()) - seq.n_tokens;
  const int64_t drop = std::max<int64_t>(0, int64_t(tokens.size()) - std::max(kSnapshotKeptIds, pending));
  tokens = tokens.subspan(size_t(drop));
  first_id += drop;
  uint32_t header_bytes = 0;
  std::string raw = layout_content(runner, seq.n_tokens, tokens, first_id, &header_bytes);
  char* state = raw.data() + header_bytes;
  for_each_piece(runner, seq, [&](size_t at, const Tensor& t) { piece_to_blob(runner.backend(), t, state + at); });
  return compress(raw);
}

std::string empty_snapshot(ModelRunner& runner) {
  uint32_t header_bytes = 0;
  return compress(layout_content(runner, 0, {}, 0, &header_bytes));  // a zeroed slot, no KV: a fresh sequence
}

uint64_t max_snapshot_bytes(ModelRunner& runner, int64_t n_tokens) {
  const std::vector<LayerSections> sections = model_sections(runner, runner.kv().empty() ? 0 : n_tokens);
  // Header: prefix, two strings, n_tokens, first_id, n_ids, the ids (a version 1 blob keeps
  // them all), n_layers, 17 bytes a layer, padding.
  uint64_t raw =
      kPrefixBytes + 2 * (4 + kMaxStringBytes) + 8 + 8 + 8 + 4 * uint64_t(n_tokens) + 4 + 17 * sections.size() + 7;
  for (const LayerSections& s : sections) raw += s.a + s.b;
  return ZSTD_compressBound(size_t(raw));
}

SnapshotHeader check_snapshot(ModelRunner& runner, std::string_view blob) {
  SnapshotHeader h;
  uint32_t header_bytes = 0;
  checked_content(runner, blob, &h, &header_bytes);
  return h;
}

SnapshotHeader read_snapshot_header(std::string_view blob) {
  FrameReader frame(blob);
  std::vector<LayerSections> sections;
  uint32_t header_bytes = 0;
  return parse_header(frame, &sections, &header_bytes);
}

Sequence restore_sequence(ModelRunner& runner, std::string_view blob, std::vector<int32_t>* tokens, int64_t* first_id) {
  SnapshotHeader h;
  uint32_t header_bytes = 0;
  const std::string raw = checked_content(runner, blob, &h, &header_bytes);

  std::optional<Sequence> seq = runner.try_open(h.n_tokens);
  if (!seq) {
    if (runner.free_slots() == 0)
      fail(ErrorKind::OutOfMemory, "no free state slot to restore the snapshot into (all are in use)");
    fail(ErrorKind::OutOfMemory, "KV cache full: no blocks for the snapshot's ", h.n_tokens, " tokens");
  }
  seq->n_tokens = h.n_tokens;
  try {
    const char* state = raw.data() + header_bytes;
    for_each_piece(runner, *seq, [&](size_t at, const Tensor& t) { piece_from_blob(runner.backend(), t, state + at); });
  } catch (...) {
    runner.close(*seq);
    throw;
  }
  if (tokens) *tokens = std::move(h.tokens);
  if (first_id) *first_id = h.first_id;
  return *seq;
}

}  // namespace statelm
