#include "cplat/replay.hpp"

#include <algorithm>
#include <limits>
#include <numeric>
#include <stdexcept>
#include <string>
#include <utility>

#include "cplat/check.hpp"

namespace cplat {

namespace {
constexpr int32_t kFinish = 0;
constexpr int32_t kWakeup = 4;
}  // namespace

Replay::Replay(QueueScheduler& queue, Engine& engine, std::vector<int64_t> wall,
               std::vector<int64_t> wakeups, int64_t horizon, bool track_gpu)
    : queue_(&queue),
      engine_(&engine),
      wall_(std::move(wall)),
      horizon_(horizon),
      track_gpu_(track_gpu) {
  const int32_t n = queue.num_jobs();
  if (wall_.size() != static_cast<size_t>(n)) {
    throw std::invalid_argument("replay: one run time per job (" + std::to_string(n) +
                                " jobs, " + std::to_string(wall_.size()) + " run times)");
  }
  for (const int64_t w : wall_) check_range(w, 0, kMaxTime, "run time");
  for (const int64_t t : wakeups) check_range(t, -kMaxTime, kMaxTime, "wake-up time");
  check_range(horizon, -1, kMaxTime, "horizon");
  for (int32_t j = 0; j < n; ++j) {
    if (queue.state(j) != JobState::kNew) {
      throw std::invalid_argument("replay: job " + std::to_string(j) + " was already submitted");
    }
  }
  order_.resize(static_cast<size_t>(n));
  std::iota(order_.begin(), order_.end(), 0);
  std::stable_sort(order_.begin(), order_.end(), [&](int32_t a, int32_t b) {
    return queue.submit_time(a) < queue.submit_time(b);
  });
  start_.assign(static_cast<size_t>(n), -1);
  end_.assign(static_cast<size_t>(n), -1);
  for (const int64_t t : wakeups) push(t, kWakeup, 0);
}

void Replay::push(int64_t time, int32_t kind, int32_t job) {
  events_.push({time, kind, seq_++, job});
}

void Replay::started_now(int64_t now) {
  for (const int32_t job : queue_->cycle(now)) {
    CPLAT_ASSERT(queue_->state(job) == JobState::kRunning);
    const auto j = static_cast<size_t>(job);
    start_[j] = now;
    placed_job_.push_back(job);
    placed_node_at_.push_back(static_cast<int64_t>(placed_nodes_.size()));
    placed_gpu_at_.push_back(static_cast<int64_t>(placed_gpus_.size()));
    const auto nodes = queue_->nodes_of(job);
    const auto gpus = queue_->gpus_of(job);
    placed_nodes_.insert(placed_nodes_.end(), nodes.begin(), nodes.end());
    placed_gpus_.insert(placed_gpus_.end(), gpus.begin(), gpus.end());
    push(now + wall_[j], kFinish, job);
  }
}

bool Replay::run(int64_t finished_goal) {
  const size_t n = order_.size();
  while (!done_) {
    const int64_t t_arrive = next_arrival_ < n
                                 ? queue_->submit_time(order_[next_arrival_])
                                 : std::numeric_limits<int64_t>::max();
    const int64_t t_event =
        events_.empty() ? std::numeric_limits<int64_t>::max() : events_.top().time;
    if (next_arrival_ >= n && events_.empty()) break;
    const int64_t now = std::min(t_arrive, t_event);
    if (horizon_ >= 0 && now > horizon_) break;
    // Ends first (in the order they were planned), wake-ups only wake the loop.
    finishing_.clear();
    while (!events_.empty() && events_.top().time == now) {
      const Event e = events_.top();
      events_.pop();
      ++popped_;
      if (e.kind == kFinish) finishing_.push_back(e.job);
    }
    for (const int32_t job : finishing_) {
      [[maybe_unused]] const Status s = queue_->finish(job);
      CPLAT_ASSERT(s.ok());
      end_[static_cast<size_t>(job)] = now;
    }
    finished_ += static_cast<int64_t>(finishing_.size());
    // Arrivals at this instant, in (submit, index) order.
    while (next_arrival_ < n && queue_->submit_time(order_[next_arrival_]) == now) {
      (void)queue_->submit(order_[next_arrival_]);
      ++next_arrival_;
    }
    started_now(now);
    ++cycles_;
    if (track_gpu_) {
      gpu_series_.push_back(static_cast<double>(now));
      gpu_series_.push_back(static_cast<double>(engine_->state().allocated_gpu_milli()));
      gpu_series_.push_back(engine_->frag().total());
    }
    if (finished_ >= finished_goal) return false;
  }
  done_ = true;
  return true;
}

std::vector<int32_t> Replay::flatten(bool devices, std::vector<int64_t>& offsets) const {
  const size_t n = start_.size();
  const std::vector<int64_t>& at = devices ? placed_gpu_at_ : placed_node_at_;
  const std::vector<int32_t>& flat = devices ? placed_gpus_ : placed_nodes_;
  // Each job starts at most once here (no preemption, no failures).
  std::vector<int64_t> from(n, -1), count(n, 0);
  for (size_t k = 0; k < placed_job_.size(); ++k) {
    const auto j = static_cast<size_t>(placed_job_[k]);
    const int64_t next =
        k + 1 < placed_job_.size() ? at[k + 1] : static_cast<int64_t>(flat.size());
    from[j] = at[k];
    count[j] = next - at[k];
  }
  offsets.assign(n + 1, 0);
  for (size_t j = 0; j < n; ++j) offsets[j + 1] = offsets[j] + count[j];
  std::vector<int32_t> out(static_cast<size_t>(offsets[n]));
  for (size_t j = 0; j < n; ++j) {
    if (count[j] == 0) continue;
    std::copy_n(flat.begin() + from[j], count[j], out.begin() + offsets[j]);
  }
  return out;
}

std::vector<int32_t> Replay::nodes(std::vector<int64_t>& offsets) const {
  return flatten(false, offsets);
}

std::vector<int32_t> Replay::gpus(std::vector<int64_t>& offsets) const {
  return flatten(true, offsets);
}

}  // namespace cplat
