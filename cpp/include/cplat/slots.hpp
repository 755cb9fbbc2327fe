// SlotProfile: free capacity over a bounded window of equal time slots, as a segment tree.
//
// Bounded conservative backfilling (Slurm's bf_window and bf_resolution) plans on whole slots:
// slot k covers [now + k * resolution, now + (k + 1) * resolution). Reserving a range of slots
// and finding the earliest slot from which a request fits for some slots both cost O(log
// slots) (the search for a slot with room can cost more when the dimensions disagree), so a
// cycle that plans K jobs costs O(K log slots) plus building the window, whatever the number of
// steps an exact calendar would have.
#pragma once

#include <cstddef>
#include <span>
#include <vector>

#include "cplat/calendar.hpp"

namespace cplat {

class SlotProfile {
 public:
  using Vec = Calendar::Vec;

  // Start over with these per-slot free amounts (at least one slot).
  void reset(std::span<const Vec> slots);
  [[nodiscard]] size_t size() const { return n_; }
  // Add `delta` to every slot in [a, b) (clipped to the window).
  void add(size_t a, size_t b, const Vec& delta);
  // First slot s >= from such that every slot in [s, min(s + len, size())) has `need` free in
  // every dimension; size() when there is none in the window (the window's end is open: slots
  // past it are not checked).
  [[nodiscard]] size_t earliest(size_t from, size_t len, const Vec& need) const;
  // Free amount of one slot.
  [[nodiscard]] Vec at(size_t slot) const;

 private:
  // First slot in [lo, hi) lacking `need` in some dimension, or hi.
  [[nodiscard]] size_t first_short(size_t node, size_t l, size_t r, size_t lo, size_t hi,
                                   const Vec& need, const Vec& acc) const;
  // First slot >= lo with `need` free in every dimension, or size().
  [[nodiscard]] size_t first_room(size_t node, size_t l, size_t r, size_t lo, const Vec& need,
                                  const Vec& acc) const;
  void add(size_t node, size_t l, size_t r, size_t a, size_t b, const Vec& delta);
  void build(size_t node, size_t l, size_t r, std::span<const Vec> slots);
  void pull(size_t node);

  size_t n_ = 0;
  // Per tree node: min and max over its slots (its own pending add included), pending add.
  std::vector<Vec> min_, max_, add_;
};

}  // namespace cplat
