// `GET /metrics`: a small thread-safe registry of counters, gauges and fixed-bucket histograms,
// rendered in the Prometheus text exposition format (version 0.0.4), and the metrics of
// `statelm serve` on top of it.
//
//   # HELP name text
//   # TYPE name counter|gauge|histogram
//   name{label="v"} value
//   name_bucket{le="0.1"} n ... name_bucket{le="+Inf"} count, name_sum, name_count
//
// Series are created once (registry mutex) and updated lock-free (counters, gauges) or under
// their own mutex (histograms), so the engine thread can observe per token.
#pragma once

#include <atomic>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "runtime/scheduler.h"

namespace statelm::server {

using MetricLabels = std::vector<std::pair<std::string, std::string>>;

class Counter {
 public:
  void inc(double v = 1);
  // Mirrors a monotonic count kept elsewhere (the scheduler's), copied at scrape time.
  void set_total(double v) { value_.store(v, std::memory_order_relaxed); }
  double value() const { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<double> value_{0};
};

class Gauge {
 public:
  void set(double v) { value_.store(v, std::memory_order_relaxed); }
  double value() const { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<double> value_{0};
};

class Histogram {
 public:
  explicit Histogram(std::vector<double> upper_bounds);  // ascending; +Inf is implied
  void observe(double v);
  struct Snapshot {
    std::vector<double> upper_bounds;
    std::vector<uint64_t> cumulative;  // per bound, then +Inf (= count)
    double sum = 0;
    uint64_t count = 0;
  };
  Snapshot snapshot() const;

 private:
  const std::vector<double> bounds_;
  mutable std::mutex mu_;
  std::vector<uint64_t> counts_;  // per bucket, not cumulative; the last is (last bound, +Inf)
  double sum_ = 0;
  uint64_t count_ = 0;
};

class MetricsRegistry {
 public:
  // The series `name{labels}`, created on first use; the same name and labels give the same
  // object. A name is one type with one help text (and, for histograms, one set of buckets).
  Counter& counter(std::string_view name, std::string_view help, const MetricLabels& labels = {});
  Gauge& gauge(std::string_view name, std::string_view help, const MetricLabels& labels = {});
  Histogram& histogram(std::string_view name, std::string_view help, std::vector<double> upper_bounds,
                       const MetricLabels& labels = {});

  // Families in the order they were first registered, series in creation order.
  std::string render() const;

 private:
  enum class Type { Counter, Gauge, Histogram };
  struct Series {
    MetricLabels labels;
    std::unique_ptr<Counter> counter;
    std::unique_ptr<Gauge> gauge;
    std::unique_ptr<Histogram> histogram;
  };
  struct Family {
    std::string name, help;
    Type type;
    std::deque<Series> series;
  };
  Series& series(std::string_view name, std::string_view help, Type type, const MetricLabels& labels);

  mutable std::mutex mu_;
  std::deque<Family> families_;
};

// Shortest round-trip decimal, "+Inf"/"-Inf"/"NaN" as Prometheus spells them.
std::string format_metric_value(double v);

// What `statelm serve` exports. Request-side metrics are recorded as requests go; the
// scheduler's gauges and totals are copied from its stats at scrape time.
class ServerMetrics {
 public:
  ServerMetrics();
  void record_status(int http_status);  // one completion request answered with this status
  void record_usage(int64_t prompt_tokens, int64_t completion_tokens);
  void record_time_to_first_token(double seconds) { ttft_->observe(seconds); }
  void record_inter_token(double seconds) { inter_token_->observe(seconds); }
  std::string render(const SchedulerStats& stats);

  static constexpr std::string_view kContentType = "text/plain; version=0.0.4";

 private:
  Counter& status_counter(int http_status);

  MetricsRegistry registry_;
  Counter* prompt_tokens_;
  Counter* generation_tokens_;
  Histogram* ttft_;
  Histogram* inter_token_;
};

}  // namespace statelm::server
