#include "cplat/slots.hpp"

#include <algorithm>
#include <tuple>

#include "cplat/types.hpp"

namespace cplat {

namespace {
using Vec = SlotProfile::Vec;

Vec plus(const Vec& a, const Vec& b) {
  Vec out{};
  for (size_t d = 0; d < out.size(); ++d) out[d] = a[d] + b[d];
  return out;
}

bool covers(const Vec& have, const Vec& need) {
  for (size_t d = 0; d < have.size(); ++d) {
    if (have[d] < need[d]) return false;
  }
  return true;
}

bool could_cover(const Vec& most, const Vec& need) { return covers(most, need); }
}  // namespace

void SlotProfile::reset(std::span<const Vec> slots) {
  CPLAT_ASSERT(!slots.empty());
  n_ = slots.size();
  // Every node the build visits is written (add_ included): no need to clear old contents.
  if (min_.size() < 4 * n_) {
    min_.resize(4 * n_);
    max_.resize(4 * n_);
    add_.resize(4 * n_);
  }
  build(1, 0, n_, slots);
}

void SlotProfile::pull(size_t node) {
  for (size_t d = 0; d < std::tuple_size_v<Vec>; ++d) {
    min_[node][d] = std::min(min_[2 * node][d], min_[2 * node + 1][d]) + add_[node][d];
    max_[node][d] = std::max(max_[2 * node][d], max_[2 * node + 1][d]) + add_[node][d];
  }
}

void SlotProfile::build(size_t node, size_t l, size_t r, std::span<const Vec> slots) {
  add_[node] = Vec{};
  if (r - l == 1) {
    min_[node] = max_[node] = slots[l];
    return;
  }
  const size_t m = l + (r - l) / 2;
  build(2 * node, l, m, slots);
  build(2 * node + 1, m, r, slots);
  pull(node);
}

void SlotProfile::add(size_t a, size_t b, const Vec& delta) {
  b = std::min(b, n_);
  if (a < b) add(1, 0, n_, a, b, delta);
}

void SlotProfile::add(size_t node, size_t l, size_t r, size_t a, size_t b, const Vec& delta) {
  if (b <= l || r <= a) return;
  if (a <= l && r <= b) {
    for (size_t d = 0; d < delta.size(); ++d) {
      min_[node][d] += delta[d];
      max_[node][d] += delta[d];
      add_[node][d] += delta[d];
    }
    return;
  }
  const size_t m = l + (r - l) / 2;
  add(2 * node, l, m, a, b, delta);
  add(2 * node + 1, m, r, a, b, delta);
  pull(node);
}

size_t SlotProfile::first_short(size_t node, size_t l, size_t r, size_t lo, size_t hi,
                                const Vec& need, const Vec& acc) const {
  // `acc`: the pending adds of the node's ancestors.
  if (hi <= l || r <= lo) return hi;
  if (covers(plus(min_[node], acc), need)) return hi;  // every slot here has room
  if (r - l == 1) return l;
  const Vec below = plus(acc, add_[node]);
  const size_t m = l + (r - l) / 2;
  const size_t left = first_short(2 * node, l, m, lo, hi, need, below);
  if (left != hi) return left;
  return first_short(2 * node + 1, m, r, lo, hi, need, below);
}

size_t SlotProfile::first_room(size_t node, size_t l, size_t r, size_t lo, const Vec& need,
                               const Vec& acc) const {
  if (r <= lo) return n_;
  // Per-dimension maxima may come from different slots: a necessary condition only.
  if (!could_cover(plus(max_[node], acc), need)) return n_;
  if (r - l == 1) return covers(plus(min_[node], acc), need) ? l : n_;
  const Vec below = plus(acc, add_[node]);
  const size_t m = l + (r - l) / 2;
  const size_t left = first_room(2 * node, l, m, lo, need, below);
  if (left != n_) return left;
  return first_room(2 * node + 1, m, r, lo, need, below);
}

size_t SlotProfile::earliest(size_t from, size_t len, const Vec& need) const {
  size_t c = from;
  while (c < n_) {
    const size_t hi = std::min(n_, c + std::max<size_t>(len, 1));
    const size_t bad = first_short(1, 0, n_, c, hi, need, Vec{});
    if (bad == hi) return c;
    c = first_room(1, 0, n_, bad + 1, need, Vec{});
  }
  return n_;
}

Vec SlotProfile::at(size_t slot) const {
  CPLAT_ASSERT(slot < n_);
  size_t node = 1;
  size_t l = 0;
  size_t r = n_;
  Vec acc{};
  while (r - l > 1) {
    acc = plus(acc, add_[node]);
    const size_t m = l + (r - l) / 2;
    if (slot < m) {
      node = 2 * node;
      r = m;
    } else {
      node = 2 * node + 1;
      l = m;
    }
  }
  return plus(acc, min_[node]);
}

}  // namespace cplat
