#include "server/metrics.h"

#include <algorithm>
#include <charconv>
#include <cmath>

#include "core/error.h"

namespace statelm::server {

namespace {

// Label values escape \, " and newline; help text escapes \ and newline.
std::string escape(std::string_view s, bool quote) {
  std::string out;
  for (char c : s) {
    if (c == '\\') out += "\\\\";
    else if (c == '\n') out += "\\n";
    else if (c == '"' && quote) out += "\\\"";
    else out += c;
  }
  return out;
}

// {a="x",b="y"}, with `extra` (a histogram's le) last; empty when there are no labels.
std::string label_set(const MetricLabels& labels, const std::pair<std::string, std::string>* extra = nullptr) {
  if (labels.empty() && !extra) return {};
  std::string out = "{";
  auto add = [&](const std::pair<std::string, std::string>& l) {
    if (out.size() > 1) out += ',';
    out += l.first + "=\"" + escape(l.second, true) + '"';
  };
  for (const auto& l : labels) add(l);
  if (extra) add(*extra);
  return out + "}";
}

const char* type_name(int type) { return type == 0 ? "counter" : type == 1 ? "gauge" : "histogram"; }

// Latency buckets in seconds: time to first token includes queueing and prefill, so it
// reaches further than the gap between two decode steps.
const std::vector<double> kTtftBuckets{0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60};
const std::vector<double> kInterTokenBuckets{0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5};

constexpr int kStatuses[] = {200, 400, 404, 413, 429, 500, 503};

}  // namespace

std::string format_metric_value(double v) {
  if (std::isnan(v)) return "NaN";
  if (std::isinf(v)) return v > 0 ? "+Inf" : "-Inf";
  char buf[64];
  auto [end, ec] = std::to_chars(buf, buf + sizeof(buf), v);
  return std::string(buf, end);
}

void Counter::inc(double v) {
  double cur = value_.load(std::memory_order_relaxed);
  while (!value_.compare_exchange_weak(cur, cur + v, std::memory_order_relaxed)) {
  }
}

Histogram::Histogram(std::vector<double> upper_bounds)
    : bounds_(std::move(upper_bounds)), counts_(bounds_.size() + 1, 0) {
  STATELM_CHECK(std::is_sorted(bounds_.begin(), bounds_.end()) &&
                    std::adjacent_find(bounds_.begin(), bounds_.end()) == bounds_.end(),
                "histogram bounds must be strictly ascending");
}

void Histogram::observe(double v) {
  // Bucket i counts bounds_[i-1] < v <= bounds_[i] (le is inclusive).
  const size_t i = size_t(std::lower_bound(bounds_.begin(), bounds_.end(), v) - bounds_.begin());
  std::lock_guard<std::mutex> lock(mu_);
  ++counts_[i];
  sum_ += v;
  ++count_;
}

Histogram::Snapshot Histogram::snapshot() const {
  Snapshot s;
  s.upper_bounds = bounds_;
  std::lock_guard<std::mutex> lock(mu_);
  uint64_t running = 0;
  for (uint64_t c : counts_) s.cumulative.push_back(running += c);
  s.sum = sum_;
  s.count = count_;
  return s;
}

MetricsRegistry::Series& MetricsRegistry::series(std::string_view name, std::string_view help, Type type,
                                                 const MetricLabels& labels) {
  auto fam = std::find_if(families_.begin(), families_.end(), [&](const Family& f) { return f.name == name; });
  if (fam == families_.end()) {
    families_.push_back(Family{std::string(name), std::string(help), type, {}});
    fam = std::prev(families_.end());
  }
  STATELM_CHECK(fam->type == type, "metric ", name, " registered with another type");
  for (Series& s : fam->series)
    if (s.labels == labels) return s;
  Series& s = fam->series.emplace_back();
  s.labels = labels;
  return s;
}

Counter& MetricsRegistry::counter(std::string_view name, std::string_view help, const MetricLabels& labels) {
  std::lock_guard<std::mutex> lock(mu_);
  Series& s = series(name, help, Type::Counter, labels);
  if (!s.counter) s.counter = std::make_unique<Counter>();
  return *s.counter;
}

Gauge& MetricsRegistry::gauge(std::string_view name, std::string_view help, const MetricLabels& labels) {
  std::lock_guard<std::mutex> lock(mu_);
  Series& s = series(name, help, Type::Gauge, labels);
  if (!s.gauge) s.gauge = std::make_unique<Gauge>();
  return *s.gauge;
}

Histogram& MetricsRegistry::histogram(std::string_view name, std::string_view help, std::vector<double> upper_bounds,
                                      const MetricLabels& labels) {
  std::lock_guard<std::mutex> lock(mu_);
  Series& s = series(name, help, Type::Histogram, labels);
  if (!s.histogram) s.histogram = std::make_unique<Histogram>(std::move(upper_bounds));
  return *s.histogram;
}

std::string MetricsRegistry::render() const {
  std::lock_guard<std::mutex> lock(mu_);
  std::string out;
  for (const Family& f : families_) {
    out += "# HELP " + f.name + " " + escape(f.help, false) + "\n";
    out += "# TYPE " + f.name + " " + type_name(int(f.type)) + "\n";
    for (const Series& s : f.series) {
      if (s.counter) out += f.name + label_set(s.labels) + " " + format_metric_value(s.counter->value()) + "\n";
      if (s.gauge) out += f.name + label_set(s.labels) + " " + format_metric_value(s.gauge->value()) + "\n";
      if (!s.histogram) continue;
      const Histogram::Snapshot h = s.histogram->snapshot();
      for (size_t i = 0; i <= h.upper_bounds.size(); ++i) {
        const std::pair<std::string, std::string> le{
            "le", i < h.upper_bounds.size() ? format_metric_value(h.upper_bounds[i]) : "+Inf"};
        out += f.name + "_bucket" + label_set(s.labels, &le) + " " + std::to_string(h.cumulative[i]) + "\n";
      }
      out += f.name + "_sum" + label_set(s.labels) + " " + format_metric_value(h.sum) + "\n";
      out += f.name + "_count" + label_set(s.labels) + " " + std::to_string(h.count) + "\n";
    }
  }
  return out;
}

ServerMetrics::ServerMetrics() {
  // Every status series exists from the start (at 0), so rates work from the first scrape.
  for (int status : kStatuses) status_counter(status);
  prompt_tokens_ = &registry_.counter("statelm_prompt_tokens_total", "Prompt tokens of finished completions.");
  generation_tokens_ = &registry_.counter("statelm_generation_tokens_total", "Tokens generated by finished completions.");
  ttft_ = &registry_.histogram("statelm_time_to_first_token_seconds",
                               "Seconds from a completion request's receipt to its first generated token.", kTtftBuckets);
  inter_token_ = &registry_.histogram("statelm_inter_token_latency_seconds",
                                      "Seconds between consecutive generated tokens of one request.", kInterTokenBuckets);
  render(SchedulerStats{});  // registers the scheduler's families too, so the order is fixed
}

Counter& ServerMetrics::status_counter(int http_status) {
  return registry_.counter("statelm_requests_total", "Completion requests by HTTP status.",
                           {{"status", std::to_string(http_status)}});
}

void ServerMetrics::record_status(int http_status) { status_counter(http_status).inc(); }

void ServerMetrics::record_usage(int64_t prompt_tokens, int64_t completion_tokens) {
  prompt_tokens_->inc(double(prompt_tokens));
  generation_tokens_->inc(double(completion_tokens));
}

std::string ServerMetrics::render(const SchedulerStats& stats) {
  auto gauge = [&](std::string_view name, std::string_view help, int64_t v) { registry_.gauge(name, help).set(double(v)); };
  auto total = [&](std::string_view name, std::string_view help, int64_t v) {
    registry_.counter(name, help).set_total(double(v));
  };
  gauge("statelm_running_sequences", "Sequences holding a state slot now.", stats.running);
  gauge("statelm_waiting_sequences", "Requests queued for a state slot or KV blocks.", stats.waiting);
  gauge("statelm_state_slots_free", "Free recurrent-state slots.", stats.free_slots);
  gauge("statelm_kv_blocks_free", "Free KV cache blocks (attention layers).", stats.free_blocks);
  total("statelm_prefix_cache_hits_total", "Admitted requests that resumed from a prefix checkpoint.", stats.prefix_hits);
  total("statelm_prefix_cache_lookups_total", "Admitted requests that looked in the prefix cache.", stats.prefix_lookups);
  total("statelm_preemptions_total", "Sequences swapped out to host memory.", stats.preemptions);
  total("statelm_scheduler_steps_total", "Scheduler steps that ran the model.", stats.steps);
  return registry_.render();
}

}  // namespace statelm::server
