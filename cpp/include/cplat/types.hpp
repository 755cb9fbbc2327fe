// Core value types shared by every engine module.
//
// Everything is integral: time in seconds, CPU in milli-cores, memory in MiB and GPU in
// milli-GPU (1000 = one whole device). Integers make results reproducible byte for byte.
#pragma once

#include <cassert>
#include <cstdint>
#include <string_view>

#ifndef NDEBUG
#define CPLAT_ASSERT(cond) assert(cond)
#else
#define CPLAT_ASSERT(cond) ((void)0)
#endif

namespace cplat {

inline constexpr int32_t kMilliGpu = 1000;    // one whole GPU
inline constexpr int kMaxGpuModels = 64;       // GPU models are bits of a uint64 mask
inline constexpr int kMaxGpusPerNodeKey = 8;   // nodes up to this size get compact memo keys

// Bounds every entry point enforces, chosen so that no sum or product the engine and the queue
// form can overflow int64 (signed overflow is undefined behaviour), with room far beyond any
// real cluster. Per node and per task: milli-CPU and MiB (2^36 milli-CPU = 68.7 million cores;
// it also keeps the dot-product score of a node below 2^44, so weighted sums fit) and devices.
inline constexpr int64_t kMaxQuantity = int64_t{1} << 36;
inline constexpr int32_t kMaxGpusPerNode = 1 << 16;  // a node's milli-GPU still fits int32
// Whole cluster: free and total milli-CPU, MiB and milli-GPU.
inline constexpr int64_t kMaxClusterTotal = int64_t{1} << 50;
// Tasks of one job (or gang): a job's total need stays below 2^56.
inline constexpr int32_t kMaxTasks = 1 << 20;
// Times and durations in seconds (2^56 s is two billion years), either sign: the queue adds
// a few of them (a start and a run time, rounded to the calendar's resolution) and the sums
// stay far inside int64 and inside the calendar's own bound.
inline constexpr int64_t kMaxTime = int64_t{1} << 56;

using ModelMask = uint64_t;  // bit m set = GPU model m allowed; 0 = any model
__extension__ using Int128 = __int128;  // for sums that must not overflow int64

// Node flags (bit set).
enum NodeFlag : uint8_t {
  kNodeDown = 1U << 0,
  kNodeCordoned = 1U << 1,
  kNodeDraining = 1U << 2,
  kNodeReserved = 1U << 3,   // held for another project's reservation (during one placement)
  kNodeExclusive = 1U << 4,  // an exclusive job runs here: nothing else may join
};

// What one task asks for.
//
// GPU sharing follows the openb semantics: ``num_gpu == 1 && gpu_milli < 1000`` takes that
// share of a single device; ``num_gpu == k`` with ``gpu_milli == 1000`` takes k whole devices.
struct Request {
  int64_t cpu_milli = 0;
  int64_t memory_mib = 0;
  int32_t num_gpu = 0;
  int32_t gpu_milli = 0;   // per device
  ModelMask models = 0;    // allowed GPU models, 0 = any

  [[nodiscard]] bool wants_gpu() const { return num_gpu > 0 && gpu_milli > 0; }
  [[nodiscard]] bool is_share() const { return num_gpu == 1 && gpu_milli < kMilliGpu; }
  // Every amount within [0, its per-task bound]; the inspection entry points (filter and
  // score every node) accept any such request, whatever its shape.
  [[nodiscard]] bool in_bounds() const {
    return cpu_milli >= 0 && cpu_milli <= kMaxQuantity && memory_mib >= 0 &&
           memory_mib <= kMaxQuantity && num_gpu >= 0 && num_gpu <= kMaxGpusPerNode &&
           gpu_milli >= 0 && gpu_milli <= kMilliGpu;
  }
  // The shapes the engine accepts: CPU-only (no GPU fields), one device or a share of one,
  // or several whole devices; amounts in bounds.
  [[nodiscard]] bool valid() const {
    if (!in_bounds()) return false;
    if (num_gpu == 0) return gpu_milli == 0;
    if (num_gpu == 1) return gpu_milli > 0;
    return gpu_milli == kMilliGpu;
  }
  [[nodiscard]] int64_t total_gpu_milli() const {
    return static_cast<int64_t>(num_gpu) * gpu_milli;
  }
};

// Outcome codes. A rejection always names the plugin that produced it (see Status::plugin).
enum class Code : uint8_t {
  kOk = 0,
  kNodeUnavailable,   // node down / cordoned / draining
  kGpuModelMismatch,  // task restricts GPU models and the node has none of them
  kInsufficientCpu,
  kInsufficientMemory,
  kInsufficientGpu,
  kInvalidArgument,
  kNoFeasibleNode,
  kGangIncomplete,    // some nodes fit single tasks, but not the whole gang at once
  kQuotaExceeded,     // the job's project has no quota left (hard limit or nothing to borrow)
  kTopologyLimit,     // the gang fits the cluster but not one rack/spine as its span limit asks
};
inline constexpr int kNumCodes = 11;  // number of Code values

struct Status {
  Code code = Code::kOk;
  std::string_view plugin{};  // static storage: plugin names are string literals

  [[nodiscard]] bool ok() const { return code == Code::kOk; }
  static Status Ok() { return {}; }
};

[[nodiscard]] std::string_view code_name(Code code);

}  // namespace cplat
