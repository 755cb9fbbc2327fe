// QuotaLedger: project quotas, the cohort tree they borrow within, and what each project uses.
//
// Projects (Kueue's cluster queues) have a nominal quota they are guaranteed, may borrow up to
// a limit from unused nominal quota of projects under the same root cohort, and may lend up to
// a limit of their own. A cohort may cap how much its whole subtree uses beyond the sum of its
// projects' nominal quotas. The queue asks the ledger whether a job's need is admitted and
// charges it while the job runs.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "cplat/calendar.hpp"

namespace cplat {

// Cohorts form a tree (a hierarchy of resource pools): projects borrow from any project under
// the same root, and a cohort may cap how much its whole subtree uses beyond the sum of its
// projects' nominal quotas (borrowing_limit < 0: no cap).
struct CohortSpec {
  int32_t parent = -1;
  Calendar::Vec borrowing_limit{-1, -1, -1};
};

// Quota of one project (names as Kueue users know them). Projects of one cohort tree lend
// their unused nominal quota to each other; the hard limit is nominal + borrowing_limit.
struct QuotaSpec {
  int32_t cohort = -1;                 // its cohort (a tree node); -1: borrows from nobody
  Calendar::Vec nominal{};             // guaranteed (milli-CPU, MiB, milli-GPU)
  Calendar::Vec borrowing_limit{};     // most it may use above nominal
  Calendar::Vec lending_limit{};       // most of its unused nominal others may borrow
};

class QuotaLedger {
 public:
  using Vec = Calendar::Vec;

  // Replace the tables (usage starts at zero). Quota amounts must be non-negative (a cohort's
  // borrowing limit: -1 = none); cohort ids must be -1 or a cohort; cohort parents must be -1
  // or another cohort, without cycles. A project naming a cohort beyond the table gets a root
  // cohort of its own. Throws std::invalid_argument (std::out_of_range for a parent outside
  // the table) and changes nothing then.
  void set(std::vector<QuotaSpec> quotas, std::vector<CohortSpec> cohorts);
  // The same from columns: per project a cohort and 3 amounts each of nominal, borrowing and
  // lending limits (row-major); per cohort a parent and 3 borrowing limits. Throws
  // std::invalid_argument for columns of inconsistent lengths, then checks as above.
  void set(std::span<const int32_t> cohort, std::span<const int64_t> nominal,
           std::span<const int64_t> borrowing, std::span<const int64_t> lending,
           std::span<const int32_t> cohort_parent, std::span<const int64_t> cohort_borrowing);

  [[nodiscard]] bool empty() const { return quotas_.empty(); }
  [[nodiscard]] int32_t num_projects() const { return static_cast<int32_t>(quotas_.size()); }
  [[nodiscard]] const QuotaSpec& quota(int32_t project) const {
    return quotas_[static_cast<size_t>(project)];
  }
  [[nodiscard]] const Vec& usage(int32_t project) const {
    return usage_[static_cast<size_t>(project)];
  }
  // Checked (std::out_of_range naming "project").
  [[nodiscard]] const Vec& usage_of(int64_t project) const;
  // Add (sign +1) or remove (-1) a running job's need from its project (-1: none).
  void charge(int32_t project, const Vec& need, int64_t sign);
  void clear_usage();
  // Would `need` more fit the project's hard limit, what its cohort tree can lend, and every
  // cohort cap on the way to the root? Always for project -1.
  [[nodiscard]] bool admits(int32_t project, const Vec& need) const;
  // Projects under one root cohort borrow from each other.
  [[nodiscard]] bool same_root(int32_t a, int32_t b) const;
  [[nodiscard]] bool borrowing(int32_t project, size_t dim) const {
    return usage(project)[dim] > quota(project).nominal[dim];
  }

 private:
  [[nodiscard]] int32_t cohort_root(int32_t c) const;
  [[nodiscard]] bool in_subtree(int32_t project, int32_t cohort) const;

  std::vector<QuotaSpec> quotas_;
  std::vector<CohortSpec> cohorts_;
  std::vector<Vec> usage_;  // per project
};

}  // namespace cplat
