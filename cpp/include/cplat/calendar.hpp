// Calendar: availability profile of the cluster's aggregate free capacity over time.
//
// Backfilling decides *when*: it needs the earliest time a request of some size and duration
// could start given what is running (and what is already reserved), and it must be able to
// reserve intervals. The profile is a step function: free capacity per dimension (milli-CPU,
// MiB, milli-GPU) on [time[i], time[i+1]), the last step lasting forever.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <vector>

namespace cplat {

class Calendar {
 public:
  static constexpr int kDims = 3;  // milli-CPU, MiB, milli-GPU
  using Vec = std::array<int64_t, kDims>;
  static constexpr int64_t kNever = -1;

  // Largest magnitude of an amount and of any free value: free values saturate at +-kLimit
  // (only reachable by adding up absurd amounts) instead of overflowing.
  static constexpr int64_t kLimit = int64_t{1} << 61;
  // Largest magnitude of a time or duration. Larger than the entry points' kMaxTime: the queue
  // passes sums such as start + run time. Rounding and t + duration stay below 2^63.
  static constexpr int64_t kTimeLimit = int64_t{1} << 60;

  // Free capacity `free_now` from `now` on; `resolution` (seconds, >= 1) rounds release times
  // up so that nearby releases share a step; `horizon` (seconds, 0 = unbounded) is how far
  // ahead earliest_start looks.
  //
  // Every method throws std::invalid_argument for a time or duration outside
  // [-kTimeLimit, kTimeLimit] (resolution: [1, kTimeLimit], horizon: [0, kTimeLimit]) or an
  // amount outside [-kLimit, kLimit].
  Calendar(int64_t now, const Vec& free_now, int64_t resolution = 1, int64_t horizon = 0);

  // `amount` becomes free at time t (a running job's expected end). t <= now counts as now.
  void add_release(int64_t t, const Vec& amount);

  // Earliest t >= not_before at which `need` is free during [t, t + duration), or kNever.
  [[nodiscard]] int64_t earliest_start(const Vec& need, int64_t duration, int64_t not_before) const;
  // Is `need` free during [start, end)?
  [[nodiscard]] bool fits(int64_t start, int64_t end, const Vec& need) const;
  // Take `amount` during [start, end) (a reservation or a start).
  void reserve(int64_t start, int64_t end, const Vec& amount);

  [[nodiscard]] int64_t now() const { return time_.front(); }
  [[nodiscard]] std::size_t steps() const { return time_.size(); }
  [[nodiscard]] Vec free_at(int64_t t) const;

 private:
  std::size_t step_of(int64_t t) const;  // index of the step containing t (t >= now)
  std::size_t split_at(int64_t t);       // make a step boundary at t, return its index
  // Add `amount` (times `sign`) to steps [a, b): plain adds while the bound on every free
  // value's magnitude shows they cannot leave [-kLimit, kLimit], saturating adds otherwise.
  void add_to_steps(std::size_t a, std::size_t b, const Vec& amount, int64_t sign);

  std::vector<int64_t> time_;
  std::vector<Vec> free_;
  int64_t resolution_;
  int64_t horizon_;
  int64_t magnitude_ = 0;  // upper bound of |free| over every step and dimension
};

}  // namespace cplat
