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
    "random", "dotprod", "clustering", "packing", "bestfit", "worstfit", "fgd"};
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

// Tetris-style alignment of the request with the node's free (CPU, total GPU) vector, both
// normalised by the largest node shape; a smaller dot product scores higher.
int64_t score_dotprod(const ClusterState& state, int32_t n, const Request& r) {
  if (state.cpu_free(n) < r.cpu_milli) return kMinScore;
  const double node_cpu = static_cast<double>(state.cpu_free(n)) / kMaxSpecCpu;
  const double node_gpu = static_cast<double>(state.gpu_free_total(n)) / kMaxSpecGpu;
  const double pod_cpu = static_cast<double>(r.cpu_milli) / kMaxSpecCpu;
  const double pod_gpu = static_cast<double>(r.total_gpu_milli()) / kMaxSpecGpu;
  double dot = node_cpu * pod_cpu + node_gpu * pod_gpu;
  dot /= 2.0;
  return static_cast<int64_t>(static_cast<double>(kMaxScore) * (1.0 - dot));
}

// Prefer nodes already running tasks of the same GPU kind (shared, 1-GPU, 2-GPU, ...), then
// idle nodes, then mixed nodes; within a band, fuller nodes first.
int64_t score_gpu_clustering(const ClusterState& state, int32_t n, const Request& r) {
  if (!r.wants_gpu()) return kMinScore;
  const int slot = r.is_share() ? 0 : std::clamp(r.num_gpu, 1, kGpuKindSlots - 1);
  const int64_t fill = kMaxScore / 4 * (kMaxSpecGpuInt - state.gpu_free_total(n)) / kMaxSpecGpuInt;
  if (state.kind_count(n, slot) > 0) {
    return fill + (state.kinds_present(n) == 1 ? kMaxScore * 3 / 4 : kMaxScore * 2 / 4);
  }
  return fill + (state.kinds_present(n) == 0 ? kMaxScore / 4 : 0);
}

// Prefer sharing an already used device, then whole free devices on a used node, then an
// idle node (fewer devices first).
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

namespace {
// Leftover (CPU, GPU) after placing, each normalised by the largest node shape, half weight.
double leftover(const ClusterState& state, int32_t n, const Request& r) {
  double s = 0.0;
  s += static_cast<double>(state.cpu_free(n) - r.cpu_milli) / kMaxSpecCpu * 0.5;
  s += static_cast<double>(state.gpu_free_total(n) - r.total_gpu_milli()) / kMaxSpecGpu * 0.5;
  return s;
}
}  // namespace

int64_t score_bestfit(const ClusterState& state, int32_t n, const Request& r) {
  return static_cast<int64_t>((1.0 - leftover(state, n, r)) * static_cast<double>(kMaxScore));
}

int64_t score_worstfit(const ClusterState& state, int32_t n, const Request& r) {
  return static_cast<int64_t>(leftover(state, n, r) * static_cast<double>(kMaxScore));
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
