// Filter, Score and GPU-selection plugins of the placement chain.
//
// Scores are integers in [0, 100] (Kubernetes' MinNodeScore..MaxNodeScore), computed with the
// same arithmetic (including integer truncation) as the reference implementations of the FGD
// paper's artifact, because truncation decides which nodes tie and ties are broken at random.
#pragma once

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
};
inline constexpr int kNumScorers = 7;

enum class GpuPick : uint8_t { kBest, kWorst, kRandom, kFgd };
inline constexpr int kNumGpuPicks = 4;

[[nodiscard]] std::string_view scorer_name(ScorerKind kind);
[[nodiscard]] std::optional<ScorerKind> scorer_from_name(std::string_view name);
[[nodiscard]] std::string_view gpu_pick_name(GpuPick pick);
[[nodiscard]] std::optional<GpuPick> gpu_pick_from_name(std::string_view name);
// Scorers whose raw scores are min-max normalised over the feasible nodes before weighting.
[[nodiscard]] bool scorer_normalizes(ScorerKind kind);

// --- Filters -----------------------------------------------------------------------------
// First failing filter for node n, or Ok. Order: node state, GPU model, CPU, memory, GPU.
[[nodiscard]] Status filter_node(const ClusterState& state, int32_t n, const Request& r);

// --- Stateless scorers -------------------------------------------------------------------
[[nodiscard]] int64_t score_dotprod(const ClusterState& state, int32_t n, const Request& r);
[[nodiscard]] int64_t score_gpu_clustering(const ClusterState& state, int32_t n, const Request& r);
[[nodiscard]] int64_t score_gpu_packing(const ClusterState& state, int32_t n, const Request& r);
[[nodiscard]] int64_t score_bestfit(const ClusterState& state, int32_t n, const Request& r);
[[nodiscard]] int64_t score_worstfit(const ClusterState& state, int32_t n, const Request& r);

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
