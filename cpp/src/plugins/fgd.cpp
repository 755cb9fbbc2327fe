// Fragmentation-gradient scorer and GPU selection inside the chosen node.
#include <algorithm>
#include <array>
#include <cmath>
#include <vector>

#include "cplat/plugin.hpp"

namespace cplat {

namespace {

int64_t gradient_score(double before, double after) {
  const double x = (before - after) / 1000.0;
  const double sigmoid = 1.0 / (1.0 + std::exp(-x));
  return static_cast<int64_t>(sigmoid * static_cast<double>(kMaxScore));
}

}  // namespace

FgdChoice score_fgd(const ClusterState& state, FragIndex& frag, int32_t n, const Request& r) {
  const double before = frag.node(n);
  const int64_t cpu_after = state.cpu_free(n) - r.cpu_milli;
  const int32_t model = state.gpu_model(n);
  const std::span<const int32_t> free = state.gpu_free_of(n);
  const auto ngpu = static_cast<int32_t>(free.size());
  // Small nodes live on the stack; larger ones spill to a reused buffer.
  thread_local std::vector<int32_t> big;
  std::array<int32_t, 16> small{};
  int32_t* after = small.data();
  if (ngpu > static_cast<int32_t>(small.size())) {
    big.assign(free.begin(), free.end());
    after = big.data();
  } else {
    std::copy(free.begin(), free.end(), after);
  }
  const std::span<const int32_t> after_view(after, static_cast<size_t>(ngpu));

  FgdChoice best;
  if (r.is_share()) {
    // Devices with the same free share give the same state; evaluate each value once and
    // keep the lowest index, which is what a strict ">" scan over all devices would pick.
    std::array<int32_t, 16> seen{};
    int32_t nseen = 0;
    for (int32_t i = 0; i < ngpu; ++i) {
      const int32_t f = free[i];
      if (f < r.gpu_milli) continue;
      bool dup = false;
      for (int32_t j = 0; j < nseen; ++j) dup = dup || (seen[j] == f);
      if (dup) continue;
      if (nseen < static_cast<int32_t>(seen.size())) seen[nseen++] = f;
      after[i] = f - r.gpu_milli;
      const int64_t s = gradient_score(before, frag.evaluate(cpu_after, model, after_view));
      after[i] = f;
      if (best.gpu < 0 || s > best.score) {
        best.score = s;
        best.gpu = i;
      }
    }
    return best;
  }
  if (r.wants_gpu()) {
    // Whole devices: which free ones are taken does not change the state's multiset.
    int32_t need = r.num_gpu;
    for (int32_t i = 0; i < ngpu && need > 0; ++i) {
      if (after[i] >= r.gpu_milli) {
        after[i] -= r.gpu_milli;
        --need;
      }
    }
  }
  best.score = gradient_score(before, frag.evaluate(cpu_after, model, after_view));
  return best;
}

int32_t pick_gpus(const ClusterState& state, FragIndex* frag, int32_t n, const Request& r,
                  GpuPick pick, Rng& rng, std::span<int32_t> out) {
  if (!r.wants_gpu()) return 0;
  if (static_cast<int32_t>(out.size()) < r.num_gpu || !state.gpu_fits(n, r)) return -1;
  const std::span<const int32_t> free = state.gpu_free_of(n);
  const auto ngpu = static_cast<int32_t>(free.size());
  if (!r.is_share()) {
    // Several devices: the lowest-indexed ones that fit.
    int32_t taken = 0;
    for (int32_t i = 0; i < ngpu && taken < r.num_gpu; ++i) {
      if (free[i] >= r.gpu_milli) out[taken++] = i;
    }
    return taken == r.num_gpu ? taken : -1;
  }
  int32_t chosen = -1;
  switch (pick) {
    case GpuPick::kBest:
    case GpuPick::kWorst:
      for (int32_t i = 0; i < ngpu; ++i) {
        if (free[i] < r.gpu_milli) continue;
        const bool better = pick == GpuPick::kBest ? free[i] < free[chosen < 0 ? i : chosen]
                                                   : free[i] > free[chosen < 0 ? i : chosen];
        if (chosen < 0 || better) chosen = i;
      }
      break;
    case GpuPick::kRandom: {
      int32_t count = 0;
      for (int32_t i = 0; i < ngpu; ++i) count += (free[i] >= r.gpu_milli) ? 1 : 0;
      if (count == 0) return -1;
      auto k = static_cast<int32_t>(rng.below(static_cast<uint64_t>(count)));
      for (int32_t i = 0; i < ngpu; ++i) {
        if (free[i] >= r.gpu_milli && k-- == 0) {
          chosen = i;
          break;
        }
      }
      break;
    }
    case GpuPick::kFgd:
      if (frag == nullptr || frag->workload().empty()) return -1;
      chosen = score_fgd(state, *frag, n, r).gpu;
      break;
  }
  if (chosen < 0) return -1;
  out[0] = chosen;
  return 1;
}

}  // namespace cplat
