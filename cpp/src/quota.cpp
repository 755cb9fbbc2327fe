#include "cplat/quota.hpp"

#include <algorithm>
#include <array>
#include <limits>
#include <stdexcept>
#include <string>
#include <utility>

#include "cplat/check.hpp"
#include "cplat/types.hpp"

namespace cplat {

void QuotaLedger::set(std::vector<QuotaSpec> quotas, std::vector<CohortSpec> cohorts) {
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
  // A project naming a cohort the table lacks gets a root cohort of its own id space.
  for (const QuotaSpec& q : quotas_) {
    while (q.cohort >= static_cast<int32_t>(cohorts_.size())) cohorts_.push_back(CohortSpec{});
  }
  usage_.assign(quotas_.size(), Vec{0, 0, 0});
}

void QuotaLedger::set(std::span<const int32_t> cohort, std::span<const int64_t> nominal,
                      std::span<const int64_t> borrowing, std::span<const int64_t> lending,
                      std::span<const int32_t> cohort_parent,
                      std::span<const int64_t> cohort_borrowing) {
  constexpr size_t kDims = Calendar::kDims;
  const size_t p = cohort.size();
  if (nominal.size() != kDims * p || borrowing.size() != kDims * p ||
      lending.size() != kDims * p) {
    throw std::invalid_argument("quota arrays must have 3 values per project");
  }
  const size_t c = cohort_parent.size();
  if (cohort_borrowing.size() != kDims * c) {
    throw std::invalid_argument("cohort limits must have 3 values per cohort");
  }
  std::vector<QuotaSpec> specs(p);
  for (size_t i = 0; i < p; ++i) {
    specs[i].cohort = cohort[i];
    for (size_t d = 0; d < kDims; ++d) {
      specs[i].nominal[d] = nominal[kDims * i + d];
      specs[i].borrowing_limit[d] = borrowing[kDims * i + d];
      specs[i].lending_limit[d] = lending[kDims * i + d];
    }
  }
  std::vector<CohortSpec> cohorts(c);
  for (size_t i = 0; i < c; ++i) {
    cohorts[i].parent = cohort_parent[i];
    for (size_t d = 0; d < kDims; ++d) cohorts[i].borrowing_limit[d] = cohort_borrowing[kDims * i + d];
  }
  set(std::move(specs), std::move(cohorts));
}

const Calendar::Vec& QuotaLedger::usage_of(int64_t project) const {
  return usage_[checked_index(project, static_cast<int64_t>(usage_.size()), "project")];
}

void QuotaLedger::charge(int32_t project, const Vec& need, int64_t sign) {
  if (project < 0) return;
  CPLAT_ASSERT(project < num_projects());
  for (size_t d = 0; d < need.size(); ++d) usage_[static_cast<size_t>(project)][d] += sign * need[d];
}

void QuotaLedger::clear_usage() { usage_.assign(quotas_.size(), Vec{0, 0, 0}); }

bool QuotaLedger::same_root(int32_t a, int32_t b) const {
  const int32_t ca = quota(a).cohort;
  const int32_t cb = quota(b).cohort;
  return ca >= 0 && cb >= 0 && cohort_root(ca) == cohort_root(cb);
}

int32_t QuotaLedger::cohort_root(int32_t c) const {
  int32_t hops = 0;
  while (c >= 0 && cohorts_[static_cast<size_t>(c)].parent >= 0 && hops++ < 64) {
    c = cohorts_[static_cast<size_t>(c)].parent;
  }
  return c;
}

bool QuotaLedger::in_subtree(int32_t project, int32_t cohort) const {
  int32_t c = quotas_[static_cast<size_t>(project)].cohort;
  for (int32_t hops = 0; c >= 0 && hops < 64; ++hops) {
    if (c == cohort) return true;
    c = cohorts_[static_cast<size_t>(c)].parent;
  }
  return false;
}

bool QuotaLedger::admits(int32_t p, const Vec& need) const {
  // Quota amounts may be anything up to INT64_MAX ("unlimited") and a cohort sums many of
  // them: the arithmetic is 128-bit so that no sum can overflow.
  using Wide = Int128;
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

}  // namespace cplat
