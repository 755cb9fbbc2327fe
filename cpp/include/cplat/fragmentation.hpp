// GPU fragmentation against a target workload (Weng et al., ATC'23), as pure functions plus an
// incrementally maintained per-node index.
//
// A node's idle GPU capacity counts as *fragmented* for a task type unless the node can host
// that task (GPU model allowed, enough devices with the task's share free, enough CPU); when it
// can, only the devices too small for the task count. The node's fragmentation is the
// popularity-weighted sum over the target workload's task types. Memory is not part of the
// measure, as in the paper.
//
// Evaluating a node costs O(types x devices), so FragIndex keeps one value per node and the
// cluster total, recomputing only the node an event touched, and memoises values by node
// state: a state is (GPU model, multiset of free shares, how many types fit the free CPU).
#pragma once

#include <cstdint>
#include <span>
#include <unordered_map>
#include <vector>

#include "cplat/cluster.hpp"

namespace cplat {

struct TargetTask {
  int64_t cpu_milli = 0;
  int32_t num_gpu = 0;
  int32_t gpu_milli = 0;
  ModelMask models = 0;
  double weight = 0.0;  // popularity, the weights sum to 1
};

class TargetWorkload {
 public:
  static constexpr double kMaxWeight = 1e9;

  TargetWorkload() = default;
  // Throws std::invalid_argument for a weight that is not finite or outside [0, kMaxWeight].
  explicit TargetWorkload(std::vector<TargetTask> tasks);

  [[nodiscard]] bool empty() const { return tasks_.empty(); }
  [[nodiscard]] const std::vector<TargetTask>& tasks() const { return tasks_; }
  // Number of task types whose CPU request fits cpu_free (types are kept sorted by CPU).
  [[nodiscard]] int32_t cpu_fit_count(int64_t cpu_free) const;

 private:
  std::vector<TargetTask> tasks_;   // sorted by cpu_milli (stable)
  std::vector<int64_t> cpu_sorted_;
};

// Fragmented milli-GPU of one node state. `gpu_free` is the node's per-device free milli-GPU
// (any order); `model` is its GPU model (-1 = none; std::invalid_argument outside [-1, 64)).
// Pure function, no memo.
[[nodiscard]] double node_fragmentation(const TargetWorkload& workload, int64_t cpu_free,
                                        int32_t model, std::span<const int32_t> gpu_free);

class FragIndex {
 public:
  FragIndex() = default;
  FragIndex(const ClusterState& state, TargetWorkload workload);

  [[nodiscard]] const TargetWorkload& workload() const { return workload_; }
  [[nodiscard]] double node(int32_t n) const { return node_frag_[n]; }
  [[nodiscard]] double total() const { return total_; }
  [[nodiscard]] const std::vector<double>& node_array() const { return node_frag_; }

  // Memoised fragmentation of an arbitrary state (used for "what if" scoring).
  [[nodiscard]] double evaluate(int64_t cpu_free, int32_t model, std::span<const int32_t> gpu_free);

  // Recompute node n after a change in `state`.
  void update(const ClusterState& state, int32_t n);
  // Recompute everything (after bulk edits); also resets the running sum's rounding drift.
  void rebuild(const ClusterState& state);

 private:
  struct Key {
    uint64_t a = 0;
    uint64_t b = 0;
    bool operator==(const Key&) const = default;
  };
  struct KeyHash {
    size_t operator()(const Key& k) const noexcept {
      uint64_t h = k.a * 0x9E3779B97F4A7C15ULL ^ (k.b + 0x632BE59BD9B4E019ULL + (k.a >> 17));
      h ^= h >> 29;
      return static_cast<size_t>(h * 0xBF58476D1CE4E5B9ULL);
    }
  };

  TargetWorkload workload_;
  std::vector<double> node_frag_;
  double total_ = 0.0;
  std::unordered_map<Key, double, KeyHash> memo_;
};

}  // namespace cplat
