// ClusterState: the whole cluster as structure-of-arrays, integer units.
//
// Node arrays are indexed by node id (0..N-1); GPU arrays are indexed by a global GPU id and
// grouped per node in CSR form (gpu_begin[n] .. gpu_begin[n+1]). Allocate and release are the
// only mutators; both keep the derived per-node summaries (free totals, whole free devices,
// largest share, GPU-kind counts) up to date so that filters and scorers never rescan devices.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "cplat/types.hpp"

namespace cplat {

struct NodeSpec {
  int64_t cpu_milli = 0;
  int64_t memory_mib = 0;
  int32_t num_gpu = 0;
  int32_t gpu_model = -1;  // index into the model table, -1 = no GPU
  int32_t rack = 0;
  int32_t spine = 0;
};

// GPU "kinds" as seen by GPU-clustering: slot 0 = shared fraction, slot k = k whole GPUs.
inline constexpr int kGpuKindSlots = 17;

class ClusterState {
 public:
  ClusterState() = default;
  // Throws std::invalid_argument for capacities outside [0, kMaxQuantity] (devices: [0,
  // kMaxGpusPerNode]), cluster totals above kMaxClusterTotal or more than 2^31 - 1 nodes or
  // devices, or a GPU model id outside [-1, 64).
  explicit ClusterState(std::span<const NodeSpec> nodes);

  [[nodiscard]] int32_t num_nodes() const { return static_cast<int32_t>(cpu_cap_.size()); }
  [[nodiscard]] int32_t num_gpus() const { return static_cast<int32_t>(gpu_free_.size()); }

  // Per node.
  [[nodiscard]] int64_t cpu_capacity(int32_t n) const { return cpu_cap_[n]; }
  [[nodiscard]] int64_t cpu_free(int32_t n) const { return cpu_free_[n]; }
  [[nodiscard]] int64_t memory_capacity(int32_t n) const { return mem_cap_[n]; }
  [[nodiscard]] int64_t memory_free(int32_t n) const { return mem_free_[n]; }
  [[nodiscard]] int32_t gpu_count(int32_t n) const { return gpu_begin_[n + 1] - gpu_begin_[n]; }
  [[nodiscard]] int32_t gpu_model(int32_t n) const { return gpu_model_[n]; }
  [[nodiscard]] int32_t gpu_begin(int32_t n) const { return gpu_begin_[n]; }
  [[nodiscard]] int32_t gpu_free_total(int32_t n) const { return gpu_free_total_[n]; }
  [[nodiscard]] int32_t gpu_whole_free(int32_t n) const { return gpu_whole_free_[n]; }
  [[nodiscard]] int32_t gpu_max_free(int32_t n) const { return gpu_max_free_[n]; }
  [[nodiscard]] uint8_t flags(int32_t n) const { return flags_[n]; }
  [[nodiscard]] int32_t rack(int32_t n) const { return rack_[n]; }
  [[nodiscard]] int32_t spine(int32_t n) const { return spine_[n]; }
  [[nodiscard]] uint32_t version(int32_t n) const { return version_[n]; }
  // Tasks on the node per GPU kind (slot 0 shared, slot k = k whole GPUs), and how many
  // kinds are present at all.
  [[nodiscard]] int32_t kind_count(int32_t n, int slot) const {
    return kind_count_[static_cast<size_t>(n) * kGpuKindSlots + slot];
  }
  [[nodiscard]] int32_t kinds_present(int32_t n) const { return kinds_present_[n]; }
  // The same two, checked (std::out_of_range for a bad node or slot): for outside callers.
  [[nodiscard]] int32_t kind_count_at(int64_t n, int64_t slot) const;
  [[nodiscard]] int32_t kinds_present_at(int64_t n) const;
  [[nodiscard]] std::span<const int32_t> gpu_free_of(int32_t n) const {
    return {gpu_free_.data() + gpu_begin_[n], static_cast<size_t>(gpu_count(n))};
  }

  // Whole arrays (read-only views for Python and for vectorised passes).
  [[nodiscard]] const std::vector<int64_t>& cpu_capacity_array() const { return cpu_cap_; }
  [[nodiscard]] const std::vector<int64_t>& cpu_free_array() const { return cpu_free_; }
  [[nodiscard]] const std::vector<int64_t>& memory_capacity_array() const { return mem_cap_; }
  [[nodiscard]] const std::vector<int64_t>& memory_free_array() const { return mem_free_; }
  [[nodiscard]] const std::vector<int32_t>& gpu_free_array() const { return gpu_free_; }
  [[nodiscard]] const std::vector<int32_t>& gpu_begin_array() const { return gpu_begin_; }
  [[nodiscard]] const std::vector<int32_t>& gpu_model_array() const { return gpu_model_; }
  [[nodiscard]] const std::vector<int32_t>& max_free_array() const { return gpu_max_free_; }
  [[nodiscard]] const std::vector<uint32_t>& version_array() const { return version_; }
  [[nodiscard]] const std::vector<int32_t>& whole_free_array() const { return gpu_whole_free_; }
  [[nodiscard]] const std::vector<int32_t>& free_total_array() const { return gpu_free_total_; }
  [[nodiscard]] const std::vector<int32_t>& kind_count_array() const { return kind_count_; }
  [[nodiscard]] const std::vector<int32_t>& kinds_present_array() const { return kinds_present_; }
  [[nodiscard]] const std::vector<uint8_t>& flags_array() const { return flags_; }
  [[nodiscard]] const std::vector<int32_t>& rack_array() const { return rack_; }
  [[nodiscard]] const std::vector<int32_t>& spine_array() const { return spine_; }
  [[nodiscard]] std::vector<int32_t>& nvlink_array() { return nvlink_; }
  [[nodiscard]] std::vector<int32_t>& numa_array() { return numa_; }
  [[nodiscard]] const std::vector<int32_t>& nvlink_array() const { return nvlink_; }
  [[nodiscard]] const std::vector<int32_t>& numa_array() const { return numa_; }

  // Cluster totals.
  [[nodiscard]] int64_t total_gpu_milli() const { return total_gpu_milli_; }
  [[nodiscard]] int64_t allocated_gpu_milli() const { return allocated_gpu_milli_; }
  [[nodiscard]] int64_t cpu_free_total() const { return cpu_free_total_; }
  [[nodiscard]] int64_t memory_free_total() const { return mem_free_total_; }

  // Set a node's flags (std::out_of_range for a bad node).
  void set_flags(int64_t n, uint8_t flags);
  // The same without the check, for loops over node ids already known to be valid.
  void set_flags_unchecked(int32_t n, uint8_t flags) {
    CPLAT_ASSERT(n >= 0 && n < num_nodes());
    flags_[static_cast<size_t>(n)] = flags;
    ++version_[static_cast<size_t>(n)];
  }
  // NVLink island and NUMA domain of every device (std::invalid_argument unless both have
  // exactly num_gpus() entries).
  void set_gpu_topology(std::span<const int32_t> nvlink, std::span<const int32_t> numa);

  // Can the node hold the request at all (ignoring node flags and models)?
  [[nodiscard]] bool gpu_fits(int32_t n, const Request& r) const;

  // Take the request on node n using exactly the given GPU indices (local to the node,
  // 0..gpu_count-1). Shared requests name one device; whole-GPU requests name num_gpu devices.
  // Nothing changes unless the whole request fits.
  Status allocate(int32_t n, const Request& r, std::span<const int32_t> local_gpus);
  // Give back what allocate took. Fails (and changes nothing) if it would exceed capacity.
  Status release(int32_t n, const Request& r, std::span<const int32_t> local_gpus);

  // Debug-build invariant check of every derived summary; returns false on violation.
  [[nodiscard]] bool check_invariants() const;

 private:
  [[nodiscard]] bool check_node(int32_t n) const;
  void refresh_gpu_summary(int32_t n);
  void count_kind(int32_t n, const Request& r, int delta);

  std::vector<int64_t> cpu_cap_, cpu_free_, mem_cap_, mem_free_;
  std::vector<int32_t> gpu_begin_{0};
  std::vector<int32_t> gpu_model_;
  std::vector<uint8_t> flags_;
  std::vector<int32_t> rack_, spine_;
  std::vector<uint32_t> version_;
  std::vector<int32_t> gpu_free_;      // per GPU, milli free
  std::vector<int32_t> nvlink_, numa_;  // per GPU topology ids
  std::vector<int32_t> gpu_free_total_, gpu_whole_free_, gpu_max_free_;
  std::vector<int32_t> kind_count_;     // N x kGpuKindSlots
  std::vector<int32_t> kinds_present_;
  int64_t total_gpu_milli_ = 0;
  int64_t allocated_gpu_milli_ = 0;
  int64_t cpu_free_total_ = 0;  // over all nodes, whatever their flags
  int64_t mem_free_total_ = 0;
};

}  // namespace cplat
