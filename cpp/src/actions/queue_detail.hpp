// Helpers shared by the QueueScheduler's translation units (queue, backfill, preempt).
#pragma once

#include "cplat/calendar.hpp"

namespace cplat {

// Does `have` cover `need` in every dimension?
inline bool covers(const Calendar::Vec& have, const Calendar::Vec& need) {
  for (size_t d = 0; d < have.size(); ++d) {
    if (have[d] < need[d]) return false;
  }
  return true;
}

}  // namespace cplat
