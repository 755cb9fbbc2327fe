#include "cplat/queue.hpp"

#include <algorithm>
#include <array>
#include <cmath>
#include <limits>
#include <stdexcept>
#include <string>

#include "cplat/check.hpp"
#include "queue_detail.hpp"

namespace cplat {

namespace {
constexpr std::array<std::string_view, kNumQueueOrders> kOrderNames = {"fcfs", "sjf", "priority",
                                                                       "wfp3", "unicep", "f1"};
constexpr std::array<std::string_view, kNumBackfillModes> kBackfillNames = {"none", "easy",
                                                                            "conservative", "rlsched"};
constexpr std::array<std::string_view, kNumPreemptionModes> kPreemptionNames = {
    "none", "priority", "reclaim", "both"};

}  // namespace

std::string_view queue_order_name(QueueOrder o) { return kOrderNames[static_cast<size_t>(o)]; }
std::string_view backfill_name(BackfillMode b) { return kBackfillNames[static_cast<size_t>(b)]; }
std::string_view preemption_name(Preemption p) { return kPreemptionNames[static_cast<size_t>(p)]; }

QueueScheduler::QueueScheduler(Engine& engine, QueueOptions options)
    : engine_(&engine), opts_(options), victim_rng_(options.seed) {
  check_range(opts_.grace_period, 0, kMaxTime, "grace_period");
  check_range(opts_.calendar_resolution, 1, kMaxTime, "calendar_resolution");
  check_range(opts_.calendar_horizon, 0, kMaxTime, "calendar_horizon");
  check_range(opts_.backfill_interval, 0, kMaxTime, "backfill_interval");
  check_range(opts_.max_backfill_jobs, 0, std::numeric_limits<int32_t>::max(), "max_backfill_jobs");
  // Bounded conservative backfilling plans on horizon / resolution slots.
  if (opts_.backfill == BackfillMode::kConservative &&
      (opts_.calendar_horizon + opts_.calendar_resolution - 1) / opts_.calendar_resolution >
          kMaxSlots) {
    throw std::invalid_argument(
        "conservative backfill plans at most 2^20 slots: calendar_horizon / "
        "calendar_resolution is " +
        std::to_string(opts_.calendar_horizon / opts_.calendar_resolution));
  }
}

size_t QueueScheduler::index(int64_t job) const { return checked_index(job, num_jobs(), "job"); }

void QueueScheduler::check_job(const JobSpec& job) {
  check_range(job.submit, -kMaxTime, kMaxTime, "submit");
  // NaN breaks the strict weak order the queue's sorts rely on (undefined behaviour).
  if (std::isnan(job.priority)) throw std::invalid_argument("priority must not be NaN");
}

int32_t QueueScheduler::add_jobs(std::span<const JobSpec> jobs) {
  for (const JobSpec& j : jobs) check_job(j);
  if (jobs.size() > static_cast<size_t>(std::numeric_limits<int32_t>::max() - num_jobs())) {
    throw std::invalid_argument("a queue holds at most 2^31 - 1 jobs");
  }
  const int32_t first = num_jobs();
  for (const JobSpec& j : jobs) add_job(j.submit, j.requested, j.num_tasks, j.task, j.priority);
  return first;
}

int32_t QueueScheduler::add_job(int64_t submit, int64_t requested, int32_t num_tasks,
                                const Request& task, double priority) {
  check_job(JobSpec{submit, requested, num_tasks, task, priority});
  if (num_jobs() == std::numeric_limits<int32_t>::max()) {
    throw std::invalid_argument("a queue holds at most 2^31 - 1 jobs");
  }
  const auto id = static_cast<int32_t>(submit_.size());
  submit_.push_back(submit);
  requested_.push_back(std::clamp<int64_t>(requested, 1, kMaxTime));
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
  project_.push_back(-1);
  exclusive_.push_back(0);
  min_tasks_.push_back(num_tasks);
  terminating_.push_back(0);
  ckpt_interval_.push_back(0);
  ckpt_cost_.push_back(0);
  need_full_.push_back({});
  return id;
}

void QueueScheduler::set_quotas(std::vector<QuotaSpec> quotas, std::vector<CohortSpec> cohorts) {
  quota_.set(std::move(quotas), std::move(cohorts));  // checks everything first
  after_quotas_changed();
}

void QueueScheduler::set_quotas(std::span<const int32_t> cohort, std::span<const int64_t> nominal,
                                std::span<const int64_t> borrowing,
                                std::span<const int64_t> lending,
                                std::span<const int32_t> cohort_parent,
                                std::span<const int64_t> cohort_borrowing) {
  quota_.set(cohort, nominal, borrowing, lending, cohort_parent, cohort_borrowing);
  after_quotas_changed();
}

void QueueScheduler::after_quotas_changed() {
  // Jobs keep their project only where the new table has it; running jobs are charged anew.
  for (int32_t& p : project_) {
    if (p >= quota_.num_projects()) p = -1;
  }
  quota_.clear_usage();
  for (const int32_t j : running_) charge(j, +1);
}

void QueueScheduler::set_job_meta(int64_t job, int32_t project, int64_t checkpoint_interval,
                                  int64_t checkpoint_cost) {
  const size_t j = index(job);
  check_range(checkpoint_interval, std::numeric_limits<int64_t>::min(), kMaxTime,
              "checkpoint_interval");
  check_range(checkpoint_cost, std::numeric_limits<int64_t>::min(), kMaxTime, "checkpoint_cost");
  const auto id = static_cast<int32_t>(j);
  if (state_[j] == JobState::kRunning) charge(id, -1);
  project_[j] = (project >= 0 && project < quota_.num_projects()) ? project : -1;
  if (state_[j] == JobState::kRunning) charge(id, +1);
  ckpt_interval_[j] = std::max<int64_t>(checkpoint_interval, 0);
  ckpt_cost_[j] = std::max<int64_t>(checkpoint_cost, 0);
}

namespace {
void check_lengths(size_t a, size_t b, const char* what) {
  if (a != b) {
    throw std::invalid_argument(std::string(what) + " must have one entry per job (" +
                                std::to_string(a) + "), got " + std::to_string(b));
  }
}
}  // namespace

void QueueScheduler::set_job_meta(std::span<const int64_t> jobs, std::span<const int32_t> projects,
                                  std::span<const int64_t> intervals,
                                  std::span<const int64_t> costs) {
  check_lengths(jobs.size(), projects.size(), "projects");
  check_lengths(jobs.size(), intervals.size(), "checkpoint intervals");
  check_lengths(jobs.size(), costs.size(), "checkpoint costs");
  for (size_t i = 0; i < jobs.size(); ++i) {
    index(jobs[i]);
    check_range(intervals[i], std::numeric_limits<int64_t>::min(), kMaxTime, "checkpoint_interval");
    check_range(costs[i], std::numeric_limits<int64_t>::min(), kMaxTime, "checkpoint_cost");
  }
  for (size_t i = 0; i < jobs.size(); ++i) set_job_meta(jobs[i], projects[i], intervals[i], costs[i]);
}

void QueueScheduler::set_priority(int64_t job, double priority) {
  const size_t j = index(job);
  if (std::isnan(priority)) throw std::invalid_argument("priority must not be NaN");
  priority_[j] = priority;
}

void QueueScheduler::set_priorities(std::span<const int64_t> jobs,
                                    std::span<const double> priorities) {
  check_lengths(jobs.size(), priorities.size(), "priorities");
  for (size_t i = 0; i < jobs.size(); ++i) {
    index(jobs[i]);
    if (std::isnan(priorities[i])) throw std::invalid_argument("priority must not be NaN");
  }
  for (size_t i = 0; i < jobs.size(); ++i) priority_[static_cast<size_t>(jobs[i])] = priorities[i];
}

void QueueScheduler::set_exclusive(int64_t job, bool exclusive) {
  const size_t j = index(job);
  // A running exclusive job has flagged its nodes; finish clears them only if it still is.
  if (state_[j] == JobState::kRunning && (exclusive_[j] != 0) != exclusive) {
    throw std::invalid_argument("job " + std::to_string(job) +
                                " is running: its exclusivity cannot change");
  }
  exclusive_[j] = exclusive ? 1 : 0;
}

void QueueScheduler::set_exclusive(std::span<const int64_t> jobs,
                                   std::span<const uint8_t> exclusive) {
  check_lengths(jobs.size(), exclusive.size(), "exclusive flags");
  for (size_t i = 0; i < jobs.size(); ++i) {
    const size_t j = index(jobs[i]);
    if (state_[j] == JobState::kRunning && exclusive_[j] != (exclusive[i] != 0 ? 1 : 0)) {
      throw std::invalid_argument("job " + std::to_string(jobs[i]) +
                                  " is running: its exclusivity cannot change");
    }
  }
  for (size_t i = 0; i < jobs.size(); ++i) set_exclusive(jobs[i], exclusive[i] != 0);
}

const Calendar::Vec& QueueScheduler::usage(int64_t project) const {
  return quota_.usage_of(project);
}

bool QueueScheduler::terminating(int64_t job) const { return terminating_[index(job)] != 0; }

void QueueScheduler::charge(int32_t job, int64_t sign) {
  quota_.charge(project_[static_cast<size_t>(job)], need_of(job), sign);
}

bool QueueScheduler::quota_admits(int32_t job) const {
  const int32_t min = min_tasks_[static_cast<size_t>(job)];
  const Request& t = task_[static_cast<size_t>(job)];
  // An elastic job is admissible if its smallest size is.
  return quota_admits_need(job, {t.cpu_milli * min, t.memory_mib * min, t.total_gpu_milli() * min});
}

bool QueueScheduler::quota_admits_need(int32_t job, const Vec& need) const {
  return quota_.admits(project_[static_cast<size_t>(job)], need);
}

Calendar::Vec QueueScheduler::available_free() const {
  const ClusterState& st = engine_->state();
  Vec free{0, 0, 0};
  for (int32_t n = 0; n < st.num_nodes(); ++n) {
    if (st.flags(n) != 0) continue;
    free[0] += st.cpu_free(n);
    free[1] += st.memory_free(n);
    free[2] += st.gpu_free_total(n);
  }
  return free;
}

Status QueueScheduler::submit(int64_t job_id) {
  if (job_id < 0 || job_id >= num_jobs()) return {Code::kInvalidArgument, "Queue"};
  const auto job = static_cast<int32_t>(job_id);
  if (state_of(job) != JobState::kNew) return {Code::kInvalidArgument, "Queue"};
  const auto j = static_cast<size_t>(job);
  if (!task_[j].valid() || num_tasks_[j] < 1 || num_tasks_[j] > kMaxTasks) {
    return {Code::kInvalidArgument, "Queue"};
  }
  state_[j] = JobState::kPending;
  note_need(job);
  if (!pending_.empty() && submitted_before(job, pending_.back())) fcfs_sorted_ = false;
  pending_.push_back(job);
  ++pending_count_;
  return Status::Ok();
}

int32_t QueueScheduler::submit_many(std::span<const int64_t> jobs) {
  int32_t ok = 0;
  for (const int64_t j : jobs) ok += submit(j).ok() ? 1 : 0;
  return ok;
}

int32_t QueueScheduler::finish_many(std::span<const int64_t> jobs) {
  int32_t ok = 0;
  for (const int64_t j : jobs) ok += finish(j).ok() ? 1 : 0;
  return ok;
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

Status QueueScheduler::cancel(int64_t job) {
  if (job < 0 || job >= num_jobs() || state_of(static_cast<int32_t>(job)) != JobState::kPending) {
    return {Code::kInvalidArgument, "Queue"};
  }
  state_[static_cast<size_t>(job)] = JobState::kCancelled;
  --pending_count_;
  if (locked_head_ == job) locked_head_ = -1;
  return Status::Ok();
}

void QueueScheduler::set_min_tasks(int64_t job, int32_t min_tasks) {
  const size_t j = index(job);
  check_range(min_tasks, 1, std::numeric_limits<int32_t>::max(), "min_tasks");
  // A job registered with fewer than one task (which submit refuses) is simply not elastic;
  // std::clamp with hi < lo would be undefined.
  min_tasks_[j] = std::clamp(min_tasks, 1, std::max(num_tasks_[j], 1));
}

void QueueScheduler::set_min_tasks(std::span<const int64_t> jobs,
                                   std::span<const int32_t> min_tasks) {
  check_lengths(jobs.size(), min_tasks.size(), "minimums");
  for (size_t i = 0; i < jobs.size(); ++i) {
    index(jobs[i]);
    check_range(min_tasks[i], 1, std::numeric_limits<int32_t>::max(), "min_tasks");
  }
  for (size_t i = 0; i < jobs.size(); ++i) set_min_tasks(jobs[i], min_tasks[i]);
}

int32_t QueueScheduler::tasks_of(int64_t job) const {
  return tasks_now(static_cast<int32_t>(index(job)));
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
  std::erase_if(pending_, [&](int32_t j) { return state_of(j) != JobState::kPending; });
  if (!fcfs_sorted_) {
    std::stable_sort(pending_.begin(), pending_.end(),
                     [&](int32_t a, int32_t b) { return submitted_before(a, b); });
    fcfs_sorted_ = true;
  }
}

int32_t QueueScheduler::select_head(int64_t now) {
  // Jobs whose project has no quota left do not block the queue: they wait aside.
  const bool quotas = !quota_.empty();
  auto eligible = [&](int32_t j) {
    if (state_of(j) != JobState::kPending) return false;
    if (quotas && !quota_admits(j)) {
      reason_[static_cast<size_t>(j)] = Code::kQuotaExceeded;
      return false;
    }
    return true;
  };
  if (opts_.order == QueueOrder::kFcfs && fcfs_sorted_) {
    for (const int32_t j : pending_) {
      if (eligible(j)) return j;
    }
    return -1;
  }
  int32_t best = -1;
  for (const int32_t j : pending_) {
    if (!eligible(j)) continue;
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

int32_t QueueScheduler::add_reservation(Reservation r) {
  check_range(r.start, -kMaxTime, kMaxTime, "start");
  check_range(r.end, -kMaxTime, kMaxTime, "end");
  if (r.end <= r.start) {
    throw std::invalid_argument("a reservation must end after it starts (start " +
                                std::to_string(r.start) + ", end " + std::to_string(r.end) + ")");
  }
  const int32_t num_nodes = engine_->state().num_nodes();
  for (const int32_t n : r.nodes) checked_index(n, num_nodes, "reservation node");
  if (reservations_.size() >= static_cast<size_t>(std::numeric_limits<int32_t>::max())) {
    throw std::invalid_argument("a queue holds at most 2^31 - 1 reservations");
  }
  std::sort(r.nodes.begin(), r.nodes.end());
  r.nodes.erase(std::unique(r.nodes.begin(), r.nodes.end()), r.nodes.end());
  reservations_.push_back(std::move(r));
  return static_cast<int32_t>(reservations_.size()) - 1;
}

void QueueScheduler::mask_nodes(int32_t job, int64_t now) {
  // Hide the nodes this job may not use from the engine for one placement: other projects'
  // reservations it would overlap (by its estimate), and for an exclusive job every node
  // that is not idle.
  ClusterState& st = engine_->state();
  const auto j = static_cast<size_t>(job);
  auto mask = [&](int32_t n) {
    if ((st.flags(n) & kNodeReserved) == 0) {
      st.set_flags_unchecked(n, static_cast<uint8_t>(st.flags(n) | kNodeReserved));
      masked_.push_back(n);
    }
  };
  const int64_t end = now + requested_[j];
  for (const Reservation& r : reservations_) {
    if (r.owner >= 0 && r.owner == project_[j]) continue;
    if (now < r.end && end > r.start) {
      for (const int32_t n : r.nodes) mask(n);
    }
  }
  if (exclusive_[j] != 0) {
    for (int32_t n = 0; n < st.num_nodes(); ++n) {
      const bool idle = st.cpu_free(n) == st.cpu_capacity(n) &&
                        st.memory_free(n) == st.memory_capacity(n) &&
                        st.gpu_free_total(n) == st.gpu_count(n) * kMilliGpu;
      if (!idle) mask(n);
    }
  }
}

void QueueScheduler::unmask_nodes() {
  ClusterState& st = engine_->state();
  for (const int32_t n : masked_) {
    st.set_flags_unchecked(n, static_cast<uint8_t>(st.flags(n) & ~kNodeReserved));
  }
  masked_.clear();
}

void QueueScheduler::set_exclusive_flags(int32_t job, bool on) {
  ClusterState& st = engine_->state();
  for (const int32_t n : nodes_[static_cast<size_t>(job)]) {
    const auto f = static_cast<uint8_t>(on ? (st.flags(n) | kNodeExclusive)
                                           : (st.flags(n) & ~kNodeExclusive));
    if (f != st.flags(n)) st.set_flags_unchecked(n, f);
  }
}

bool QueueScheduler::try_start(int32_t job, int64_t now) {
  const auto j = static_cast<size_t>(job);
  CPLAT_ASSERT(state_[j] == JobState::kPending);
  if (!quota_.empty() && !quota_admits(job)) {
    reason_[j] = Code::kQuotaExceeded;
    return false;
  }
  if (elastic(job)) return start_elastic(job, now);
  const bool restricted = !reservations_.empty() || exclusive_[j] != 0;
  if (restricted) mask_nodes(job, now);
  const Status s =
      opts_.topology_aware || opts_.max_span != SpanLimit::kNone
          ? engine_->place_gang_topology(task_[j], num_tasks_[j], opts_.max_span, nodes_[j],
                                         gpus_[j])
          : engine_->place_gang(task_[j], num_tasks_[j], nodes_[j], gpus_[j]);
  if (restricted) unmask_nodes();
  reason_[j] = s.code;
  if (!s.ok()) return false;
  mark_running(job, now);
  return true;
}

bool QueueScheduler::start_elastic(int32_t job, int64_t now) {
  // As large as fits: start from what the free capacity and the quota allow, step down to
  // the minimum. Each try is an all-or-nothing gang placement.
  const auto j = static_cast<size_t>(job);
  const Request& t = task_[j];
  const Vec free = available_free();
  int32_t top = num_tasks_[j];
  const Vec one{t.cpu_milli, t.memory_mib, t.total_gpu_milli()};
  for (size_t d = 0; d < one.size(); ++d) {
    if (one[d] > 0) top = static_cast<int32_t>(std::min<int64_t>(top, free[d] / one[d]));
  }
  const bool restricted = !reservations_.empty() || exclusive_[j] != 0;
  for (int32_t count = top; count >= min_tasks_[j]; --count) {
    if (!quota_.empty() &&
        !quota_admits_need(job, {one[0] * count, one[1] * count, one[2] * count})) {
      reason_[j] = Code::kQuotaExceeded;
      continue;
    }
    if (restricted) mask_nodes(job, now);
    const Status s = engine_->place_gang(t, count, nodes_[j], gpus_[j]);
    if (restricted) unmask_nodes();
    reason_[j] = s.code;
    if (!s.ok()) continue;
    mark_running(job, now);
    return true;
  }
  if (top < min_tasks_[j]) reason_[j] = Code::kInsufficientCpu;
  return false;
}

Calendar::Vec QueueScheduler::shrink(int32_t job, int32_t tasks) {
  const auto j = static_cast<size_t>(job);
  const Request& t = task_[j];
  const auto per = static_cast<size_t>(t.wants_gpu() ? t.num_gpu : 0);
  Vec freed{0, 0, 0};
  for (int32_t k = 0; k < tasks && nodes_[j].size() > static_cast<size_t>(min_tasks_[j]); ++k) {
    const size_t i = nodes_[j].size() - 1;
    const std::span<const int32_t> g(gpus_[j].data() + i * per, per);
    if (!engine_->release(nodes_[j][i], t, g).ok()) break;
    charge(job, -1);  // usage follows the task count: take all, give back the rest
    nodes_[j].pop_back();
    gpus_[j].resize(gpus_[j].size() - per);
    charge(job, +1);
    freed[0] += t.cpu_milli;
    freed[1] += t.memory_mib;
    freed[2] += t.total_gpu_milli();
  }
  if (freed[0] + freed[1] + freed[2] > 0) resized_.push_back(job);
  return freed;
}

void QueueScheduler::grow(int64_t now) {
  // Nobody waits: elastic jobs take idle capacity, one task at a time, oldest first.
  (void)now;
  std::vector<int32_t> order(running_.begin(), running_.end());
  std::sort(order.begin(), order.end(), [&](int32_t a, int32_t b) {
    return start_[static_cast<size_t>(a)] < start_[static_cast<size_t>(b)] ||
           (start_[static_cast<size_t>(a)] == start_[static_cast<size_t>(b)] && a < b);
  });
  std::vector<int32_t> gpus;
  for (const int32_t job : order) {
    const auto j = static_cast<size_t>(job);
    if (!elastic(job) || exclusive_[j] != 0) continue;
    const Request& t = task_[j];
    bool grew = false;
    while (static_cast<int32_t>(nodes_[j].size()) < num_tasks_[j]) {
      if (!quota_.empty() && !quota_admits_need(job, {t.cpu_milli, t.memory_mib, t.total_gpu_milli()})) {
        break;
      }
      int32_t node = -1;
      if (!engine_->place(t, node, gpus).ok()) break;
      charge(job, -1);
      nodes_[j].push_back(node);
      gpus_[j].insert(gpus_[j].end(), gpus.begin(), gpus.end());
      charge(job, +1);
      grew = true;
    }
    if (grew) resized_.push_back(job);
  }
}

void QueueScheduler::note_need(int32_t job) {
  // Called once the request and the count are checked (bounded): the products cannot overflow.
  const auto j = static_cast<size_t>(job);
  const Request& t = task_[j];
  const int64_t n = num_tasks_[j];
  need_full_[j] = {t.cpu_milli * n, t.memory_mib * n, t.total_gpu_milli() * n};
  for (size_t d = 0; d < min_need_.size(); ++d) {
    min_need_[d] = std::min(min_need_[d], need_full_[j][d]);
  }
}

void QueueScheduler::mark_running(int32_t job, int64_t start, bool restored) {
  // The one way into the running state: the job holds its nodes_ / gpus_ already.
  const auto j = static_cast<size_t>(job);
  CPLAT_ASSERT(state_[j] == JobState::kPending || (restored && state_[j] == JobState::kNew));
  CPLAT_ASSERT(!nodes_[j].empty());
  const bool was_pending = state_[j] == JobState::kPending;
  if (exclusive_[j] != 0) set_exclusive_flags(job, true);
  state_[j] = JobState::kRunning;
  start_[j] = start;
  terminating_[j] = 0;
  charge(job, +1);  // after nodes_ and the state: an elastic job is charged for its tasks
  if (was_pending) --pending_count_;
  add_running(job);
  if (!restored) started_.push_back(job);
}

void QueueScheduler::add_running(int32_t job) {
  const auto j = static_cast<size_t>(job);
  running_pos_[j] = static_cast<int32_t>(running_.size());
  running_.push_back(job);
  [[maybe_unused]] const bool fresh = by_end_.emplace(start_[j] + requested_[j], job).second;
  CPLAT_ASSERT(fresh);
  CPLAT_ASSERT(by_end_.size() == running_.size());
}

void QueueScheduler::remove_running(int32_t job) {
  const auto j = static_cast<size_t>(job);
  [[maybe_unused]] const size_t erased = by_end_.erase({start_[j] + requested_[j], job});
  CPLAT_ASSERT(erased == 1);
  const auto pos = static_cast<size_t>(running_pos_[static_cast<size_t>(job)]);
  const int32_t last = running_.back();
  running_[pos] = last;
  running_pos_[static_cast<size_t>(last)] = static_cast<int32_t>(pos);
  running_.pop_back();
  running_pos_[static_cast<size_t>(job)] = -1;
}

Status QueueScheduler::finish(int64_t job_id) {
  if (job_id < 0 || job_id >= num_jobs() ||
      state_of(static_cast<int32_t>(job_id)) != JobState::kRunning) {
    return {Code::kInvalidArgument, "Queue"};
  }
  const auto job = static_cast<int32_t>(job_id);
  const auto j = static_cast<size_t>(job);
  if (exclusive_[j] != 0) set_exclusive_flags(job, false);
  const Request& t = task_[j];
  const auto per_task = static_cast<size_t>(t.wants_gpu() ? t.num_gpu : 0);
  for (size_t i = 0; i < nodes_[j].size(); ++i) {
    const std::span<const int32_t> g(gpus_[j].data() + i * per_task, per_task);
    const Status s = engine_->release(nodes_[j][i], t, g);
    if (!s.ok()) return s;
  }
  remove_running(job);
  charge(job, -1);
  terminating_[j] = 0;
  state_[j] = JobState::kDone;
  nodes_[j] = {};
  gpus_[j] = {};
  return Status::Ok();
}

Status QueueScheduler::requeue(int64_t job_id) {
  if (job_id < 0 || job_id >= num_jobs() ||
      state_of(static_cast<int32_t>(job_id)) != JobState::kRunning) {
    return {Code::kInvalidArgument, "Queue"};
  }
  const auto job = static_cast<int32_t>(job_id);
  const Status s = finish(job);
  if (!s.ok()) return s;
  // A job started by the last cycle may still have its stale entry in pending_; drop it now,
  // while the job is not pending, or the queue would hold the job twice.
  compact_pending();
  const auto j = static_cast<size_t>(job);
  terminating_[j] = 0;
  state_[j] = JobState::kPending;
  start_[j] = -1;
  reservation_[j] = -1;
  fcfs_sorted_ = false;
  pending_.push_back(job);
  ++pending_count_;
  return Status::Ok();
}

Status QueueScheduler::restore(int64_t job_id, int64_t start, std::span<const int32_t> nodes,
                               std::span<const int32_t> gpus) {
  constexpr Status kInvalid{Code::kInvalidArgument, "Queue"};
  if (job_id < 0 || job_id >= num_jobs()) return kInvalid;
  const auto job = static_cast<int32_t>(job_id);
  const auto j = static_cast<size_t>(job);
  const JobState was = state_[j];
  if (was != JobState::kNew && was != JobState::kPending) return kInvalid;
  const Request& t = task_[j];
  const auto count = static_cast<int64_t>(nodes.size());
  if (!t.valid() || start < 0 || start > kMaxTime || num_tasks_[j] > kMaxTasks || count < 1 ||
      count < min_tasks_[j] || count > num_tasks_[j]) {
    return kInvalid;
  }
  const auto per = static_cast<size_t>(t.wants_gpu() ? t.num_gpu : 0);
  if (gpus.size() != nodes.size() * per) return kInvalid;
  note_need(job);  // checked: a requeue makes it pending
  const ClusterState& st = engine_->state();
  for (const int32_t n : nodes) {
    if (n < 0 || n >= st.num_nodes()) return kInvalid;
  }
  // Exclusivity as a normal start keeps it: an exclusive job only takes idle nodes (checked
  // before its own tasks land, so it may put several on one node), nobody joins its nodes.
  for (const int32_t n : nodes) {
    const bool idle = st.cpu_free(n) == st.cpu_capacity(n) &&
                      st.memory_free(n) == st.memory_capacity(n) &&
                      st.gpu_free_total(n) == st.gpu_count(n) * kMilliGpu;
    if ((st.flags(n) & kNodeExclusive) != 0 || (exclusive_[j] != 0 && !idle)) {
      return {Code::kNodeUnavailable, "Exclusive"};
    }
  }
  // Commit task by task; give everything back on the first failure.
  for (size_t i = 0; i < nodes.size(); ++i) {
    const Status s = engine_->allocate_on(nodes[i], t, gpus.subspan(i * per, per));
    if (s.ok()) continue;
    for (size_t k = i; k-- > 0;) {
      const Status back = engine_->release(nodes[k], t, gpus.subspan(k * per, per));
      CPLAT_ASSERT(back.ok());
      (void)back;
    }
    return s;
  }
  if (was == JobState::kPending) {
    // Leave the queue for good (not just a stale entry): a later requeue appends it again.
    // (mark_running counts it out of the pending jobs.)
    std::erase(pending_, job);
    if (locked_head_ == job) {
      locked_head_ = -1;
      locked_reservation_ = -1;
    }
  }
  nodes_[j].assign(nodes.begin(), nodes.end());
  gpus_[j].assign(gpus.begin(), gpus.end());
  reason_[j] = Code::kOk;
  mark_running(job, start, /*restored=*/true);
  CPLAT_ASSERT(pending_count_ >= 0);
  CPLAT_ASSERT(running_[static_cast<size_t>(running_pos_[j])] == job);
  CPLAT_ASSERT(std::find(pending_.begin(), pending_.end(), job) == pending_.end());
  CPLAT_ASSERT(tasks_now(job) == static_cast<int32_t>(count));
  return Status::Ok();
}

const std::vector<int32_t>& QueueScheduler::cycle(int64_t now) {
  check_range(now, -kMaxTime, kMaxTime, "now");
  started_.clear();
  preempted_.clear();
  resized_.clear();
  compact_pending();
  while (pending_count_ > 0) {
    int32_t head = -1;
    if (opts_.lock_head && locked_head_ >= 0 && state_of(locked_head_) == JobState::kPending) {
      head = locked_head_;
    } else {
      head = select_head(now);
      if (locked_head_ != head) locked_reservation_ = -1;
      locked_head_ = opts_.lock_head ? head : -1;
    }
    if (head < 0) break;
    // A job this cycle evicted does not evict others to come back in the same cycle.
    const bool may_preempt =
        opts_.preemption != Preemption::kNone &&
        std::find(preempted_.begin(), preempted_.end(), head) == preempted_.end();
    // Conservative backfill promises every pending job its planned start, so the head may start
    // greedily only where the plan agrees: placed on reserved nodes it may use before their
    // window, it could take capacity the plan promised a later job.
    const bool head_in_plan = opts_.backfill != BackfillMode::kConservative ||
                              covers(planned_free(now), need_of(head));
    if (head_in_plan &&
        (try_start(head, now) || (may_preempt && preempt_for(head, now) && try_start(head, now)))) {
      locked_head_ = -1;
      locked_reservation_ = -1;
      continue;
    }
    if (opts_.backfill_interval > 0 && backfilled_ &&
        now < last_backfill_ + opts_.backfill_interval) {
      break;  // not yet time for the next backfill pass
    }
    if (opts_.backfill != BackfillMode::kNone) {
      backfilled_ = true;
      last_backfill_ = now;
    }
    switch (opts_.backfill) {
      case BackfillMode::kNone: break;
      case BackfillMode::kEasy: backfill_easy(head, now); break;
      case BackfillMode::kRlsched: backfill_rlsched(head, now); break;
      case BackfillMode::kConservative: backfill_conservative(now); break;
    }
    break;
  }
  if (pending_count_ == 0) grow(now);
  return started_;
}

}  // namespace cplat
