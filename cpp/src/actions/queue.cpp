#include "cplat/queue.hpp"

#include <algorithm>
#include <array>
#include <cmath>
#include <limits>

namespace cplat {

namespace {
constexpr std::array<std::string_view, kNumQueueOrders> kOrderNames = {"fcfs", "sjf", "priority",
                                                                       "wfp3", "unicep", "f1"};
constexpr std::array<std::string_view, kNumBackfillModes> kBackfillNames = {"none", "easy",
                                                                            "conservative", "rlsched"};

bool covers(const Calendar::Vec& have, const Calendar::Vec& need) {
  for (size_t d = 0; d < have.size(); ++d) {
    if (have[d] < need[d]) return false;
  }
  return true;
}
}  // namespace

std::string_view queue_order_name(QueueOrder o) { return kOrderNames[static_cast<size_t>(o)]; }
std::string_view backfill_name(BackfillMode b) { return kBackfillNames[static_cast<size_t>(b)]; }

QueueScheduler::QueueScheduler(Engine& engine, QueueOptions options)
    : engine_(&engine), opts_(options) {}

int32_t QueueScheduler::add_job(int64_t submit, int64_t requested, int32_t num_tasks,
                                const Request& task, double priority) {
  const auto id = static_cast<int32_t>(submit_.size());
  submit_.push_back(submit);
  requested_.push_back(std::max<int64_t>(requested, 1));
  start_.push_back(-1);
  reservation_.push_back(-1);
  num_tasks_.push_back(num_tasks);
  priority_.push_back(priority);
  task_.push_back(task);
  state_.push_back(JobState::kNew);
  reason_.push_back(Code::kOk);
  nodes_.emplace_back();
  gpus_.emplace_back();
  running_pos_.push_back(-1);
  return id;
}

Status QueueScheduler::submit(int32_t job) {
  if (job < 0 || job >= num_jobs() || state(job) != JobState::kNew) {
    return {Code::kInvalidArgument, "Queue"};
  }
  if (!task_[static_cast<size_t>(job)].valid() || num_tasks_[static_cast<size_t>(job)] < 1) {
    return {Code::kInvalidArgument, "Queue"};
  }
  state_[static_cast<size_t>(job)] = JobState::kPending;
  if (!pending_.empty() && submitted_before(job, pending_.back())) fcfs_sorted_ = false;
  pending_.push_back(job);
  ++pending_count_;
  return Status::Ok();
}

bool QueueScheduler::submitted_before(int32_t a, int32_t b) const {
  const int64_t sa = submit_[static_cast<size_t>(a)];
  const int64_t sb = submit_[static_cast<size_t>(b)];
  return sa < sb || (sa == sb && a < b);
}

std::vector<int32_t> QueueScheduler::pending_jobs() {
  compact_pending();
  return pending_;
}

Status QueueScheduler::cancel(int32_t job) {
  if (job < 0 || job >= num_jobs() || state(job) != JobState::kPending) {
    return {Code::kInvalidArgument, "Queue"};
  }
  state_[static_cast<size_t>(job)] = JobState::kCancelled;
  --pending_count_;
  if (locked_head_ == job) locked_head_ = -1;
  return Status::Ok();
}

Calendar::Vec QueueScheduler::need_of(int32_t job) const {
  const Request& t = task_[static_cast<size_t>(job)];
  const int64_t n = num_tasks_[static_cast<size_t>(job)];
  return {t.cpu_milli * n, t.memory_mib * n, t.total_gpu_milli() * n};
}

double QueueScheduler::key(int32_t job, int64_t now) const {
  const auto j = static_cast<size_t>(job);
  const auto s = static_cast<double>(submit_[j]);
  const auto r = static_cast<double>(requested_[j]);
  const auto n = static_cast<double>(num_tasks_[j]);
  const double wait = opts_.rlsched_wait ? -1.0 - s : static_cast<double>(now) - s;
  switch (opts_.order) {
    case QueueOrder::kFcfs: return s;
    case QueueOrder::kSjf: return r;
    case QueueOrder::kPriority: return -priority_[j];
    case QueueOrder::kWfp3: return -std::pow(wait / r, 3.0) * n;
    // The tiny constants keep serial jobs (log2(1) = 0) well defined, as in the heuristic's
    // published form.
    case QueueOrder::kUnicep: return -(wait + 1e-15) / (std::log2(n + 1e-15) * r);
    case QueueOrder::kF1:
      return std::log10(r > 0 ? r : 0.1) * n + 870.0 * std::log10(s > 0 ? s : 0.1);
  }
  return s;
}

bool QueueScheduler::key_less(int32_t a, int32_t b, int64_t now) const {
  const double ka = key(a, now);
  const double kb = key(b, now);
  if (ka != kb) return ka < kb;
  const int64_t sa = submit_[static_cast<size_t>(a)];
  const int64_t sb = submit_[static_cast<size_t>(b)];
  if (sa != sb) return sa < sb;
  return a < b;
}

void QueueScheduler::compact_pending() {
  if (static_cast<int32_t>(pending_.size()) == pending_count_) return;
  std::erase_if(pending_, [&](int32_t j) { return state(j) != JobState::kPending; });
  if (!fcfs_sorted_) {
    std::stable_sort(pending_.begin(), pending_.end(),
                     [&](int32_t a, int32_t b) { return submitted_before(a, b); });
    fcfs_sorted_ = true;
  }
}

int32_t QueueScheduler::select_head(int64_t now) const {
  if (opts_.order == QueueOrder::kFcfs && fcfs_sorted_) {
    for (const int32_t j : pending_) {
      if (state(j) == JobState::kPending) return j;
    }
    return -1;
  }
  int32_t best = -1;
  for (const int32_t j : pending_) {
    if (state(j) != JobState::kPending) continue;
    if (best < 0 || key_less(j, best, now)) best = j;
  }
  return best;
}

void QueueScheduler::sorted_pending(int64_t now, std::vector<int32_t>& out) const {
  out.assign(pending_.begin(), pending_.end());
  if (opts_.order == QueueOrder::kFcfs) {
    if (!fcfs_sorted_) {
      std::stable_sort(out.begin(), out.end(),
                       [&](int32_t a, int32_t b) { return submitted_before(a, b); });
    }
    return;
  }
  // Keys are computed once per job, not once per comparison.
  std::vector<std::pair<double, int32_t>> keyed;
  keyed.reserve(out.size());
  for (const int32_t j : out) keyed.emplace_back(key(j, now), j);
  std::sort(keyed.begin(), keyed.end(), [&](const auto& a, const auto& b) {
    if (a.first != b.first) return a.first < b.first;
    const int64_t sa = submit_[static_cast<size_t>(a.second)];
    const int64_t sb = submit_[static_cast<size_t>(b.second)];
    return sa < sb || (sa == sb && a.second < b.second);
  });
  for (size_t i = 0; i < keyed.size(); ++i) out[i] = keyed[i].second;
}

bool QueueScheduler::try_start(int32_t job, int64_t now) {
  const auto j = static_cast<size_t>(job);
  CPLAT_ASSERT(state_[j] == JobState::kPending);
  const Status s = engine_->place_gang(task_[j], num_tasks_[j], nodes_[j], gpus_[j]);
  reason_[j] = s.code;
  if (!s.ok()) return false;
  state_[j] = JobState::kRunning;
  start_[j] = now;
  --pending_count_;
  running_pos_[j] = static_cast<int32_t>(running_.size());
  running_.push_back(job);
  started_.push_back(job);
  return true;
}

void QueueScheduler::remove_running(int32_t job) {
  const auto pos = static_cast<size_t>(running_pos_[static_cast<size_t>(job)]);
  const int32_t last = running_.back();
  running_[pos] = last;
  running_pos_[static_cast<size_t>(last)] = static_cast<int32_t>(pos);
  running_.pop_back();
  running_pos_[static_cast<size_t>(job)] = -1;
}

Status QueueScheduler::finish(int32_t job) {
  if (job < 0 || job >= num_jobs() || state(job) != JobState::kRunning) {
    return {Code::kInvalidArgument, "Queue"};
  }
  const auto j = static_cast<size_t>(job);
  const Request& t = task_[j];
  const auto per_task = static_cast<size_t>(t.wants_gpu() ? t.num_gpu : 0);
  for (size_t i = 0; i < nodes_[j].size(); ++i) {
    const std::span<const int32_t> g(gpus_[j].data() + i * per_task, per_task);
    const Status s = engine_->release(nodes_[j][i], t, g);
    if (!s.ok()) return s;
  }
  remove_running(job);
  state_[j] = JobState::kDone;
  nodes_[j] = {};
  gpus_[j] = {};
  return Status::Ok();
}

Status QueueScheduler::requeue(int32_t job) {
  if (job < 0 || job >= num_jobs() || state(job) != JobState::kRunning) {
    return {Code::kInvalidArgument, "Queue"};
  }
  const Status s = finish(job);
  if (!s.ok()) return s;
  const auto j = static_cast<size_t>(job);
  state_[j] = JobState::kPending;
  start_[j] = -1;
  reservation_[j] = -1;
  fcfs_sorted_ = false;
  pending_.push_back(job);
  ++pending_count_;
  return Status::Ok();
}

Calendar QueueScheduler::running_calendar(int64_t now) const {
  // Free capacity of the nodes that can take work, plus every running job's resources at its
  // expected end (jobs past their estimate are expected to end any moment: now + 1).
  const ClusterState& st = engine_->state();
  Vec free{0, 0, 0};
  for (int32_t n = 0; n < st.num_nodes(); ++n) {
    if (st.flags(n) != 0) continue;
    free[0] += st.cpu_free(n);
    free[1] += st.memory_free(n);
    free[2] += st.gpu_free_total(n);
  }
  Calendar cal(now, free, opts_.calendar_resolution, opts_.calendar_horizon);
  for (const int32_t j : running_) {
    const int64_t end = start_[static_cast<size_t>(j)] + requested_[static_cast<size_t>(j)];
    cal.add_release(std::max(end, now + 1), need_of(j));
  }
  return cal;
}

void QueueScheduler::backfill_easy(int32_t head, int64_t now) {
  // The head gets a reservation at its earliest start; any other job may start now if it
  // fits in the profile with that reservation in place (ends before it, or uses capacity the
  // head will not need).
  Calendar cal = running_calendar(now);
  const Vec head_need = need_of(head);
  const int64_t t = cal.earliest_start(head_need, requested_[static_cast<size_t>(head)], now);
  if (t != Calendar::kNever) {
    cal.reserve(t, t + requested_[static_cast<size_t>(head)], head_need);
    if (reservation_[static_cast<size_t>(head)] < 0) reservation_[static_cast<size_t>(head)] = t;
  }
  sorted_pending(now, scratch_);
  int32_t tested = 0;
  for (const int32_t j : scratch_) {
    if (j == head || state(j) != JobState::kPending) continue;
    if (opts_.max_backfill_jobs > 0 && tested++ >= opts_.max_backfill_jobs) break;
    const int64_t end = now + requested_[static_cast<size_t>(j)];
    const Vec need = need_of(j);
    if (cal.fits(now, end, need) && try_start(j, now)) cal.reserve(now, end, need);
  }
}

int64_t QueueScheduler::rlsched_reservation(int32_t head) const {
  // Running jobs by expected end; the head's reservation is the end at which enough has been
  // freed (computed once per blocked head, as the published evaluation does).
  const ClusterState& st = engine_->state();
  Vec free{0, 0, 0};
  for (int32_t n = 0; n < st.num_nodes(); ++n) {
    if (st.flags(n) != 0) continue;
    free[0] += st.cpu_free(n);
    free[1] += st.memory_free(n);
    free[2] += st.gpu_free_total(n);
  }
  scratch_.assign(running_.begin(), running_.end());
  std::stable_sort(scratch_.begin(), scratch_.end(), [&](int32_t a, int32_t b) {
    return start_[static_cast<size_t>(a)] + requested_[static_cast<size_t>(a)] <
           start_[static_cast<size_t>(b)] + requested_[static_cast<size_t>(b)];
  });
  const Vec need = need_of(head);
  int64_t est = -1;
  for (const int32_t j : scratch_) {
    const Vec got = need_of(j);
    for (size_t d = 0; d < free.size(); ++d) free[d] += got[d];
    est = start_[static_cast<size_t>(j)] + requested_[static_cast<size_t>(j)];
    if (covers(free, need)) break;
  }
  return est;
}

void QueueScheduler::backfill_rlsched(int32_t head, int64_t now) {
  int64_t est = locked_reservation_;
  if (!opts_.lock_head || est < 0) {
    est = rlsched_reservation(head);
    if (opts_.lock_head) locked_reservation_ = est;
    if (reservation_[static_cast<size_t>(head)] < 0) reservation_[static_cast<size_t>(head)] = est;
  }
  // Candidates in submission order; a candidate must end (by its estimate) strictly before
  // the head's reservation. There is no "spare capacity" rule.
  std::vector<int32_t> order(pending_.begin(), pending_.end());
  if (!fcfs_sorted_) {
    std::stable_sort(order.begin(), order.end(),
                     [&](int32_t a, int32_t b) { return submitted_before(a, b); });
  }
  int32_t tested = 0;
  for (const int32_t j : order) {
    if (j == head || state(j) != JobState::kPending) continue;
    if (opts_.max_backfill_jobs > 0 && tested++ >= opts_.max_backfill_jobs) break;
    if (now + requested_[static_cast<size_t>(j)] < est) try_start(j, now);
  }
}

void QueueScheduler::backfill_conservative(int64_t now) {
  // Every pending job, in queue order, gets the earliest reservation that delays no earlier
  // one; jobs whose reservation is now start now.
  Calendar cal = running_calendar(now);
  sorted_pending(now, scratch_);
  int32_t tested = 0;
  for (const int32_t j : scratch_) {
    if (state(j) != JobState::kPending) continue;
    if (opts_.max_backfill_jobs > 0 && tested++ >= opts_.max_backfill_jobs) break;
    const int64_t req = requested_[static_cast<size_t>(j)];
    const Vec need = need_of(j);
    int64_t t = cal.earliest_start(need, req, now);
    if (t == Calendar::kNever) continue;
    if (reservation_[static_cast<size_t>(j)] < 0) reservation_[static_cast<size_t>(j)] = t;
    if (t == now) {
      if (try_start(j, now)) {
        cal.reserve(now, now + req, need);
        continue;
      }
      // The aggregate fits but the nodes do not (fragmentation): reserve the next chance.
      t = cal.earliest_start(need, req, now + 1);
      if (t == Calendar::kNever) continue;
    }
    cal.reserve(t, t + req, need);
  }
}

const std::vector<int32_t>& QueueScheduler::cycle(int64_t now) {
  started_.clear();
  compact_pending();
  while (pending_count_ > 0) {
    int32_t head = -1;
    if (opts_.lock_head && locked_head_ >= 0 && state(locked_head_) == JobState::kPending) {
      head = locked_head_;
    } else {
      head = select_head(now);
      if (locked_head_ != head) locked_reservation_ = -1;
      locked_head_ = opts_.lock_head ? head : -1;
    }
    if (head < 0) break;
    if (try_start(head, now)) {
      locked_head_ = -1;
      locked_reservation_ = -1;
      continue;
    }
    switch (opts_.backfill) {
      case BackfillMode::kNone: break;
      case BackfillMode::kEasy: backfill_easy(head, now); break;
      case BackfillMode::kRlsched: backfill_rlsched(head, now); break;
      case BackfillMode::kConservative: backfill_conservative(now); break;
    }
    break;
  }
  return started_;
}

}  // namespace cplat
