#include "cplat/queue.hpp"

#include <algorithm>
#include <array>
#include <cmath>
#include <limits>
#include <stdexcept>
#include <string>

#include "cplat/check.hpp"

namespace cplat {

namespace {
constexpr std::array<std::string_view, kNumQueueOrders> kOrderNames = {"fcfs", "sjf", "priority",
                                                                       "wfp3", "unicep", "f1"};
constexpr std::array<std::string_view, kNumBackfillModes> kBackfillNames = {"none", "easy",
                                                                            "conservative", "rlsched"};
constexpr std::array<std::string_view, kNumPreemptionModes> kPreemptionNames = {
    "none", "priority", "reclaim", "both"};

bool covers(const Calendar::Vec& have, const Calendar::Vec& need) {
  for (size_t d = 0; d < have.size(); ++d) {
    if (have[d] < need[d]) return false;
  }
  return true;
}
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
  constexpr int64_t kMax = std::numeric_limits<int64_t>::max();
  const auto num_cohorts = static_cast<int64_t>(cohorts.size());
  for (size_t p = 0; p < quotas.size(); ++p) {
    const QuotaSpec& q = quotas[p];
    const std::string at = "project " + std::to_string(p) + ": ";
    // Beyond the table: a root cohort of its own (added below, at most one per project).
    check_range(q.cohort, -1, num_cohorts + static_cast<int64_t>(quotas.size()) - 1, at + "cohort");
    for (size_t d = 0; d < q.nominal.size(); ++d) {
      check_range(q.nominal[d], 0, kMax, at + "nominal");
      check_range(q.borrowing_limit[d], 0, kMax, at + "borrowing_limit");
      check_range(q.lending_limit[d], 0, kMax, at + "lending_limit");
    }
  }
  for (size_t c = 0; c < cohorts.size(); ++c) {
    const std::string at = "cohort " + std::to_string(c) + ": ";
    const int32_t parent = cohorts[c].parent;
    if (parent != -1) checked_index(parent, num_cohorts, at + "parent");
    for (const int64_t v : cohorts[c].borrowing_limit) check_range(v, -1, kMax, at + "borrowing_limit");
    // Walking up from any cohort must reach a root within the table's size.
    int32_t up = static_cast<int32_t>(c);
    for (int64_t hops = 0; up >= 0; ++hops) {
      if (hops > num_cohorts) throw std::invalid_argument(at + "its parents form a cycle");
      up = cohorts[static_cast<size_t>(up)].parent;
    }
  }
  quotas_ = std::move(quotas);
  cohorts_ = std::move(cohorts);
  // Jobs keep their project only where the new table has it.
  for (int32_t& p : project_) {
    if (p >= static_cast<int32_t>(quotas_.size())) p = -1;
  }
  // A project naming a cohort the table lacks gets a root cohort of its own id space.
  for (const QuotaSpec& q : quotas_) {
    while (q.cohort >= static_cast<int32_t>(cohorts_.size())) cohorts_.push_back(CohortSpec{});
  }
  usage_.assign(quotas_.size(), Vec{0, 0, 0});
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
  project_[j] = (project >= 0 && project < static_cast<int32_t>(quotas_.size())) ? project : -1;
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
  return usage_[checked_index(project, static_cast<int64_t>(usage_.size()), "project")];
}

bool QueueScheduler::terminating(int64_t job) const { return terminating_[index(job)] != 0; }

void QueueScheduler::charge(int32_t job, int64_t sign) {
  const int32_t p = project_[static_cast<size_t>(job)];
  if (p < 0) return;
  const Vec need = need_of(job);
  for (size_t d = 0; d < need.size(); ++d) usage_[static_cast<size_t>(p)][d] += sign * need[d];
}

bool QueueScheduler::quota_admits(int32_t job) const {
  const int32_t min = min_tasks_[static_cast<size_t>(job)];
  const Request& t = task_[static_cast<size_t>(job)];
  // An elastic job is admissible if its smallest size is.
  return quota_admits_need(job, {t.cpu_milli * min, t.memory_mib * min, t.total_gpu_milli() * min});
}

bool QueueScheduler::quota_admits_need(int32_t job, const Vec& need) const {
  // Quota amounts may be anything up to INT64_MAX ("unlimited") and a cohort sums many of
  // them: the arithmetic is 128-bit so that no sum can overflow.
  using Wide = Int128;
  const int32_t p = project_[static_cast<size_t>(job)];
  if (p < 0) return true;
  const QuotaSpec& q = quotas_[static_cast<size_t>(p)];
  const Vec& use = usage_[static_cast<size_t>(p)];
  for (size_t d = 0; d < need.size(); ++d) {
    const Wide after = Wide{use[d]} + need[d];
    if (after > Wide{q.nominal[d]} + q.borrowing_limit[d]) return false;  // hard limit
    // All the project would borrow with this job, against what the rest of the cohort can
    // lend (its members' unused nominal within their lending limits, less their own borrowing).
    const Wide borrow = std::max<Wide>(0, after - q.nominal[d]);
    if (borrow <= 0) continue;
    if (q.cohort < 0) return false;
    const int32_t root = cohort_root(q.cohort);
    Wide pool = 0;
    for (size_t k = 0; k < quotas_.size(); ++k) {
      if (static_cast<int32_t>(k) == p || quotas_[k].cohort < 0 ||
          cohort_root(quotas_[k].cohort) != root) {
        continue;
      }
      const Wide unused = std::max<Wide>(0, Wide{quotas_[k].nominal[d]} - usage_[k][d]);
      pool += std::min<Wide>(quotas_[k].lending_limit[d], unused);
      pool -= std::max<Wide>(0, Wide{usage_[k][d]} - quotas_[k].nominal[d]);
    }
    if (borrow > pool) return false;
  }
  // Each cohort on the way up may cap what its subtree takes beyond its own nominal quota.
  for (int32_t c = q.cohort, hops = 0; c >= 0 && hops < 64;
       c = cohorts_[static_cast<size_t>(c)].parent, ++hops) {
    const CohortSpec& cs = cohorts_[static_cast<size_t>(c)];
    std::array<Wide, Calendar::kDims> used{};
    std::array<Wide, Calendar::kDims> nominal{};
    bool capped = false;
    for (size_t d = 0; d < need.size(); ++d) capped = capped || cs.borrowing_limit[d] >= 0;
    if (!capped) continue;
    for (size_t k = 0; k < quotas_.size(); ++k) {
      if (!in_subtree(static_cast<int32_t>(k), c)) continue;
      for (size_t d = 0; d < need.size(); ++d) {
        used[d] += usage_[k][d];
        nominal[d] += quotas_[k].nominal[d];
      }
    }
    for (size_t d = 0; d < need.size(); ++d) {
      if (cs.borrowing_limit[d] >= 0 && used[d] + need[d] > nominal[d] + cs.borrowing_limit[d]) {
        return false;
      }
    }
  }
  return true;
}

double QueueScheduler::lost_work(int64_t job, int64_t now) const {
  const size_t j = index(job);
  check_range(now, -kMaxTime, kMaxTime, "now");
  return lost_work_now(static_cast<int32_t>(j), now);
}

double QueueScheduler::lost_work_now(int32_t job, int64_t now) const {
  const auto j = static_cast<size_t>(job);
  if (state_[j] != JobState::kRunning) return 0.0;
  const int64_t elapsed = std::max<int64_t>(0, now - start_[j]);
  const int64_t period = ckpt_interval_[j] > 0 ? ckpt_interval_[j] + ckpt_cost_[j] : 0;
  const int64_t since = period > 0 ? elapsed % period : elapsed;
  const Request& t = task_[j];
  const int64_t size = t.wants_gpu() ? t.total_gpu_milli() : std::max<int64_t>(t.cpu_milli, 1);
  return static_cast<double>(since) * static_cast<double>(size * num_tasks_[j]);
}

int32_t QueueScheduler::cohort_root(int32_t c) const {
  int32_t hops = 0;
  while (c >= 0 && cohorts_[static_cast<size_t>(c)].parent >= 0 && hops++ < 64) {
    c = cohorts_[static_cast<size_t>(c)].parent;
  }
  return c;
}

bool QueueScheduler::in_subtree(int32_t project, int32_t cohort) const {
  int32_t c = quotas_[static_cast<size_t>(project)].cohort;
  for (int32_t hops = 0; c >= 0 && hops < 64; ++hops) {
    if (c == cohort) return true;
    c = cohorts_[static_cast<size_t>(c)].parent;
  }
  return false;
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

bool QueueScheduler::may_evict(int32_t victim, int32_t head, bool head_within_nominal) const {
  const auto v = static_cast<size_t>(victim);
  const auto h = static_cast<size_t>(head);
  if (terminating_[v] != 0) return false;
  const bool by_priority =
      opts_.preemption == Preemption::kPriority || opts_.preemption == Preemption::kBoth;
  if (by_priority && priority_[v] < priority_[h]) return true;
  if (!head_within_nominal) return false;
  const int32_t vp = project_[v];
  const int32_t hp = project_[h];
  if (vp < 0 || vp == hp) return false;
  const QuotaSpec& vq = quotas_[static_cast<size_t>(vp)];
  const int32_t hc = quotas_[static_cast<size_t>(hp)].cohort;
  if (vq.cohort < 0 || hc < 0 || cohort_root(vq.cohort) != cohort_root(hc)) return false;
  for (size_t d = 0; d < vq.nominal.size(); ++d) {
    if (usage_[static_cast<size_t>(vp)][d] > vq.nominal[d]) return true;  // it is borrowing
  }
  return false;
}

bool QueueScheduler::head_within_nominal(int32_t head) const {
  const bool by_reclaim =
      opts_.preemption == Preemption::kReclaim || opts_.preemption == Preemption::kBoth;
  const int32_t hp = project_[static_cast<size_t>(head)];
  if (!by_reclaim || hp < 0) return false;
  const Vec need = need_of(head);
  const QuotaSpec& q = quotas_[static_cast<size_t>(hp)];
  for (size_t d = 0; d < need.size(); ++d) {
    if (usage_[static_cast<size_t>(hp)][d] + need[d] > q.nominal[d]) return false;
  }
  return true;
}

bool QueueScheduler::preempt_on_one_node(int32_t head, int64_t now) {
  // A one-task head: find the node where evicting eligible jobs frees room for it (devices
  // included) at the least lost work, as a scheduler that preempts per node does.
  const ClusterState& st = engine_->state();
  const Request& r = task_[static_cast<size_t>(head)];
  const bool within = head_within_nominal(head);
  // Eligible running jobs per node.
  std::vector<std::vector<int32_t>> on_node(static_cast<size_t>(st.num_nodes()));
  for (const int32_t j : running_) {
    // Jobs this cycle just started are not undone by the same cycle.
    if (start_[static_cast<size_t>(j)] == now || !may_evict(j, head, within)) continue;
    for (const int32_t n : nodes_[static_cast<size_t>(j)]) {
      auto& list = on_node[static_cast<size_t>(n)];
      if (list.empty() || list.back() != j) list.push_back(j);
    }
  }
  double best_cost = std::numeric_limits<double>::infinity();
  std::vector<int32_t> best;
  std::vector<int32_t> dev;
  // The random baseline takes nodes in random order and the first node that works.
  std::vector<int32_t> order(static_cast<size_t>(st.num_nodes()));
  for (size_t i = 0; i < order.size(); ++i) order[i] = static_cast<int32_t>(i);
  if (opts_.random_victims) {
    for (size_t i = order.size(); i > 1; --i) std::swap(order[i - 1], order[victim_rng_.below(i)]);
  }
  for (const int32_t n : order) {
    if (opts_.random_victims && !best.empty()) break;
    auto& cand = on_node[static_cast<size_t>(n)];
    if (cand.empty() || st.flags(n) != 0) continue;
    if (r.wants_gpu() && (st.gpu_count(n) == 0 ||
                          (r.models != 0 && (st.gpu_model(n) < 0 ||
                                             ((r.models >> st.gpu_model(n)) & 1U) == 0)))) {
      continue;
    }
    if (opts_.random_victims) {
      for (size_t i = cand.size(); i > 1; --i) std::swap(cand[i - 1], cand[victim_rng_.below(i)]);
    } else {
      std::sort(cand.begin(), cand.end(), [&](int32_t a, int32_t b) {
        const double ca = lost_work_now(a, now);
        const double cb = lost_work_now(b, now);
        return ca < cb || (ca == cb && a < b);
      });
    }
    int64_t cpu = st.cpu_free(n);
    int64_t mem = st.memory_free(n);
    const std::span<const int32_t> fr = st.gpu_free_of(n);
    dev.assign(fr.begin(), fr.end());
    auto give_back = [&](int32_t j, int sign) {
      const auto jj = static_cast<size_t>(j);
      const Request& t = task_[jj];
      const auto per = static_cast<size_t>(t.wants_gpu() ? t.num_gpu : 0);
      for (size_t i = 0; i < nodes_[jj].size(); ++i) {
        if (nodes_[jj][i] != n) continue;
        cpu += sign * t.cpu_milli;
        mem += sign * t.memory_mib;
        for (size_t g = 0; g < per; ++g) {
          dev[static_cast<size_t>(gpus_[jj][i * per + g])] += sign * t.gpu_milli;
        }
      }
    };
    auto fits = [&] {
      if (cpu < r.cpu_milli || mem < r.memory_mib) return false;
      if (!r.wants_gpu()) return true;
      int32_t ok = 0;
      for (const int32_t f : dev) ok += (f >= r.gpu_milli) ? 1 : 0;
      return ok >= r.num_gpu;
    };
    std::vector<int32_t> chosen;
    double cost = 0.0;
    for (const int32_t j : cand) {
      if (fits() || cost >= best_cost) break;
      give_back(j, +1);
      chosen.push_back(j);
      cost += lost_work_now(j, now);
    }
    if (!fits() || chosen.empty() || cost >= best_cost) continue;
    for (size_t i = chosen.size(); i-- > 0;) {  // drop victims the head does not need
      give_back(chosen[i], -1);
      if (fits()) {
        cost -= lost_work_now(chosen[i], now);
        chosen.erase(chosen.begin() + static_cast<std::ptrdiff_t>(i));
      } else {
        give_back(chosen[i], +1);
      }
    }
    if (cost < best_cost) {
      best_cost = cost;
      best = chosen;
    }
  }
  for (const int32_t j : best) {
    evict(j);
  }
  return !best.empty();
}

bool QueueScheduler::preempt_for(int32_t head, int64_t now) {
  if (opts_.grace_period > 0) {
    // Victims already checkpointing will free enough: wait for them, evict no one else.
    Vec soon = available_free();
    const Vec t = terminating_free();
    for (size_t d = 0; d < soon.size(); ++d) soon[d] += t[d];
    const Vec need_now = need_of(head);
    bool any = false;
    for (const int64_t v : t) any = any || v > 0;
    if (any && covers(soon, need_now)) return false;
  }
  // Only when the head lacks capacity (not merely a good arrangement of it), evict the set of
  // eligible running jobs that loses the least work, cheapest first, then drop any victim the
  // head turns out not to need. A job (a whole gang) is always evicted as one unit.
  if (num_tasks_[static_cast<size_t>(head)] == 1) return preempt_on_one_node(head, now);
  const Vec need = need_of(head);
  Vec free = available_free();
  if (covers(free, need)) return false;
  // Elastic jobs that may be preempted shrink (to their minimum) before anyone is evicted.
  const bool within_for_shrink = head_within_nominal(head);
  for (const int32_t j : std::vector<int32_t>(running_.begin(), running_.end())) {
    if (covers(free, need)) break;
    if (!elastic(j) || start_[static_cast<size_t>(j)] == now ||
        !may_evict(j, head, within_for_shrink)) {
      continue;
    }
    const Request& t = task_[static_cast<size_t>(j)];
    int32_t tasks = 0;
    for (size_t d = 0; d < need.size(); ++d) {
      const int64_t per = d == 0 ? t.cpu_milli : d == 1 ? t.memory_mib : t.total_gpu_milli();
      if (per > 0 && need[d] > free[d]) {
        // At most the whole job: the quotient alone may exceed int32.
        const int64_t short_by = std::min<int64_t>((need[d] - free[d] + per - 1) / per, kMaxTasks);
        tasks = std::max<int32_t>(tasks, static_cast<int32_t>(short_by));
      }
    }
    const Vec got = shrink(j, tasks);
    for (size_t d = 0; d < free.size(); ++d) free[d] += got[d];
  }
  if (covers(free, need)) return true;
  const auto h = static_cast<size_t>(head);
  const bool by_priority =
      opts_.preemption == Preemption::kPriority || opts_.preemption == Preemption::kBoth;
  const bool by_reclaim =
      opts_.preemption == Preemption::kReclaim || opts_.preemption == Preemption::kBoth;
  bool head_within_nominal = false;
  const int32_t hp = project_[h];
  if (by_reclaim && hp >= 0) {
    head_within_nominal = true;
    const QuotaSpec& q = quotas_[static_cast<size_t>(hp)];
    for (size_t d = 0; d < need.size(); ++d) {
      head_within_nominal =
          head_within_nominal && usage_[static_cast<size_t>(hp)][d] + need[d] <= q.nominal[d];
    }
  }
  std::vector<std::pair<double, int32_t>> candidates;
  for (const int32_t j : running_) {
    const auto v = static_cast<size_t>(j);
    if (start_[v] == now || terminating_[v] != 0) continue;  // just started, or leaving
    bool eligible = by_priority && priority_[v] < priority_[h];
    if (!eligible && head_within_nominal) {
      const int32_t vp = project_[v];
      if (vp >= 0 && vp != hp && quotas_[static_cast<size_t>(vp)].cohort >= 0 &&
          quotas_[static_cast<size_t>(hp)].cohort >= 0 &&
          cohort_root(quotas_[static_cast<size_t>(vp)].cohort) ==
              cohort_root(quotas_[static_cast<size_t>(hp)].cohort)) {
        for (size_t d = 0; d < need.size(); ++d) {
          eligible = eligible ||
                     usage_[static_cast<size_t>(vp)][d] > quotas_[static_cast<size_t>(vp)].nominal[d];
        }
      }
    }
    if (eligible) candidates.emplace_back(lost_work_now(j, now), j);
  }
  std::sort(candidates.begin(), candidates.end(), [&](const auto& a, const auto& b) {
    if (a.first != b.first) return a.first < b.first;
    return start_[static_cast<size_t>(a.second)] > start_[static_cast<size_t>(b.second)] ||
           (start_[static_cast<size_t>(a.second)] == start_[static_cast<size_t>(b.second)] &&
            a.second < b.second);
  });
  if (opts_.random_victims) {
    for (size_t i = candidates.size(); i > 1; --i) {
      std::swap(candidates[i - 1], candidates[victim_rng_.below(i)]);
    }
  }
  std::vector<int32_t> victims;
  for (const auto& [cost, j] : candidates) {
    if (covers(free, need)) break;
    const Vec got = need_of(j);
    for (size_t d = 0; d < free.size(); ++d) free[d] += got[d];
    victims.push_back(j);
  }
  if (!covers(free, need)) return false;
  for (size_t i = victims.size(); i-- > 0;) {
    const Vec got = need_of(victims[i]);
    Vec without = free;
    for (size_t d = 0; d < free.size(); ++d) without[d] -= got[d];
    if (covers(without, need)) {
      free = without;
      victims.erase(victims.begin() + static_cast<std::ptrdiff_t>(i));
    }
  }
  for (const int32_t j : victims) {
    evict(j);
  }
  return !victims.empty();
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
  const bool quotas = !quotas_.empty();
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
  if (!quotas_.empty() && !quota_admits(job)) {
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
  if (exclusive_[j] != 0) set_exclusive_flags(job, true);
  state_[j] = JobState::kRunning;
  start_[j] = now;
  charge(job, +1);
  --pending_count_;
  add_running(job);
  started_.push_back(job);
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
    if (!quotas_.empty() &&
        !quota_admits_need(job, {one[0] * count, one[1] * count, one[2] * count})) {
      reason_[j] = Code::kQuotaExceeded;
      continue;
    }
    if (restricted) mask_nodes(job, now);
    const Status s = engine_->place_gang(t, count, nodes_[j], gpus_[j]);
    if (restricted) unmask_nodes();
    reason_[j] = s.code;
    if (!s.ok()) continue;
    if (exclusive_[j] != 0) set_exclusive_flags(job, true);
    state_[j] = JobState::kRunning;
    start_[j] = now;
    charge(job, +1);
    --pending_count_;
    add_running(job);
    started_.push_back(job);
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
      if (!quotas_.empty() && !quota_admits_need(job, {t.cpu_milli, t.memory_mib, t.total_gpu_milli()})) {
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

void QueueScheduler::evict(int32_t job) {
  if (opts_.grace_period > 0) {
    terminating_[static_cast<size_t>(job)] = 1;  // keeps its resources while it checkpoints
    preempted_.push_back(job);
  } else if (requeue(job).ok()) {
    preempted_.push_back(job);
  }
}

Calendar::Vec QueueScheduler::terminating_free() const {
  Vec soon{0, 0, 0};
  for (const int32_t j : running_) {
    if (terminating_[static_cast<size_t>(j)] == 0) continue;
    const Vec got = need_of(j);
    for (size_t d = 0; d < soon.size(); ++d) soon[d] += got[d];
  }
  return soon;
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
    --pending_count_;
    std::erase(pending_, job);
    if (locked_head_ == job) {
      locked_head_ = -1;
      locked_reservation_ = -1;
    }
  }
  nodes_[j].assign(nodes.begin(), nodes.end());
  gpus_[j].assign(gpus.begin(), gpus.end());
  state_[j] = JobState::kRunning;
  reason_[j] = Code::kOk;
  start_[j] = start;
  terminating_[j] = 0;
  charge(job, +1);  // after nodes_: an elastic job is charged for the tasks it runs
  if (exclusive_[j] != 0) set_exclusive_flags(job, true);
  add_running(job);
  CPLAT_ASSERT(pending_count_ >= 0);
  CPLAT_ASSERT(running_[static_cast<size_t>(running_pos_[j])] == job);
  CPLAT_ASSERT(std::find(pending_.begin(), pending_.end(), job) == pending_.end());
  CPLAT_ASSERT(tasks_now(job) == static_cast<int32_t>(count));
  return Status::Ok();
}

Calendar::Vec QueueScheduler::reserved_capacity(const Reservation& r) const {
  const ClusterState& st = engine_->state();
  Vec cap{0, 0, 0};
  for (const int32_t n : r.nodes) {
    cap[0] += st.cpu_capacity(n);
    cap[1] += st.memory_capacity(n);
    cap[2] += static_cast<int64_t>(st.gpu_count(n)) * kMilliGpu;
  }
  return cap;
}

Calendar::Vec QueueScheduler::planned_free(int64_t now) const {
  // What the plans below see as free now: reserved capacity is out of them until its window
  // ends, whether or not the reserved nodes are busy.
  Vec free = available_free();
  for (const Reservation& r : reservations_) {
    if (r.end <= now) continue;
    const Vec cap = reserved_capacity(r);
    for (size_t d = 0; d < free.size(); ++d) free[d] -= cap[d];
  }
  return free;
}

Calendar QueueScheduler::running_calendar(int64_t now) const {
  // Free capacity of the nodes that can take work, plus every running job's resources at its
  // expected end (jobs past their estimate are expected to end any moment: now + 1).
  Calendar cal(now, available_free(), opts_.calendar_resolution, opts_.calendar_horizon);
  for (const int32_t j : running_) {
    const int64_t end = start_[static_cast<size_t>(j)] + requested_[static_cast<size_t>(j)];
    cal.add_release(std::max(end, now + 1), need_of(j));
  }
  // Reserved nodes are out of the queue's plans from now until their window ends: a job that
  // would overlap the window may not use them at all (try_start masks them). Conservative for
  // jobs that end before the window and for the owner, both of which may still be placed there.
  for (const Reservation& r : reservations_) {
    if (r.end > now) cal.reserve(now, r.end, reserved_capacity(r));
  }
  return cal;
}

int64_t QueueScheduler::release_time(int64_t end, int64_t now) const {
  // As running_calendar places a release: overdue jobs end any moment (now + 1), and times are
  // rounded up to the calendar's resolution from now.
  const int64_t t = std::max(end, now + 1);
  const int64_t res = opts_.calendar_resolution;
  return res > 1 ? now + ((t - now + res - 1) / res) * res : t;
}

void QueueScheduler::backfill_easy_shadow(int32_t head, int64_t now) {
  // The calendar of backfill_easy without building it. Without reservations the profile of
  // running jobs only rises: free now, plus each running job's resources at its (rounded)
  // expected end. So the head's earliest start (the shadow time) is the first release time at
  // which the running total covers it (within the horizon), and a job fits the profile with the
  // head's reservation in place iff it fits now and either ends by the shadow time or fits in
  // what is left at the shadow time once the head and the jobs backfilled past it are counted.
  // by_end_ keeps running jobs in expected-end order, so this costs the releases walked to the
  // shadow plus one test per candidate: no calendar, no steps.
  Vec free = available_free();
  const auto h = static_cast<size_t>(head);
  const Vec head_need = need_of(head);
  int64_t shadow = Calendar::kNever;
  Vec at_shadow = free;
  if (covers(free, head_need)) {
    shadow = now;
  } else {
    const int64_t limit = opts_.calendar_horizon > 0 ? now + opts_.calendar_horizon
                                                     : std::numeric_limits<int64_t>::max();
    auto it = by_end_.begin();
    while (it != by_end_.end()) {
      const int64_t t = release_time(it->first, now);
      if (t > limit) break;
      for (; it != by_end_.end() && release_time(it->first, now) == t; ++it) {
        const Vec got = need_of(it->second);
        for (size_t d = 0; d < at_shadow.size(); ++d) at_shadow[d] += got[d];
      }
      if (covers(at_shadow, head_need)) {
        shadow = t;
        break;
      }
    }
  }
  Vec extra{};  // free at the shadow time after the head and the jobs running past it
  if (shadow != Calendar::kNever) {
    if (reservation_[h] < 0) reservation_[h] = shadow;
    for (size_t d = 0; d < extra.size(); ++d) extra[d] = at_shadow[d] - head_need[d];
  }
  auto consider = [&](int32_t j) {
    const int64_t end = now + requested_[static_cast<size_t>(j)];
    const Vec& need = need_full_[static_cast<size_t>(j)];  // pending: all its tasks
    CPLAT_ASSERT(need == need_of(j));
    if (!covers(free, need)) return;
    const bool past = shadow != Calendar::kNever && end > shadow;
    if (past && !covers(extra, need)) return;
    if (!try_start(j, now)) return;
    for (size_t d = 0; d < free.size(); ++d) {
      free[d] -= need[d];
      if (past) extra[d] -= need[d];
    }
  };
  int32_t tested = 0;
  const bool in_order = opts_.order == QueueOrder::kFcfs && fcfs_sorted_;
  if (!in_order) sorted_pending(now, scratch_);
  const std::vector<int32_t>& order = in_order ? pending_ : scratch_;
  // try_start changes job states only, never the order being walked.
  for (const int32_t j : order) {
    // Every pending job needs at least min_need_: once that is not free, nobody fits now.
    if (!covers(free, min_need_)) break;
    if (j == head || state_of(j) != JobState::kPending) continue;
    if (opts_.max_backfill_jobs > 0 && tested++ >= opts_.max_backfill_jobs) break;
    consider(j);
  }
}

void QueueScheduler::backfill_easy(int32_t head, int64_t now) {
  // The head gets a reservation at its earliest start; any other job may start now if it
  // fits in the profile with that reservation in place (ends before it, or uses capacity the
  // head will not need).
  if (reservations_.empty()) {
    backfill_easy_shadow(head, now);
    return;
  }
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
    if (j == head || state_of(j) != JobState::kPending) continue;
    if (opts_.max_backfill_jobs > 0 && tested++ >= opts_.max_backfill_jobs) break;
    const int64_t end = now + requested_[static_cast<size_t>(j)];
    const Vec need = need_of(j);
    if (cal.fits(now, end, need) && try_start(j, now)) cal.reserve(now, end, need);
  }
}

int64_t QueueScheduler::rlsched_reservation(int32_t head) const {
  // Running jobs by expected end; the head's reservation is the end at which enough has been
  // freed (computed once per blocked head, as the published evaluation does).
  Vec free = available_free();
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
    if (j == head || state_of(j) != JobState::kPending) continue;
    if (opts_.max_backfill_jobs > 0 && tested++ >= opts_.max_backfill_jobs) break;
    if (now + requested_[static_cast<size_t>(j)] < est) try_start(j, now);
  }
}

int64_t& QueueScheduler::earliest_seen(const Vec& need, int64_t duration, int64_t start) {
  const auto [it, fresh] = seen_.try_emplace(Shape{need, duration}, start);
  (void)fresh;
  return it->second;
}

size_t QueueScheduler::ShapeHash::operator()(const Shape& s) const {
  uint64_t h = static_cast<uint64_t>(s.duration) * 0x9E3779B97F4A7C15ULL;
  for (const int64_t x : s.need) h = (h ^ static_cast<uint64_t>(x)) * 0x100000001B3ULL;
  return static_cast<size_t>(h ^ (h >> 29));
}

void QueueScheduler::backfill_conservative_slots(int64_t now) {
  seen_.clear();
  // Bounded conservative backfilling, as Slurm's backfill plans (bf_window, bf_resolution,
  // bf_max_job_test): time in slots of `calendar_resolution` seconds over a window of
  // `calendar_horizon` seconds. A release counts from the slot at its rounded time (as the
  // calendar rounds), a reservation holds whole slots, and a job that cannot start within the
  // window gets no reservation and holds nothing. Plans never promise what is not free; what
  // lies past the window is not planned.
  const int64_t res = opts_.calendar_resolution;
  const auto slots = static_cast<size_t>((opts_.calendar_horizon + res - 1) / res);
  auto slot_of = [&](int64_t dt) {  // first slot starting at or after now + dt (dt >= 0)
    return static_cast<size_t>(std::min<int64_t>((dt + res - 1) / res,
                                                 static_cast<int64_t>(slots)));
  };
  slot_free_.assign(slots, Vec{});
  Vec free = available_free();
  // Releases of running jobs, in end order, up to the window's end (as differences).
  for (const auto& [end, job] : by_end_) {
    const size_t k = slot_of(std::max(end, now + 1) - now);
    if (k >= slots) break;
    const Vec got = need_of(job);
    for (size_t d = 0; d < got.size(); ++d) slot_free_[k][d] += got[d];
  }
  // Advance reservations: their capacity is out of the plans until the window ends.
  for (const Reservation& r : reservations_) {
    if (r.end <= now) continue;
    const Vec cap = reserved_capacity(r);
    for (size_t d = 0; d < cap.size(); ++d) free[d] -= cap[d];
    const size_t k = slot_of(r.end - now);
    if (k < slots) {
      for (size_t d = 0; d < cap.size(); ++d) slot_free_[k][d] += cap[d];
    }
  }
  for (size_t k = 0; k < slots; ++k) {
    for (size_t d = 0; d < free.size(); ++d) {
      free[d] += slot_free_[k][d];
      slot_free_[k][d] = free[d];
    }
  }
  profile_.reset(slot_free_);
  int32_t tested = 0;
  const bool in_order = opts_.order == QueueOrder::kFcfs && fcfs_sorted_;
  if (!in_order) sorted_pending(now, scratch_);
  const std::vector<int32_t>& order = in_order ? pending_ : scratch_;
  for (const int32_t j : order) {
    if (state_of(j) != JobState::kPending) continue;
    if (opts_.max_backfill_jobs > 0 && tested++ >= opts_.max_backfill_jobs) break;
    const auto jj = static_cast<size_t>(j);
    const size_t len = slot_of(requested_[jj]);
    const Vec& need = need_full_[jj];
    Vec take{};
    for (size_t d = 0; d < need.size(); ++d) take[d] = -need[d];
    int64_t& from = earliest_seen(need, static_cast<int64_t>(len), 0);  // as above, in slots
    if (from == Calendar::kNever) continue;
    size_t k = profile_.earliest(static_cast<size_t>(from), len, need);
    from = k >= slots ? Calendar::kNever : static_cast<int64_t>(k);
    if (k >= slots) continue;
    if (reservation_[jj] < 0) reservation_[jj] = now + static_cast<int64_t>(k) * res;
    if (k == 0) {
      if (try_start(j, now)) {
        profile_.add(0, len, take);
        continue;
      }
      // The aggregate fits but the nodes do not (fragmentation): reserve the next chance.
      k = profile_.earliest(1, len, need);
      if (k >= slots) continue;
    }
    profile_.add(k, k + len, take);
  }
}

void QueueScheduler::backfill_conservative(int64_t now) {
  // Every pending job, in queue order, gets the earliest reservation that delays no earlier
  // one; jobs whose reservation is now start now.
  if (opts_.calendar_horizon > 0) {
    backfill_conservative_slots(now);
    return;
  }
  Calendar cal = running_calendar(now);
  seen_.clear();
  sorted_pending(now, scratch_);
  int32_t tested = 0;
  for (const int32_t j : scratch_) {
    if (state_of(j) != JobState::kPending) continue;
    if (opts_.max_backfill_jobs > 0 && tested++ >= opts_.max_backfill_jobs) break;
    const int64_t req = requested_[static_cast<size_t>(j)];
    const Vec need = need_of(j);
    // Plans only take capacity within a cycle, so a shape's earliest start only moves later:
    // search from where the last job of the same shape found room (exact, and bursts of
    // identical jobs cost one search each).
    int64_t& from = earliest_seen(need, req, now);
    if (from == Calendar::kNever) continue;
    int64_t t = cal.earliest_start(need, req, from);
    from = t;
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
