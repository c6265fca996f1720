// CPU sampling: the reference of ops/sample_reference.h on each row, rows in parallel.
#include "backend/cpu/cpu_backend.h"
#include "ops/sample_reference.h"

namespace statelm {

void CpuBackend::sample(const Tensor& logits, std::span<const SampleRow> rows, std::span<int32_t> out_ids) {
  const int64_t n = logits.shape[0], vocab = logits.shape[1];
  cpu::check_2d(logits, n, vocab, "sample logits");
  check_sample_rows(rows, out_ids.size(), n, vocab, "sample");
  const int64_t count = int64_t(rows.size());
  // A row of a large vocabulary is a sort of up to its size: worth a thread per row when there
  // are several. Nothing in the loop throws (the rows were checked above).
#pragma omp parallel if (count > 1 && vocab >= 4096)
  {
    SampleWorkspace ws;
#pragma omp for schedule(dynamic)
    for (int64_t r = 0; r < count; ++r) {
      const SampleRow& row = rows[size_t(r)];
      out_ids[size_t(r)] = sample_reference({cpu::row(logits, row.logits_row), size_t(vocab)}, row, ws);
    }
  }
}

}  // namespace statelm
