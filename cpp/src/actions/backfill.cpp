// QueueScheduler's backfilling: EASY (the shadow time, or a calendar with advance
// reservations), RLScheduler's simplified EASY, conservative (exact calendar, or bounded slots).
#include <algorithm>
#include <cstdint>
#include <functional>
#include <limits>
#include <utility>
#include <vector>

#include "cplat/check.hpp"
#include "cplat/queue.hpp"
#include "queue_detail.hpp"

namespace cplat {

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
  // In end order each release lands on the calendar's last step (no step is inserted in the
  // middle and shifted): O(running) instead of O(running^2). Releases only add, so the order
  // does not change the profile.
  Calendar cal(now, available_free(), opts_.calendar_resolution, opts_.calendar_horizon);
  for (const auto& [end, j] : by_end_) cal.add_release(std::max(end, now + 1), need_of(j));
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

}  // namespace cplat
