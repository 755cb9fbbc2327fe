// QueueScheduler: *when* jobs start. Queue order, head-of-queue allocation and backfilling
// (none, EASY, conservative, and RLScheduler's simplified EASY) over an Engine that decides
// *where* (one gang placement per job).
//
// A job is `num_tasks` identical tasks placed all or nothing. Jobs are added once, submitted
// (pending), started by cycle(now), and finished (resources released) by the caller, who owns
// the clock: the simulator and the live service drive the same object.
#pragma once

#include <cstdint>
#include <limits>
#include <set>
#include <span>
#include <utility>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "cplat/calendar.hpp"
#include "cplat/framework.hpp"
#include "cplat/quota.hpp"
#include "cplat/rng.hpp"
#include "cplat/slots.hpp"
#include "cplat/topology.hpp"

namespace cplat {

enum class QueueOrder : uint8_t { kFcfs, kSjf, kPriority, kWfp3, kUnicep, kF1 };
inline constexpr int kNumQueueOrders = 6;
enum class BackfillMode : uint8_t { kNone, kEasy, kConservative, kRlsched };
inline constexpr int kNumBackfillModes = 4;
// Who may evict running jobs to start a blocked head: a higher-priority job, a project
// reclaiming its guaranteed quota from borrowers, or both.
enum class Preemption : uint8_t { kNone, kPriority, kReclaim, kBoth };
inline constexpr int kNumPreemptionModes = 4;

[[nodiscard]] std::string_view queue_order_name(QueueOrder o);
[[nodiscard]] std::string_view backfill_name(BackfillMode b);
[[nodiscard]] std::string_view preemption_name(Preemption p);

// An advance reservation: `nodes` are kept for `owner`'s jobs during [start, end). Other
// jobs may use them only if they end (by their estimate) before `start`.
struct Reservation {
  int64_t start = 0;
  int64_t end = 0;
  std::vector<int32_t> nodes;
  int32_t owner = -1;  // project id; -1 = nobody (maintenance window)
};

struct QueueOptions {
  QueueOrder order = QueueOrder::kFcfs;
  BackfillMode backfill = BackfillMode::kNone;
  // A blocked head keeps its place until it starts, even if a better job arrives meanwhile.
  bool lock_head = false;
  // WFP3/UNICEP wait as computed by the RLScheduler evaluation code (-1 - submit for every
  // queued job) instead of the real wait now - submit. Only for reproducing its tables.
  bool rlsched_wait = false;
  int64_t calendar_resolution = 1;  // seconds
  int64_t calendar_horizon = 0;     // seconds, 0 = unbounded
  int32_t max_backfill_jobs = 0;    // jobs tested for backfilling per cycle, 0 = all
  // Seconds between backfill passes (Slurm's bf_interval); cycles in between start only what
  // the queue order allows. 0 = a pass every cycle.
  int64_t backfill_interval = 0;
  Preemption preemption = Preemption::kNone;
  // Gangs: fewest spines, then racks (topology-aware), optionally within one rack/spine.
  bool topology_aware = false;
  SpanLimit max_span = SpanLimit::kNone;
  // Seconds a victim keeps its resources to checkpoint before it is stopped (0 = at once).
  // The caller requeues it when the grace period ends.
  int64_t grace_period = 0;
  // Victims in random order instead of least lost work first (a baseline to compare with).
  bool random_victims = false;
  uint64_t seed = 0;
};

enum class JobState : uint8_t { kNew, kPending, kRunning, kDone, kCancelled };

// One job to register (see QueueScheduler::add_job).
struct JobSpec {
  int64_t submit = 0;
  int64_t requested = 1;
  int32_t num_tasks = 1;
  Request task;
  double priority = 0.0;
};

// Argument checks: every public method validates what it is given. A job, node or project
// index outside its table throws std::out_of_range, a bad value std::invalid_argument (times
// and durations must lie in [-kMaxTime, kMaxTime]); batch setters check every entry before
// changing anything. The job operations that answer a Status (submit, cancel, finish, requeue,
// restore) answer kInvalidArgument for an unknown job instead, as for a job in the wrong state.
class QueueScheduler {
 public:
  // Throws std::invalid_argument for a grace period, calendar horizon or backfill interval
  // outside [0, kMaxTime],
  // a calendar resolution outside [1, kMaxTime], a negative backfill budget, or (conservative
  // backfilling) a window of more than kMaxSlots slots.
  static constexpr int64_t kMaxSlots = int64_t{1} << 20;
  QueueScheduler(Engine& engine, QueueOptions options);

  // Register a job (not yet pending). `requested` is the run-time estimate used for
  // reservations and backfilling (clamped to [1, kMaxTime]). Returns the job's index. Throws
  // std::invalid_argument for a submit time outside [-kMaxTime, kMaxTime], a NaN priority or
  // a full table (2^31 - 1 jobs). The task and the task count are checked by submit (and
  // restore), which refuse a job whose request is not valid() or whose count is outside
  // [1, kMaxTasks].
  int32_t add_job(int64_t submit, int64_t requested, int32_t num_tasks, const Request& task,
                  double priority);
  // Register several jobs, all or none (the same checks first); returns the first index.
  int32_t add_jobs(std::span<const JobSpec> jobs);
  // Queue-sort plugins (fair share, DRF, multifactor) set priorities before a cycle; with the
  // `priority` order, higher goes first. NaN is refused: it has no place in the order.
  void set_priority(int64_t job, double priority);
  void set_priorities(std::span<const int64_t> jobs, std::span<const double> priorities);
  // Pending jobs in submission order.
  [[nodiscard]] std::vector<int32_t> pending_jobs();
  // Quotas per project (index = project id) and each job's project (-1 = no quota) and
  // checkpoint rhythm (interval and cost in seconds; 0 = never checkpoints). Quota amounts
  // must be non-negative (a cohort's borrowing limit: -1 = none); cohort ids must be -1 or a
  // cohort; cohort parents must be -1 or another cohort, without cycles. A project naming a
  // cohort beyond the table gets a root cohort of its own. Jobs of projects the new table
  // lacks lose their project.
  void set_quotas(std::vector<QuotaSpec> quotas, std::vector<CohortSpec> cohorts = {});
  // The same from columns (see QuotaLedger::set); std::invalid_argument for inconsistent
  // lengths.
  void set_quotas(std::span<const int32_t> cohort, std::span<const int64_t> nominal,
                  std::span<const int64_t> borrowing, std::span<const int64_t> lending,
                  std::span<const int32_t> cohort_parent,
                  std::span<const int64_t> cohort_borrowing);
  // A project outside the quota table means no quota; negative checkpoint times mean 0.
  void set_job_meta(int64_t job, int32_t project, int64_t checkpoint_interval,
                    int64_t checkpoint_cost);
  void set_job_meta(std::span<const int64_t> jobs, std::span<const int32_t> projects,
                    std::span<const int64_t> intervals, std::span<const int64_t> costs);
  // Elastic jobs run with any task count in [min_tasks, num_tasks]: they start as large as
  // fits, grow into idle capacity (when nobody waits) and shrink instead of being evicted.
  // `min_tasks` must be >= 1; above num_tasks it means num_tasks (not elastic).
  void set_min_tasks(int64_t job, int32_t min_tasks);
  void set_min_tasks(std::span<const int64_t> jobs, std::span<const int32_t> min_tasks);
  [[nodiscard]] int32_t tasks_of(int64_t job) const;
  // Running jobs whose task count changed in the last cycle.
  [[nodiscard]] const std::vector<int32_t>& resized() const { return resized_; }
  // Exclusive jobs get nodes nobody else uses while they run (not to be changed while the job
  // runs: its nodes' flags follow the setting).
  void set_exclusive(int64_t job, bool exclusive);
  void set_exclusive(std::span<const int64_t> jobs, std::span<const uint8_t> exclusive);
  // Returns the reservation's index. Throws std::out_of_range for a node outside the
  // cluster, std::invalid_argument unless start < end (both within kMaxTime).
  int32_t add_reservation(Reservation r);
  [[nodiscard]] const std::vector<Reservation>& reservations_list() const { return reservations_; }
  [[nodiscard]] const Calendar::Vec& usage(int64_t project) const;
  // Jobs evicted by the last cycle: already back in the queue, or with a grace period still
  // running (terminating) until the caller requeues them.
  [[nodiscard]] const std::vector<int32_t>& preempted() const { return preempted_; }
  [[nodiscard]] bool terminating(int64_t job) const;
  // Work a running job would lose if stopped now: resource-seconds since its last checkpoint.
  [[nodiscard]] double lost_work(int64_t job, int64_t now) const;
  Status submit(int64_t job);
  // How many of `jobs` were submitted (unknown jobs and jobs not new are skipped).
  int32_t submit_many(std::span<const int64_t> jobs);
  Status cancel(int64_t job);
  // Start every job the policy allows at `now`; returns the jobs started, in order.
  const std::vector<int32_t>& cycle(int64_t now);
  // Release a running job's resources.
  Status finish(int64_t job);
  // How many of `jobs` were running and are now finished (the others are skipped).
  int32_t finish_many(std::span<const int64_t> jobs);
  // A running job goes back to pending (preemption, node failure): resources released.
  Status requeue(int64_t job);
  // Crash recovery / rebuild: a new or pending job becomes running since `start` exactly where
  // it already runs, without the placement policy. `nodes` has one node per task (elastic
  // jobs: min_tasks..num_tasks entries, others exactly num_tasks) and `gpus` the local devices
  // of every task in order (num_gpu each for GPU jobs, none otherwise), as nodes_of/gpus_of
  // return them. Node flags (down, cordoned, draining) are ignored, quota usage is charged but
  // not checked; exclusivity is kept: an exclusive job needs idle nodes and flags them, no job
  // joins a node flagged exclusive (kNodeUnavailable, "Exclusive"). On any failure every task
  // allocated so far is released and nothing changes (kInvalidArgument for a bad job, state,
  // start outside [0, kMaxTime], count or layout; the engine's status when resources are not
  // free).
  Status restore(int64_t job, int64_t start, std::span<const int32_t> nodes,
                 std::span<const int32_t> gpus);

  [[nodiscard]] const std::vector<int64_t>& reservations() const { return reservation_; }
  [[nodiscard]] int32_t num_jobs() const { return static_cast<int32_t>(submit_.size()); }
  [[nodiscard]] JobState state(int64_t job) const { return state_[index(job)]; }
  [[nodiscard]] int64_t start_time(int64_t job) const { return start_[index(job)]; }
  [[nodiscard]] int64_t submit_time(int64_t job) const { return submit_[index(job)]; }
  [[nodiscard]] Code reason(int64_t job) const { return reason_[index(job)]; }
  // The first reservation a blocked job was given (EASY/rlsched head, conservative: every
  // job), -1 if none. With exact estimates a job starts no later than this.
  [[nodiscard]] int64_t reservation(int64_t job) const { return reservation_[index(job)]; }
  [[nodiscard]] std::span<const int32_t> nodes_of(int64_t job) const { return nodes_[index(job)]; }
  [[nodiscard]] std::span<const int32_t> gpus_of(int64_t job) const { return gpus_[index(job)]; }
  [[nodiscard]] int32_t num_pending() const { return pending_count_; }
  [[nodiscard]] int32_t num_running() const { return static_cast<int32_t>(running_.size()); }
  [[nodiscard]] const QueueOptions& options() const { return opts_; }

 private:
  using Vec = Calendar::Vec;
  // A job index from outside, checked (std::out_of_range naming "job").
  size_t index(int64_t job) const;
  // Unchecked views for the internal loops (indices come from the queue's own tables).
  [[nodiscard]] JobState state_of(int32_t job) const { return state_[static_cast<size_t>(job)]; }
  [[nodiscard]] int32_t tasks_now(int32_t job) const {
    const auto j = static_cast<size_t>(job);
    return state_[j] == JobState::kRunning ? static_cast<int32_t>(nodes_[j].size())
                                           : num_tasks_[j];
  }
  [[nodiscard]] double lost_work_now(int32_t job, int64_t now) const;
  static void check_job(const JobSpec& job);
  [[nodiscard]] Vec need_of(int32_t job) const {
    const Request& t = task_[static_cast<size_t>(job)];
    const int64_t n = tasks_now(job);
    return {t.cpu_milli * n, t.memory_mib * n, t.total_gpu_milli() * n};
  }
  [[nodiscard]] double key(int32_t job, int64_t now) const;
  bool key_less(int32_t a, int32_t b, int64_t now) const;
  void compact_pending();
  [[nodiscard]] bool submitted_before(int32_t a, int32_t b) const;
  int32_t select_head(int64_t now);
  [[nodiscard]] bool quota_admits(int32_t job) const;
  [[nodiscard]] bool quota_admits_need(int32_t job, const Vec& need) const;
  bool start_elastic(int32_t job, int64_t now);
  void grow(int64_t now);
  Vec shrink(int32_t job, int32_t tasks);  // release `tasks` tasks from the end
  void evict(int32_t job);
  [[nodiscard]] Vec terminating_free() const;
  [[nodiscard]] bool elastic(int32_t job) const {
    return min_tasks_[static_cast<size_t>(job)] < num_tasks_[static_cast<size_t>(job)];
  }
  bool preempt_for(int32_t head, int64_t now);
  bool preempt_on_one_node(int32_t head, int64_t now);
  [[nodiscard]] bool may_evict(int32_t victim, int32_t head, bool head_within_nominal) const;
  [[nodiscard]] bool head_within_nominal(int32_t head) const;
  [[nodiscard]] Vec available_free() const;
  void charge(int32_t job, int64_t sign);
  void mask_nodes(int32_t job, int64_t now);
  void unmask_nodes();
  void set_exclusive_flags(int32_t job, bool on);
  void sorted_pending(int64_t now, std::vector<int32_t>& out) const;
  bool try_start(int32_t job, int64_t now);
  [[nodiscard]] Vec reserved_capacity(const Reservation& r) const;
  [[nodiscard]] Vec planned_free(int64_t now) const;  // free now, as running_calendar sees it
  Calendar running_calendar(int64_t now) const;
  void backfill_easy(int32_t head, int64_t now);
  // EASY without reservations (the common case): the shadow time from running jobs by end.
  void backfill_easy_shadow(int32_t head, int64_t now);
  [[nodiscard]] int64_t release_time(int64_t end, int64_t now) const;
  void backfill_rlsched(int32_t head, int64_t now);
  void backfill_conservative(int64_t now);
  // Conservative within a bounded window (calendar_horizon > 0), on a slot profile.
  void backfill_conservative_slots(int64_t now);
  // Within one conservative pass: where the last job of a shape (need, duration) could start,
  // inserted as `start` (Calendar::kNever: nowhere).
  struct Shape {
    Vec need;
    int64_t duration;
    bool operator==(const Shape&) const = default;
  };
  struct ShapeHash {
    size_t operator()(const Shape& s) const;
  };
  int64_t& earliest_seen(const Vec& need, int64_t duration, int64_t start);
  std::unordered_map<Shape, int64_t, ShapeHash> seen_;
  int64_t rlsched_reservation(int32_t head) const;
  // A placed job starts running at `start` (a restored one is not reported as started).
  void mark_running(int32_t job, int64_t start, bool restored = false);
  void add_running(int32_t job);
  void note_need(int32_t job);
  void remove_running(int32_t job);

  Engine* engine_;
  QueueOptions opts_;
  // Per job.
  std::vector<int64_t> submit_, requested_, start_, reservation_;
  std::vector<int32_t> num_tasks_;
  std::vector<double> priority_;
  std::vector<int32_t> project_;
  std::vector<int64_t> ckpt_interval_, ckpt_cost_;
  QuotaLedger quota_;  // quotas, cohorts and usage per project
  void after_quotas_changed();
  std::vector<int32_t> preempted_;
  Rng victim_rng_;
  std::vector<uint8_t> exclusive_;
  std::vector<int32_t> min_tasks_;
  std::vector<uint8_t> terminating_;  // evicted, still checkpointing within its grace period
  std::vector<int32_t> resized_;
  std::vector<Reservation> reservations_;
  std::vector<int32_t> masked_;  // nodes flagged for one placement
  std::vector<Request> task_;
  std::vector<JobState> state_;
  std::vector<Code> reason_;
  std::vector<std::vector<int32_t>> nodes_, gpus_;
  std::vector<int32_t> running_pos_;  // index into running_, -1 if not running
  // Running jobs by expected end (start + requested), for EASY's shadow time.
  std::set<std::pair<int64_t, int32_t>> by_end_;
  // Per job, set when submitted: its need with all its tasks; and the least of them over every
  // job submitted so far (a lower bound of every pending job's need).
  std::vector<Vec> need_full_;
  // Bounded conservative backfilling: the window's slots (scratch) and their profile.
  std::vector<Vec> slot_free_;
  SlotProfile profile_;
  Vec min_need_{std::numeric_limits<int64_t>::max(), std::numeric_limits<int64_t>::max(),
                std::numeric_limits<int64_t>::max()};
  // Queues.
  std::vector<int32_t> pending_;  // submission order; entries may be stale until compacted
  int32_t pending_count_ = 0;
  bool fcfs_sorted_ = true;  // pending_ is in (submit, id) order
  std::vector<int32_t> running_;
  std::vector<int32_t> started_;
  int32_t locked_head_ = -1;
  bool backfilled_ = false;  // a backfill pass ran, at last_backfill_
  int64_t last_backfill_ = 0;
  int64_t locked_reservation_ = -1;
  mutable std::vector<int32_t> scratch_;
};

}  // namespace cplat
