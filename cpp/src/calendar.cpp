#include "cplat/calendar.hpp"

#include <algorithm>
#include <limits>

namespace cplat {

namespace {
bool covers(const Calendar::Vec& have, const Calendar::Vec& need) {
  for (int d = 0; d < Calendar::kDims; ++d) {
    if (have[static_cast<size_t>(d)] < need[static_cast<size_t>(d)]) return false;
  }
  return true;
}
}  // namespace

Calendar::Calendar(int64_t now, const Vec& free_now, int64_t resolution, int64_t horizon)
    : time_{now}, free_{free_now}, resolution_(std::max<int64_t>(resolution, 1)),
      horizon_(std::max<int64_t>(horizon, 0)) {}

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
  t = std::max(t, now());
  // Round up: a release is never assumed earlier than it may happen.
  if (resolution_ > 1 && t > now()) {
    t = now() + ((t - now() + resolution_ - 1) / resolution_) * resolution_;
  }
  for (size_t i = split_at(t); i < time_.size(); ++i) {
    for (int d = 0; d < kDims; ++d) free_[i][static_cast<size_t>(d)] += amount[static_cast<size_t>(d)];
  }
}

Calendar::Vec Calendar::free_at(int64_t t) const { return free_[step_of(std::max(t, now()))]; }

bool Calendar::fits(int64_t start, int64_t end, const Vec& need) const {
  start = std::max(start, now());
  if (end <= start) return true;
  for (size_t i = step_of(start); i < time_.size() && time_[i] < end; ++i) {
    if (!covers(free_[i], need)) return false;
  }
  return true;
}

int64_t Calendar::earliest_start(const Vec& need, int64_t duration, int64_t not_before) const {
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
  start = std::max(start, now());
  if (end <= start) return;
  const size_t a = split_at(start);
  const size_t b = split_at(end);
  for (size_t i = a; i < b; ++i) {
    for (int d = 0; d < kDims; ++d) free_[i][static_cast<size_t>(d)] -= amount[static_cast<size_t>(d)];
  }
}

}  // namespace cplat
