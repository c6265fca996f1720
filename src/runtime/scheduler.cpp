#include "runtime/scheduler.h"

#include <algorithm>
#include <chrono>

#include "core/error.h"

namespace statelm {

struct Scheduler::Active {
  uint64_t id = 0;
  Request req;
  Sequence seq;
  int64_t prefilled = 0;           // prompt tokens already fed
  std::vector<int32_t> history;    // prompt + generated, for the repetition penalty
  std::unique_ptr<Sampler> sampler;
  int64_t generated = 0;
  int32_t next_input = -1;         // the token the next decode step feeds
  bool done = false;

  bool prefill_done() const { return prefilled == int64_t(req.prompt.size()); }
};

Scheduler::Scheduler(ModelRunner& runner, SchedulerOptions options) : runner_(runner), options_(options) {
  STATELM_CHECK(options_.max_batch_tokens > 0, "max_batch_tokens must be positive");
}

Scheduler::~Scheduler() { stop(); }

uint64_t Scheduler::submit(Request r) {
  r.sampling.validate();
  if (r.prompt.empty()) fail(ErrorKind::InvalidArgument, "prompt: empty prompt (at least one token is needed)");
  const int64_t vocab = runner_.spec().vocab_size;
  for (int32_t id : r.prompt)
    if (id < 0 || id >= vocab) fail(ErrorKind::InvalidArgument, "prompt: token id ", id, " is outside the vocabulary [0, ", vocab, ")");
  const int64_t worst = int64_t(r.prompt.size()) + r.sampling.max_tokens;
  if (!runner_.fits(worst))
    fail(ErrorKind::InvalidArgument, "prompt (", r.prompt.size(), " tokens) + max_tokens (", r.sampling.max_tokens,
         ") exceeds the context limit of ", runner_.max_context(), " tokens");
  std::lock_guard<std::mutex> lock(mu_);
  if (int64_t(incoming_.size()) + stats_.waiting >= options_.max_waiting)
    fail(ErrorKind::OutOfMemory, "the request queue is full (", options_.max_waiting, " waiting)");
  const uint64_t id = next_id_++;
  incoming_.emplace_back(id, std::move(r));
  wake_.notify_one();
  return id;
}

void Scheduler::cancel(uint64_t id) {
  std::lock_guard<std::mutex> lock(mu_);
  cancels_.push_back(id);
  wake_.notify_one();
}

void Scheduler::finish(Active& a, const std::string& reason, const std::string& error) {
  if (a.done) return;
  a.done = true;
  if (a.seq.slot >= 0) runner_.close(a.seq);
  RequestEvent e;
  e.request_id = a.id;
  e.finished = true;
  e.finish_reason = reason;
  e.error = error;
  e.prompt_tokens = int64_t(a.req.prompt.size());
  e.completion_tokens = a.generated;
  if (a.req.on_event) a.req.on_event(e);
}

void Scheduler::admit_incoming() {
  std::vector<uint64_t> cancels;
  {
    std::lock_guard<std::mutex> lock(mu_);
    while (!incoming_.empty()) {
      auto a = std::make_unique<Active>();
      a->id = incoming_.front().first;
      a->req = std::move(incoming_.front().second);
      a->history = a->req.prompt;
      a->sampler = std::make_unique<Sampler>(a->req.sampling);
      waiting_.push_back(std::move(a));
      incoming_.pop_front();
    }
    cancels.swap(cancels_);
  }
  for (uint64_t id : cancels) {
    for (auto& a : running_)
      if (a->id == id) finish(*a, "cancelled");
    for (auto& a : waiting_)
      if (a->id == id) finish(*a, "cancelled");
  }
}

bool Scheduler::step() {
  admit_incoming();
  std::erase_if(waiting_, [](const auto& a) { return a->done; });
  std::erase_if(running_, [](const auto& a) { return a->done; });

  // Pack the batch: decodes first (they hold memory and users are waiting on each token), then
  // prefill chunks of admitted prompts, then newly admitted prompts, FIFO, while budget lasts.
  int64_t budget = options_.max_batch_tokens;
  std::vector<Active*> batch;
  std::vector<std::vector<int32_t>> inputs;
  for (auto& a : running_)
    if (a->prefill_done() && budget > 0) {
      batch.push_back(a.get());
      inputs.push_back({a->next_input});
      --budget;
    }
  auto add_prefill = [&](Active& a) {
    const int64_t n = std::min<int64_t>(budget, int64_t(a.req.prompt.size()) - a.prefilled);
    batch.push_back(&a);
    inputs.emplace_back(a.req.prompt.begin() + a.prefilled, a.req.prompt.begin() + a.prefilled + n);
    budget -= n;
  };
  for (auto& a : running_)
    if (!a->prefill_done() && budget > 0) add_prefill(*a);
  while (budget > 0 && !waiting_.empty()) {
    Active& a = *waiting_.front();
    auto seq = runner_.try_open(int64_t(a.req.prompt.size()) + a.req.sampling.max_tokens);
    if (!seq) break;  // head of line waits for memory: FIFO keeps latecomers from starving it
    a.seq = std::move(*seq);
    running_.push_back(std::move(waiting_.front()));
    waiting_.pop_front();
    add_prefill(*running_.back());
  }
  if (batch.empty()) {
    std::lock_guard<std::mutex> lock(mu_);
    stats_.waiting = int64_t(waiting_.size());
    stats_.running = int64_t(running_.size());
    return false;
  }

  std::vector<Sequence*> seqs;
  for (Active* a : batch) seqs.push_back(&a->seq);
  std::vector<float> logits;
  try {
    logits = runner_.step(seqs, inputs);
  } catch (const std::exception& e) {
    for (Active* a : batch) finish(*a, "error", e.what());
    return true;
  }
  const int64_t vocab = runner_.spec().vocab_size;
  int64_t tokens_in = 0, tokens_out = 0;
  for (size_t i = 0; i < batch.size(); ++i) {
    Active& a = *batch[i];
    if (a.done) continue;
    if (!a.prefill_done()) {
      a.prefilled += int64_t(inputs[i].size());
      tokens_in += int64_t(inputs[i].size());
      if (!a.prefill_done()) continue;  // mid-prompt: these logits predict a known token
    }
    if (a.generated >= a.req.sampling.max_tokens) {
      finish(a, "length");
      continue;
    }
    const int32_t token = a.sampler->sample(std::span(logits.data() + i * size_t(vocab), size_t(vocab)), a.history);
    a.history.push_back(token);
    ++a.generated;
    ++tokens_out;
    RequestEvent e;
    e.request_id = a.id;
    e.token = token;
    e.prompt_tokens = int64_t(a.req.prompt.size());
    e.completion_tokens = a.generated;
    const bool keep_going = a.req.on_event ? a.req.on_event(e) : true;
    const auto& stops = a.req.sampling.stop_token_ids;
    if (!keep_going || std::find(stops.begin(), stops.end(), token) != stops.end()) finish(a, "stop");
    else if (a.generated >= a.req.sampling.max_tokens) finish(a, "length");
    else a.next_input = token;
  }
  std::erase_if(running_, [](const auto& a) { return a->done; });
  std::lock_guard<std::mutex> lock(mu_);
  ++stats_.steps;
  stats_.tokens_in += tokens_in;
  stats_.tokens_out += tokens_out;
  stats_.running = int64_t(running_.size());
  stats_.waiting = int64_t(waiting_.size());
  stats_.free_slots = runner_.free_slots();
  stats_.free_blocks = runner_.free_blocks();
  return true;
}

void Scheduler::run_until_idle() {
  while (true) {
    if (step()) continue;
    std::lock_guard<std::mutex> lock(mu_);
    if (incoming_.empty() && cancels_.empty() && running_.empty() && waiting_.empty()) return;
  }
}

void Scheduler::start() {
  STATELM_CHECK(!thread_.joinable(), "scheduler already started");
  stop_ = false;
  thread_ = std::thread([this] {
    while (!stop_) {
      if (step()) continue;
      std::unique_lock<std::mutex> lock(mu_);
      wake_.wait_for(lock, std::chrono::milliseconds(50),
                     [&] { return stop_ || !incoming_.empty() || !cancels_.empty(); });
    }
  });
}

void Scheduler::stop() {
  if (thread_.joinable()) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    wake_.notify_all();
    thread_.join();
  }
  admit_incoming();
  for (auto& a : running_) finish(*a, "cancelled");
  for (auto& a : waiting_) finish(*a, "cancelled");
  running_.clear();
  waiting_.clear();
}

SchedulerStats Scheduler::stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  return stats_;
}

}  // namespace statelm
