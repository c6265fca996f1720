// The metrics registry behind `GET /metrics`: exact Prometheus text exposition output for
// counters, gauges and histograms (escaping, inclusive `le` buckets, cumulative counts), and
// updates from several threads at once adding up.
#include <gtest/gtest.h>

#include <cmath>
#include <thread>
#include <vector>

#include "server/metrics.h"

namespace statelm::server {
namespace {

TEST(Metrics, RendersExpositionText) {
  MetricsRegistry r;
  r.counter("reqs_total", "Requests.", {{"status", "200"}}).inc();
  r.counter("reqs_total", "Requests.", {{"status", "200"}}).inc(2);  // the same series
  r.counter("reqs_total", "Requests.", {{"status", "a\"b\\c\nd"}});
  Histogram& h = r.histogram("lat_seconds", "Latency.\nSecond line \\ here.", {0.5, 1});
  for (double v : {0.25, 0.5, 3.0}) h.observe(v);  // 0.5 lands in le="0.5": bounds are inclusive
  r.gauge("busy", "Busy now.").set(2);
  EXPECT_EQ(r.render(),
            "# HELP reqs_total Requests.\n"
            "# TYPE reqs_total counter\n"
            "reqs_total{status=\"200\"} 3\n"
            "reqs_total{status=\"a\\\"b\\\\c\\nd\"} 0\n"
            "# HELP lat_seconds Latency.\\nSecond line \\\\ here.\n"
            "# TYPE lat_seconds histogram\n"
            "lat_seconds_bucket{le=\"0.5\"} 2\n"
            "lat_seconds_bucket{le=\"1\"} 2\n"
            "lat_seconds_bucket{le=\"+Inf\"} 3\n"
            "lat_seconds_sum 3.75\n"
            "lat_seconds_count 3\n"
            "# HELP busy Busy now.\n"
            "# TYPE busy gauge\n"
            "busy 2\n");
}

TEST(Metrics, ValuesAreShortestRoundTrip) {
  EXPECT_EQ(format_metric_value(0.005), "0.005");
  EXPECT_EQ(format_metric_value(42), "42");
  EXPECT_EQ(format_metric_value(INFINITY), "+Inf");
  EXPECT_EQ(format_metric_value(NAN), "NaN");
}

TEST(Metrics, OneNameIsOneType) {
  MetricsRegistry r;
  r.counter("x_total", "X.");
  EXPECT_ANY_THROW(r.gauge("x_total", "X."));
}

TEST(Metrics, ConcurrentUpdatesAddUp) {
  MetricsRegistry r;
  Counter& c = r.counter("n_total", "N.");
  Histogram& h = r.histogram("v", "V.", {1});
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t)
    threads.emplace_back([&] {
      for (int i = 0; i < 1000; ++i) {
        c.inc();
        h.observe(i % 2 ? 0.5 : 2.0);
      }
    });
  for (auto& t : threads) t.join();
  EXPECT_EQ(c.value(), 4000);
  Histogram::Snapshot s = h.snapshot();
  EXPECT_EQ(s.count, 4000u);
  EXPECT_EQ(s.cumulative, (std::vector<uint64_t>{2000, 4000}));
  EXPECT_EQ(s.sum, 2000 * 0.5 + 2000 * 2.0);
}

TEST(Metrics, ServerMetricsListEveryFamilyFromTheStart) {
  ServerMetrics m;
  SchedulerStats st;
  st.free_slots = 4;
  const std::string text = m.render(st);
  for (const char* line : {"statelm_requests_total{status=\"503\"} 0\n", "statelm_prompt_tokens_total 0\n",
                           "statelm_time_to_first_token_seconds_count 0\n",
                           "statelm_inter_token_latency_seconds_bucket{le=\"+Inf\"} 0\n",
                           "statelm_state_slots_free 4\n", "statelm_scheduler_steps_total 0\n",
                           "# TYPE statelm_running_sequences gauge\n", "# TYPE statelm_preemptions_total counter\n"})
    EXPECT_NE(text.find(line), std::string::npos) << line << "\nin\n" << text;
}

}  // namespace
}  // namespace statelm::server
