// Filter, Score and GPU-selection plugins of the placement chain.
//
// Scores are integers in [0, 100] (Kubernetes' MinNodeScore..MaxNodeScore), computed with the
// same arithmetic (including integer truncation) as the reference implementations of the FGD
// paper's artifact, because truncation decides which nodes tie and ties are broken at random.
#pragma once

#include <algorithm>
#include <cstdint>
#include <optional>
#include <span>
#include <string_view>

#include "cplat/cluster.hpp"
#include "cplat/fragmentation.hpp"
#include "cplat/rng.hpp"

namespace cplat {

inline constexpr int64_t kMinScore = 0;
inline constexpr int64_t kMaxScore = 100;
// Normalisers for the dot-product and best-fit scorers: the largest node shape considered.
inline constexpr double kMaxSpecCpu = 128000.0;  // milli-cores
inline constexpr double kMaxSpecGpu = 8000.0;    // milli-GPU
inline constexpr int64_t kMaxSpecGpuInt = 8000;

enum class ScorerKind : uint8_t {
  kRandom,
  kDotProd,
  kGpuClustering,
  kGpuPacking,
  kBestFit,
  kWorstFit,
  kFgd,
  kPython,  // an external function (ExternalScoreFn), e.g. a numba cfunc from cplat.scorers
};
inline constexpr int kNumScorers = 8;

// A scorer compiled outside the engine, called once per feasible node without the GIL (it
// must not call back into Python). It sees what the built-in scorers see, as the cluster's
// raw columns (read-only; they must not be written): per node arrays of num_nodes entries,
// gpu_begin (num_nodes + 1) indexing gpu_free (num_gpus, milli free per device), kind_count
// (num_nodes x kGpuKindSlots, row-major) and the request as {cpu_milli, memory_mib, num_gpu,
// gpu_milli, models (the mask's bits)}. Higher is better. Scores are cached per (request
// shape, node version), so the result must depend only on node `node`'s entries and the
// request. Results are clamped to [-kMaxExternalScore, kMaxExternalScore].
using ExternalScoreFn = int64_t (*)(int64_t node, int64_t num_nodes, int64_t num_gpus,
                                    const int64_t* cpu_capacity, const int64_t* cpu_free,
                                    const int64_t* memory_capacity, const int64_t* memory_free,
                                    const int32_t* gpu_model, const int32_t* gpu_begin,
                                    const int32_t* gpu_free, const int32_t* gpu_free_total,
                                    const int32_t* gpu_whole_free, const int32_t* gpu_max_free,
                                    const int32_t* kind_count, const int32_t* kinds_present,
                                    const int64_t* request);
// The score cache holds 32-bit scores; the bound also keeps weighted sums inside int64.
inline constexpr int64_t kMaxExternalScore = (int64_t{1} << 31) - 1;

// Call an external scorer on node n (its result clamped to the bounds above).
[[nodiscard]] int64_t score_external(ExternalScoreFn fn, const ClusterState& state, int32_t n,
                                     const Request& r);

enum class GpuPick : uint8_t { kBest, kWorst, kRandom, kFgd };
inline constexpr int kNumGpuPicks = 4;

[[nodiscard]] std::string_view scorer_name(ScorerKind kind);
[[nodiscard]] std::optional<ScorerKind> scorer_from_name(std::string_view name);
[[nodiscard]] std::string_view gpu_pick_name(GpuPick pick);
[[nodiscard]] std::optional<GpuPick> gpu_pick_from_name(std::string_view name);
// Scorers whose raw scores are min-max normalised over the feasible nodes before weighting.
[[nodiscard]] bool scorer_normalizes(ScorerKind kind);

// --- Filters -----------------------------------------------------------------------------
// First failing filter for node n, or Ok. Order: node state; for GPU requests "has GPUs at
// all" (GpuShare) then GPU model; CPU; memory; enough free devices (GpuShare).
// Inline: it runs once per node per task, the engine's hottest loop.
[[nodiscard]] inline Status filter_node(const ClusterState& state, int32_t n, const Request& r) {
  if (state.flags(n) != 0) return {Code::kNodeUnavailable, "NodeState"};
  if (r.wants_gpu()) {
    const int32_t model = state.gpu_model(n);
    if (state.gpu_count(n) == 0) return {Code::kInsufficientGpu, "GpuShare"};
    if (r.models != 0 && (model < 0 || ((r.models >> model) & 1U) == 0)) {
      return {Code::kGpuModelMismatch, "GpuModel"};
    }
  }
  if (r.cpu_milli > state.cpu_free(n)) return {Code::kInsufficientCpu, "NodeResourcesFit"};
  if (r.memory_mib > state.memory_free(n)) return {Code::kInsufficientMemory, "NodeResourcesFit"};
  if (!state.gpu_fits(n, r)) return {Code::kInsufficientGpu, "GpuShare"};
  return Status::Ok();
}

// --- Stateless scorers -------------------------------------------------------------------
// The cheap ones are inline so the engine's per-node loops compile to straight-line code.

// Tetris-style alignment of the request with the node's free (CPU, total GPU) vector, both
// normalised by the largest node shape; a smaller dot product scores higher.
[[nodiscard]] inline int64_t score_dotprod(const ClusterState& state, int32_t n, const Request& r) {
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
[[nodiscard]] inline int64_t score_gpu_clustering(const ClusterState& state, int32_t n,
                                                  const Request& r) {
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
[[nodiscard]] int64_t score_gpu_packing(const ClusterState& state, int32_t n, const Request& r);

// Leftover (CPU, GPU) after placing, each normalised by the largest node shape, half weight.
[[nodiscard]] inline double fit_leftover(const ClusterState& state, int32_t n, const Request& r) {
  double s = 0.0;
  s += static_cast<double>(state.cpu_free(n) - r.cpu_milli) / kMaxSpecCpu * 0.5;
  s += static_cast<double>(state.gpu_free_total(n) - r.total_gpu_milli()) / kMaxSpecGpu * 0.5;
  return s;
}

// Least leftover first (the scores are min-max normalised over the feasible nodes).
[[nodiscard]] inline int64_t score_bestfit(const ClusterState& state, int32_t n, const Request& r) {
  return static_cast<int64_t>((1.0 - fit_leftover(state, n, r)) * static_cast<double>(kMaxScore));
}

// Most leftover first: spread.
[[nodiscard]] inline int64_t score_worstfit(const ClusterState& state, int32_t n, const Request& r) {
  return static_cast<int64_t>(fit_leftover(state, n, r) * static_cast<double>(kMaxScore));
}

// --- Fragmentation gradient --------------------------------------------------------------
struct FgdChoice {
  int64_t score = kMinScore;
  int32_t gpu = -1;  // device (local index) that gives the score, for shared requests
};
// Score = 100 * sigmoid((frag_before - frag_after) / 1000); for a shared request every device
// that fits is tried and the best one (lowest index on ties) is reported.
[[nodiscard]] FgdChoice score_fgd(const ClusterState& state, FragIndex& frag, int32_t n,
                                  const Request& r);

// In-place min-max normalisation to [0, 100] (integer arithmetic, as Kubernetes does).
void normalize_scores(std::span<int64_t> scores);

// --- GPU selection inside the chosen node --------------------------------------------------
// Writes r.num_gpu local device indices to `out` and returns how many were written (0 when
// the request takes no GPU, -1 when the node cannot hold it).
int32_t pick_gpus(const ClusterState& state, FragIndex* frag, int32_t n, const Request& r,
                  GpuPick pick, Rng& rng, std::span<int32_t> out);

}  // namespace cplat
