// Stateless scorers and score normalisation.
//
// Each formula follows the FGD paper's artifact to the integer truncation, so that the set of
// top-scoring nodes (and therefore the random tie-break) matches the published experiments.
#include <algorithm>
#include <array>
#include <limits>

#include "cplat/plugin.hpp"

namespace cplat {

namespace {
constexpr std::array<std::string_view, kNumScorers> kScorerNames = {
    "random", "dotprod", "clustering", "packing", "bestfit", "worstfit", "fgd", "python"};
constexpr std::array<std::string_view, kNumGpuPicks> kGpuPickNames = {"best", "worst", "random",
                                                                      "fgd"};
}  // namespace

std::string_view scorer_name(ScorerKind kind) { return kScorerNames[static_cast<size_t>(kind)]; }

std::optional<ScorerKind> scorer_from_name(std::string_view name) {
  for (size_t i = 0; i < kScorerNames.size(); ++i) {
    if (kScorerNames[i] == name) return static_cast<ScorerKind>(i);
  }
  return std::nullopt;
}

std::string_view gpu_pick_name(GpuPick pick) { return kGpuPickNames[static_cast<size_t>(pick)]; }

std::optional<GpuPick> gpu_pick_from_name(std::string_view name) {
  for (size_t i = 0; i < kGpuPickNames.size(); ++i) {
    if (kGpuPickNames[i] == name) return static_cast<GpuPick>(i);
  }
  return std::nullopt;
}

bool scorer_normalizes(ScorerKind kind) {
  return kind == ScorerKind::kBestFit || kind == ScorerKind::kWorstFit;
}

int64_t score_gpu_packing(const ClusterState& state, int32_t n, const Request& r) {
  if (r.gpu_milli <= 0) return kMinScore;
  const int32_t ngpu = state.gpu_count(n);
  const int32_t whole = state.gpu_whole_free(n);
  if (whole == ngpu) {
    return std::max<int64_t>(kMaxScore / 3 - whole, whole);
  }
  const std::span<const int32_t> free = state.gpu_free_of(n);
  std::array<int32_t, 64> order{};
  const int32_t m = std::min<int32_t>(ngpu, static_cast<int32_t>(order.size()));
  for (int32_t i = 0; i < m; ++i) order[i] = i;
  std::stable_sort(order.begin(), order.begin() + m,
                   [&](int32_t a, int32_t b) { return free[a] < free[b]; });
  int32_t need = r.num_gpu;
  int32_t whole_used = 0;
  int64_t free_ratio_on_used = 0;
  for (int32_t i = 0; i < m && need > 0; ++i) {
    const int32_t f = free[order[i]];
    if (r.gpu_milli <= f) {
      --need;
      whole_used += (f == kMilliGpu) ? 1 : 0;
      free_ratio_on_used += static_cast<int64_t>(f) * 100 / kMilliGpu;
    }
  }
  if (need != 0) return kMinScore;
  if (whole_used > 0) return std::max<int64_t>(kMaxScore / 2 - whole_used, kMaxScore / 3);
  return std::max<int64_t>(kMaxScore - free_ratio_on_used / 10, kMaxScore / 2);
}

int64_t score_external(ExternalScoreFn fn, const ClusterState& state, int32_t n, const Request& r) {
  const std::array<int64_t, 5> request = {r.cpu_milli, r.memory_mib, r.num_gpu, r.gpu_milli,
                                          static_cast<int64_t>(r.models)};
  const int64_t s =
      fn(n, state.num_nodes(), state.num_gpus(), state.cpu_capacity_array().data(),
         state.cpu_free_array().data(), state.memory_capacity_array().data(),
         state.memory_free_array().data(), state.gpu_model_array().data(),
         state.gpu_begin_array().data(), state.gpu_free_array().data(),
         state.free_total_array().data(), state.whole_free_array().data(),
         state.max_free_array().data(), state.kind_count_array().data(),
         state.kinds_present_array().data(), request.data());
  return std::clamp(s, -kMaxExternalScore, kMaxExternalScore);
}

void normalize_scores(std::span<int64_t> scores) {
  if (scores.empty()) return;
  int64_t hi = std::numeric_limits<int64_t>::min();
  int64_t lo = std::numeric_limits<int64_t>::max();
  for (int64_t s : scores) {
    hi = std::max(hi, s);
    lo = std::min(lo, s);
  }
  const int64_t range = hi - lo;
  for (int64_t& s : scores) {
    s = (range == 0) ? kMinScore : (s - lo) * (kMaxScore - kMinScore) / range + kMinScore;
  }
}

}  // namespace cplat
