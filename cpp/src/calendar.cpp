#include "cplat/calendar.hpp"

#include <algorithm>
#include <limits>

#include "cplat/check.hpp"

namespace cplat {

namespace {
bool covers(const Calendar::Vec& have, const Calendar::Vec& need) {
  for (int d = 0; d < Calendar::kDims; ++d) {
    if (have[static_cast<size_t>(d)] < need[static_cast<size_t>(d)]) return false;
  }
  return true;
}

void check_time(int64_t t, const char* what) {
  check_range(t, -Calendar::kTimeLimit, Calendar::kTimeLimit, what);
}

// Largest |amount[d]|, after checking every entry against the calendar's limit.
int64_t check_amount(const Calendar::Vec& v, const char* what) {
  int64_t most = 0;
  for (const int64_t x : v) {
    check_range(x, -Calendar::kLimit, Calendar::kLimit, what);
    most = std::max(most, x < 0 ? -x : x);
  }
  return most;
}
}  // namespace

Calendar::Calendar(int64_t now, const Vec& free_now, int64_t resolution, int64_t horizon)
    : time_{now}, free_{free_now}, resolution_(resolution), horizon_(horizon) {
  check_time(now, "now");
  check_range(resolution, 1, kTimeLimit, "resolution");
  check_range(horizon, 0, kTimeLimit, "horizon");
  magnitude_ = check_amount(free_now, "free");
}

void Calendar::add_to_steps(size_t a, size_t b, const Vec& amount, int64_t sign) {
  const int64_t most = check_amount(amount, "amount");
  Vec delta{};
  for (size_t d = 0; d < delta.size(); ++d) delta[d] = sign * amount[d];
  if (magnitude_ <= kLimit - most) {
    // |free + delta| <= magnitude_ + most <= kLimit: the common case, no per-step checks.
    magnitude_ += most;
    for (size_t i = a; i < b; ++i) {
      for (size_t d = 0; d < delta.size(); ++d) free_[i][d] += delta[d];
    }
    return;
  }
  magnitude_ = kLimit;
  for (size_t i = a; i < b; ++i) {
    for (size_t d = 0; d < delta.size(); ++d) {
      // Both terms lie in [-kLimit, kLimit] (2^61), so the sum cannot overflow before the clamp.
      free_[i][d] = std::clamp(free_[i][d] + delta[d], -kLimit, kLimit);
    }
  }
}

std::size_t Calendar::step_of(int64_t t) const {
  // Last step whose start is <= t.
  const auto it = std::upper_bound(time_.begin(), time_.end(), t);
  return static_cast<size_t>(std::max<std::ptrdiff_t>(it - time_.begin() - 1, 0));
}

std::size_t Calendar::split_at(int64_t t) {
  const size_t i = step_of(t);
  if (time_[i] == t) return i;
  time_.insert(time_.begin() + static_cast<std::ptrdiff_t>(i + 1), t);
  free_.insert(free_.begin() + static_cast<std::ptrdiff_t>(i + 1), free_[i]);
  return i + 1;
}

void Calendar::add_release(int64_t t, const Vec& amount) {
  check_time(t, "t");
  check_amount(amount, "amount");
  t = std::max(t, now());
  // Round up: a release is never assumed earlier than it may happen. Both times and the
  // resolution are within 2^60, so nothing here overflows.
  if (resolution_ > 1 && t > now()) {
    t = now() + ((t - now() + resolution_ - 1) / resolution_) * resolution_;
  }
  const size_t first = split_at(t);  // before reading time_.size(): it may add a step
  add_to_steps(first, time_.size(), amount, 1);
}

Calendar::Vec Calendar::free_at(int64_t t) const {
  check_time(t, "t");
  return free_[step_of(std::max(t, now()))];
}

bool Calendar::fits(int64_t start, int64_t end, const Vec& need) const {
  check_time(start, "start");
  check_time(end, "end");
  start = std::max(start, now());
  if (end <= start) return true;
  for (size_t i = step_of(start); i < time_.size() && time_[i] < end; ++i) {
    if (!covers(free_[i], need)) return false;
  }
  return true;
}

int64_t Calendar::earliest_start(const Vec& need, int64_t duration, int64_t not_before) const {
  check_range(duration, -kTimeLimit, kTimeLimit, "duration");
  check_time(not_before, "not_before");
  const int64_t limit =
      horizon_ > 0 ? now() + horizon_ : std::numeric_limits<int64_t>::max();
  not_before = std::max(not_before, now());
  size_t i = step_of(not_before);
  int64_t candidate = not_before;
  while (i < time_.size() && candidate <= limit) {
    // Walk forward from the candidate; restart after the first step that lacks capacity.
    size_t j = i;
    bool ok = true;
    for (; j < time_.size() && (duration <= 0 || time_[j] < candidate + duration); ++j) {
      if (!covers(free_[j], need)) {
        ok = false;
        break;
      }
    }
    if (ok) return candidate;
    i = j + 1;
    if (i >= time_.size()) break;
    candidate = time_[i];
  }
  return kNever;
}

void Calendar::reserve(int64_t start, int64_t end, const Vec& amount) {
  check_time(start, "start");
  check_time(end, "end");
  check_amount(amount, "amount");
  start = std::max(start, now());
  if (end <= start) return;
  const size_t a = split_at(start);
  const size_t b = split_at(end);
  add_to_steps(a, b, amount, -1);
}

}  // namespace cplat
