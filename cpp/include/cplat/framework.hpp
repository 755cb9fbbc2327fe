// Engine: the per-task Filter -> Score -> Select -> Reserve chain over a ClusterState.
//
// One Engine call places one task or a whole batch; a batch is placed in order, each task
// seeing the ones before it (greedy). Decisions are deterministic for a given seed: ties
// between equally scored nodes are broken by the profile's TieBreak using the engine's own
// generator.
#pragma once

#include <array>
#include <cstdint>
#include <span>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "cplat/cluster.hpp"
#include "cplat/fragmentation.hpp"
#include "cplat/plugin.hpp"
#include "cplat/rng.hpp"
#include "cplat/topology.hpp"

namespace cplat {

struct WeightedScorer {
  ScorerKind kind = ScorerKind::kBestFit;
  int64_t weight = 1;
  // kPython only: the function (required; the caller keeps its code alive as long as the
  // engine) and whether its raw scores are min-max normalised over the feasible nodes before
  // weighting, as bestfit's and worstfit's are.
  ExternalScoreFn external = nullptr;
  bool normalize = false;
};

// Whether the scorer's raw scores are min-max normalised before weighting.
[[nodiscard]] inline bool normalizes(const WeightedScorer& s) {
  return s.kind == ScorerKind::kPython ? s.normalize : scorer_normalizes(s.kind);
}

// How equally scored nodes are told apart.
enum class TieBreak : uint8_t {
  kRank,    // a random node order drawn once from the seed: the lowest rank wins (consolidates)
  kRandom,  // uniformly at random for every decision (spreads)
};

struct Profile {
  std::vector<WeightedScorer> scorers;
  GpuPick gpu_pick = GpuPick::kBest;
  TieBreak tie_break = TieBreak::kRank;
};

// Why a task found no node: the first failing filter per node, counted.
struct RejectionCounts {
  std::array<int32_t, kNumCodes> by_code{};  // indexed by Code
  [[nodiscard]] Status dominant() const;
};

// Column outputs of a batch placement.
struct BatchResult {
  std::vector<int32_t> node;           // -1 = not placed
  std::vector<uint8_t> code;           // Code of the outcome (dominant rejection when failed)
  std::vector<int64_t> gpu_offsets;    // CSR into gpus, size n+1
  std::vector<int32_t> gpus;           // local device indices
  std::vector<int64_t> allocated_gpu_milli;  // cluster total after each task (if tracked)
  std::vector<double> frag_milli;            // cluster fragmentation after each task
};

class Engine {
 public:
  // Scorer weights are positive and sum to at most this.
  static constexpr int64_t kMaxWeightSum = int64_t{1} << 18;

  // `state` must outlive the engine. An empty workload disables FGD and fragmentation tracking.
  // Throws std::invalid_argument for weights that are not positive or sum above
  // kMaxWeightSum, for an FGD scorer or GPU pick without a workload, and for a python scorer
  // without a function (or a function given to another kind).
  Engine(ClusterState& state, Profile profile, TargetWorkload workload, uint64_t seed);

  [[nodiscard]] const Profile& profile() const { return profile_; }
  [[nodiscard]] FragIndex& frag() { return frag_; }
  [[nodiscard]] const FragIndex& frag() const { return frag_; }
  [[nodiscard]] ClusterState& state() { return *state_; }
  [[nodiscard]] const ClusterState& state() const { return *state_; }
  [[nodiscard]] const RejectionCounts& last_rejections() const { return last_rejections_; }
  [[nodiscard]] const std::vector<uint32_t>& tie_rank() const { return rank_; }

  // Place one task; on success `node` and `gpus` (local device indices) are set and the
  // allocation is committed.
  Status place(const Request& r, int32_t& node, std::vector<int32_t>& gpus);
  // Place `count` identical tasks all or nothing (a gang; count in [1, kMaxTasks], else
  // kInvalidArgument). On success `nodes` has one node per
  // task and `gpus` the devices of every task in order (num_gpu each); on failure nothing is
  // allocated and the status names the dominant rejection. Nodes are ranked by the weighted
  // raw scores (no per-task normalisation) and a node is re-scored after each task it takes.
  Status place_gang(const Request& r, int32_t count, std::vector<int32_t>& nodes,
                    std::vector<int32_t>& gpus);
  // Topology-aware gang: `count` identical tasks all or nothing, spanning as few spines as
  // possible, then as few racks, then the engine's score/rank order. Per node the capacity for
  // the shape is counted; the smallest sufficient set of racks (best fit by capacity) is
  // chosen; its nodes are filled best score first. Multi-GPU tasks take the devices of one
  // NVLink island when one has room. With a `limit`, a gang that fits the cluster but no single
  // rack (spine) is rejected with kTopologyLimit. Same outputs as place_gang.
  Status place_gang_topology(const Request& r, int32_t count, SpanLimit limit,
                             std::vector<int32_t>& nodes, std::vector<int32_t>& gpus);
  // Place one task of `r` on each of `nodes` (in order; repeats allowed) all or nothing, e.g.
  // a plan computed outside the engine. `gpus` gets the devices of every task in order.
  Status place_gang_on(const Request& r, std::span<const int32_t> nodes,
                       std::vector<int32_t>& gpus);
  // Dense rack/spine indices of the cluster (built on first use).
  [[nodiscard]] const TopologyIndex& topology();

  // Release a placement made earlier (keeps the fragmentation index current).
  Status release(int32_t node, const Request& r, std::span<const int32_t> gpus);
  // The mirror of release: commit exactly this allocation (one task of `r` on `node` with the
  // given local devices), bypassing filters, scorers and node flags, e.g. to restore a task
  // that already runs there. Keeps the fragmentation index and score cache current. Fails with
  // kInvalidArgument (node or device out of range, a device named twice, wrong device count,
  // invalid request) or kInsufficient* (not free), and then changes nothing.
  Status allocate_on(int32_t node, const Request& r, std::span<const int32_t> gpus);
  // Place tasks in order. With `track` the cluster's allocation and fragmentation after each
  // task are recorded.
  BatchResult place_batch(std::span<const Request> requests, bool track);

  // Inspection (used by tests and "why pending"): per node first failing filter code, and raw
  // (un-normalised) scores of one scorer for feasible nodes (-1 elsewhere). Any shape is
  // inspected, but amounts must be in_bounds() and the output must have one entry per node
  // (std::invalid_argument otherwise). For `python` the profile's first python scorer is used
  // (std::invalid_argument when it has none).
  void filter_all(const Request& r, std::span<uint8_t> codes) const;
  void score_all(const Request& r, ScorerKind kind, std::span<int64_t> out);

  // Mark a node changed outside the engine (flags, bulk edits); std::out_of_range for a bad
  // node.
  void node_changed(int64_t n);

 private:
  // part_[i] for feasible_[i], from profile entry `entry`.
  void fill_scores(size_t entry, const Request& r);
  size_t filter_feasible(const Request& r);              // fills feasible_, returns count
  Status count_rejections(const Request& r);             // fills last_rejections_
  int64_t gang_score(int32_t n, const Request& r);
  FgdChoice compute_score(const WeightedScorer& s, int32_t n, const Request& r);
  int32_t shape_slot(const Request& r);
  // Devices for one task of a topology gang on node n (NVLink island first); false if none.
  bool pick_gang_gpus(int32_t n, const Request& r, std::vector<int32_t>& task_gpus);
  void rollback_gang(const Request& r, std::vector<int32_t>& nodes, std::vector<int32_t>& gpus);

  ClusterState* state_;
  Profile profile_;
  FragIndex frag_;
  Rng rng_;
  RejectionCounts last_rejections_;
  std::vector<uint32_t> rank_;  // node -> tie-break rank (a permutation of 0..N-1)
  bool uses_fgd_ = false;
  TopologyIndex topo_;  // built by topology() on first use

  // Scratch reused across calls (no allocation in the steady state).
  std::vector<int32_t> feasible_;
  std::vector<int64_t> total_;
  std::vector<int64_t> part_;

  // Scores per (scorer, request shape, node), valid while the node's version is unchanged:
  // one task changes one node, so repeated shapes rescore almost nothing.
  struct ShapeKey {
    int64_t cpu = 0;
    int32_t num_gpu = 0;
    int32_t gpu_milli = 0;
    ModelMask models = 0;
    bool operator==(const ShapeKey&) const = default;
  };
  struct ShapeHash {
    size_t operator()(const ShapeKey& k) const noexcept {
      uint64_t h = static_cast<uint64_t>(k.cpu) * 0x9E3779B97F4A7C15ULL;
      h ^= (static_cast<uint64_t>(k.num_gpu) << 40) ^ static_cast<uint64_t>(k.gpu_milli) ^
           (k.models * 0xC2B2AE3D27D4EB4FULL);
      return static_cast<size_t>(h ^ (h >> 31));
    }
  };
  struct CacheEntry {
    uint32_t version = 0;
    int32_t score = 0;
    int32_t gpu = -1;
  };
  static constexpr int32_t kShapeSlots = 128;     // at most
  static constexpr int32_t kMinShapeSlots = 8;
  static constexpr size_t kCacheBudgetBytes = size_t{64} << 20;
  int32_t shape_slots_ = kShapeSlots;             // slots in use (smaller for huge clusters)
  std::unordered_map<ShapeKey, int32_t, ShapeHash> shapes_;  // shape -> slot
  std::array<ShapeKey, kShapeSlots> slot_key_{};
  std::array<uint64_t, kShapeSlots> slot_used_{};  // last use, for least-recently-used reuse
  uint64_t tick_ = 0;
  int32_t cache_blocks_ = 0;
  // Profile entry -> cache block, -1 = none; entries with the same scorer share a block.
  std::vector<int32_t> cache_row_;
  std::vector<CacheEntry> score_cache_;  // blocks x shape_slots_ x num_nodes (node-contiguous)
};

}  // namespace cplat
