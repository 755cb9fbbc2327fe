// Filters: which nodes can take a request at all.
#include "cplat/plugin.hpp"

namespace cplat {

Status filter_node(const ClusterState& state, int32_t n, const Request& r) {
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

}  // namespace cplat
