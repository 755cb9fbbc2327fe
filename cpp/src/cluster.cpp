#include "cplat/cluster.hpp"

#include <algorithm>
#include <limits>
#include <stdexcept>
#include <string>

#include "cplat/check.hpp"

namespace cplat {

std::string_view code_name(Code code) {
  switch (code) {
    case Code::kOk: return "ok";
    case Code::kNodeUnavailable: return "node_unavailable";
    case Code::kGpuModelMismatch: return "gpu_model_mismatch";
    case Code::kInsufficientCpu: return "insufficient_cpu";
    case Code::kInsufficientMemory: return "insufficient_memory";
    case Code::kInsufficientGpu: return "insufficient_gpu";
    case Code::kInvalidArgument: return "invalid_argument";
    case Code::kNoFeasibleNode: return "no_feasible_node";
    case Code::kGangIncomplete: return "gang_incomplete";
    case Code::kTopologyLimit: return "topology_limit";
    case Code::kQuotaExceeded: return "quota_exceeded";
  }
  return "unknown";
}

namespace {
constexpr std::string_view kPlugin = "ClusterState";

int kind_slot(const Request& r) {
  if (r.is_share()) return 0;
  return std::clamp(r.num_gpu, 1, kGpuKindSlots - 1);
}
}  // namespace

ClusterState::ClusterState(std::span<const NodeSpec> nodes) {
  const size_t n = nodes.size();
  // Node and device ids are int32 everywhere.
  if (n > static_cast<size_t>(std::numeric_limits<int32_t>::max())) {
    throw std::invalid_argument("a cluster has at most 2^31 - 1 nodes");
  }
  cpu_cap_.reserve(n);
  cpu_free_.reserve(n);
  mem_cap_.reserve(n);
  mem_free_.reserve(n);
  gpu_begin_.reserve(n + 1);
  for (size_t i = 0; i < n; ++i) {
    const NodeSpec& s = nodes[i];
    // Bad node lists are rejected at the edge: the bounds keep every later sum in range and
    // model ids index a 64-bit mask.
    const std::string node = "node " + std::to_string(i) + ": ";
    check_range(s.cpu_milli, 0, kMaxQuantity, node + "cpu_milli");
    check_range(s.memory_mib, 0, kMaxQuantity, node + "memory_mib");
    check_range(s.num_gpu, 0, kMaxGpusPerNode, node + "num_gpu");
    // -1 = unknown model (only requests that accept any model can use it).
    if (s.num_gpu > 0 && (s.gpu_model < -1 || s.gpu_model >= kMaxGpuModels)) {
      throw std::invalid_argument(node + "a GPU model id must be in [-1, 64), got " +
                                  std::to_string(s.gpu_model));
    }
    // Each term is at most 2^36 and each total at most 2^50 before it: no overflow.
    if (cpu_free_total_ + s.cpu_milli > kMaxClusterTotal ||
        mem_free_total_ + s.memory_mib > kMaxClusterTotal ||
        static_cast<int64_t>(gpu_begin_.back()) + s.num_gpu > std::numeric_limits<int32_t>::max()) {
      throw std::invalid_argument(
          "cluster totals must stay within 2^50 milli-CPU and MiB and 2^31 - 1 devices");
    }
    cpu_cap_.push_back(s.cpu_milli);
    cpu_free_.push_back(s.cpu_milli);
    mem_cap_.push_back(s.memory_mib);
    mem_free_.push_back(s.memory_mib);
    gpu_model_.push_back(s.num_gpu > 0 ? s.gpu_model : -1);
    rack_.push_back(s.rack);
    spine_.push_back(s.spine);
    gpu_begin_.push_back(gpu_begin_.back() + s.num_gpu);
    gpu_free_total_.push_back(s.num_gpu * kMilliGpu);
    gpu_whole_free_.push_back(s.num_gpu);
    gpu_max_free_.push_back(s.num_gpu > 0 ? kMilliGpu : 0);
    total_gpu_milli_ += static_cast<int64_t>(s.num_gpu) * kMilliGpu;
    cpu_free_total_ += s.cpu_milli;
    mem_free_total_ += s.memory_mib;
  }
  flags_.assign(n, 0);
  version_.assign(n, 1);
  gpu_free_.assign(static_cast<size_t>(gpu_begin_.back()), kMilliGpu);
  nvlink_.assign(gpu_free_.size(), 0);
  numa_.assign(gpu_free_.size(), 0);
  kind_count_.assign(n * kGpuKindSlots, 0);
  kinds_present_.assign(n, 0);
}

void ClusterState::set_flags(int64_t n, uint8_t flags) {
  checked_index(n, num_nodes(), "node");
  set_flags_unchecked(static_cast<int32_t>(n), flags);
}

int32_t ClusterState::kind_count_at(int64_t n, int64_t slot) const {
  checked_index(n, num_nodes(), "node");
  checked_index(slot, kGpuKindSlots, "slot");
  return kind_count(static_cast<int32_t>(n), static_cast<int>(slot));
}

int32_t ClusterState::kinds_present_at(int64_t n) const {
  return kinds_present(static_cast<int32_t>(checked_index(n, num_nodes(), "node")));
}

void ClusterState::set_gpu_topology(std::span<const int32_t> nvlink, std::span<const int32_t> numa) {
  if (nvlink.size() != gpu_free_.size() || numa.size() != gpu_free_.size()) {
    throw std::invalid_argument("nvlink and numa need one id per GPU (" +
                                std::to_string(gpu_free_.size()) + "), got " +
                                std::to_string(nvlink.size()) + " and " +
                                std::to_string(numa.size()));
  }
  std::copy(nvlink.begin(), nvlink.end(), nvlink_.begin());
  std::copy(numa.begin(), numa.end(), numa_.begin());
}

bool ClusterState::gpu_fits(int32_t n, const Request& r) const {
  if (!r.wants_gpu()) return true;
  if (r.gpu_milli >= kMilliGpu) return gpu_whole_free_[n] >= r.num_gpu;
  if (r.num_gpu == 1) return gpu_max_free_[n] >= r.gpu_milli;
  int32_t fit = 0;  // several fractional devices: rare, scan
  for (int32_t f : gpu_free_of(n)) fit += (f >= r.gpu_milli) ? 1 : 0;
  return fit >= r.num_gpu;
}

void ClusterState::refresh_gpu_summary(int32_t n) {
  int32_t total = 0, whole = 0, mx = 0;
  for (int32_t f : gpu_free_of(n)) {
    total += f;
    whole += (f == kMilliGpu) ? 1 : 0;
    mx = std::max(mx, f);
  }
  gpu_free_total_[n] = total;
  gpu_whole_free_[n] = whole;
  gpu_max_free_[n] = mx;
}

void ClusterState::count_kind(int32_t n, const Request& r, int delta) {
  if (!r.wants_gpu()) return;
  int32_t& c = kind_count_[static_cast<size_t>(n) * kGpuKindSlots + kind_slot(r)];
  if (c == 0 && delta > 0) ++kinds_present_[n];
  c += delta;
  if (c == 0 && delta < 0) --kinds_present_[n];
  CPLAT_ASSERT(c >= 0);
}

namespace {
bool has_duplicates(std::span<const int32_t> ids) {
  for (size_t i = 0; i < ids.size(); ++i) {
    for (size_t j = 0; j < i; ++j) {
      if (ids[i] == ids[j]) return true;
    }
  }
  return false;
}
}  // namespace

Status ClusterState::allocate(int32_t n, const Request& r, std::span<const int32_t> local_gpus) {
  if (n < 0 || n >= num_nodes() || !r.valid() || has_duplicates(local_gpus)) {
    return {Code::kInvalidArgument, kPlugin};
  }
  if (r.cpu_milli > cpu_free_[n]) return {Code::kInsufficientCpu, kPlugin};
  if (r.memory_mib > mem_free_[n]) return {Code::kInsufficientMemory, kPlugin};
  const int32_t ngpu = gpu_count(n);
  if (r.wants_gpu()) {
    if (static_cast<int32_t>(local_gpus.size()) != r.num_gpu) return {Code::kInvalidArgument, kPlugin};
    for (const int32_t g : local_gpus) {
      if (g < 0 || g >= ngpu) return {Code::kInvalidArgument, kPlugin};
      if (gpu_free_[gpu_begin_[n] + g] < r.gpu_milli) return {Code::kInsufficientGpu, kPlugin};
    }
  } else if (!local_gpus.empty()) {
    return {Code::kInvalidArgument, kPlugin};
  }
  cpu_free_[n] -= r.cpu_milli;
  mem_free_[n] -= r.memory_mib;
  cpu_free_total_ -= r.cpu_milli;
  mem_free_total_ -= r.memory_mib;
  for (int32_t g : local_gpus) gpu_free_[gpu_begin_[n] + g] -= r.gpu_milli;
  if (r.wants_gpu()) {
    refresh_gpu_summary(n);
    allocated_gpu_milli_ += r.total_gpu_milli();
  }
  count_kind(n, r, +1);
  ++version_[n];
  CPLAT_ASSERT(check_node(n));
  return Status::Ok();
}

Status ClusterState::release(int32_t n, const Request& r, std::span<const int32_t> local_gpus) {
  // A device named twice would be given back twice: reject, like allocate does.
  if (n < 0 || n >= num_nodes() || !r.valid() || has_duplicates(local_gpus)) {
    return {Code::kInvalidArgument, kPlugin};
  }
  if (cpu_free_[n] + r.cpu_milli > cpu_cap_[n] || mem_free_[n] + r.memory_mib > mem_cap_[n]) {
    return {Code::kInvalidArgument, kPlugin};
  }
  if (r.wants_gpu() != !local_gpus.empty() ||
      (r.wants_gpu() && static_cast<int32_t>(local_gpus.size()) != r.num_gpu)) {
    return {Code::kInvalidArgument, kPlugin};
  }
  for (int32_t g : local_gpus) {
    if (g < 0 || g >= gpu_count(n) || gpu_free_[gpu_begin_[n] + g] + r.gpu_milli > kMilliGpu) {
      return {Code::kInvalidArgument, kPlugin};
    }
  }
  if (r.wants_gpu() &&
      kind_count_[static_cast<size_t>(n) * kGpuKindSlots + kind_slot(r)] == 0) {
    return {Code::kInvalidArgument, kPlugin};
  }
  cpu_free_[n] += r.cpu_milli;
  mem_free_[n] += r.memory_mib;
  cpu_free_total_ += r.cpu_milli;
  mem_free_total_ += r.memory_mib;
  for (int32_t g : local_gpus) gpu_free_[gpu_begin_[n] + g] += r.gpu_milli;
  if (r.wants_gpu()) {
    refresh_gpu_summary(n);
    allocated_gpu_milli_ -= r.total_gpu_milli();
  }
  count_kind(n, r, -1);
  ++version_[n];
  CPLAT_ASSERT(check_node(n));
  return Status::Ok();
}

bool ClusterState::check_node(int32_t n) const {
  if (cpu_free_[n] < 0 || cpu_free_[n] > cpu_cap_[n]) return false;
  if (mem_free_[n] < 0 || mem_free_[n] > mem_cap_[n]) return false;
  int32_t total = 0, whole = 0, mx = 0;
  for (int32_t f : gpu_free_of(n)) {
    if (f < 0 || f > kMilliGpu) return false;
    total += f;
    whole += (f == kMilliGpu) ? 1 : 0;
    mx = std::max(mx, f);
  }
  return total == gpu_free_total_[n] && whole == gpu_whole_free_[n] && mx == gpu_max_free_[n];
}

bool ClusterState::check_invariants() const {
  int64_t allocated = 0, cpu = 0, mem = 0;
  for (int32_t n = 0; n < num_nodes(); ++n) {
    if (!check_node(n)) return false;
    allocated += static_cast<int64_t>(gpu_count(n)) * kMilliGpu - gpu_free_total_[n];
    cpu += cpu_free_[n];
    mem += mem_free_[n];
  }
  return allocated == allocated_gpu_milli_ && cpu == cpu_free_total_ && mem == mem_free_total_;
}

}  // namespace cplat
