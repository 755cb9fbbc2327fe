// Unit tests for cplat_core: cluster state, filters, scorers, fragmentation, GPU selection,
// the placement engine, restoring running jobs into the queue, the argument checks of every
// public entry point and the random number generator.
//
// Self-contained on purpose (no test framework): CHECK records a failure and carries on, main()
// runs every test function and exits non-zero if any check failed. The last line printed is
// always "N passed, M failed" (N and M count individual checks).
//

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <initializer_list>
#include <limits>
#include <set>
#include <span>
#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include "cplat/cluster.hpp"
#include "cplat/fragmentation.hpp"
#include "cplat/framework.hpp"
#include "cplat/plugin.hpp"
#include "cplat/queue.hpp"
#include "cplat/rng.hpp"
#include "cplat/slots.hpp"
#include "cplat/topology.hpp"
#include "cplat/types.hpp"

namespace {

using namespace cplat;

// --- Minimal test harness -------------------------------------------------------------------

int g_passed = 0;
int g_failed = 0;
const char* g_current_test = "";

void record(bool ok, const char* file, int line, const std::string& what) {
  if (ok) {
    ++g_passed;
    return;
  }
  ++g_failed;
  std::printf("FAIL [%s] %s:%d: %s\n", g_current_test, file, line, what.c_str());
  std::fflush(stdout);
}

template <typename T>
std::string show(const T& v) {
  std::ostringstream os;
  if constexpr (std::is_enum_v<T>) {
    os << static_cast<long long>(static_cast<std::underlying_type_t<T>>(v));
  } else if constexpr (std::is_same_v<T, bool>) {
    os << (v ? "true" : "false");
  } else if constexpr (std::is_integral_v<T> && std::is_signed_v<T>) {
    os << static_cast<long long>(v);
  } else if constexpr (std::is_integral_v<T>) {
    os << static_cast<unsigned long long>(v);
  } else if constexpr (std::is_floating_point_v<T>) {
    os.precision(17);
    os << v;
  } else {
    os << v;
  }
  return os.str();
}

template <typename A, typename B>
void check_eq(const A& a, const B& b, const char* ea, const char* eb, const char* file, int line) {
  bool equal = false;
  if constexpr (std::is_integral_v<A> && std::is_integral_v<B>) {
    equal = std::cmp_equal(a, b);
  } else {
    equal = (a == b);
  }
  record(equal, file, line,
         std::string(ea) + " == " + eb + "  (" + show(a) + " vs " + show(b) + ")");
}

void check_near(double a, double b, double tol, const char* ea, const char* eb, const char* file,
                int line) {
  const bool ok = std::fabs(a - b) <= tol * std::max(1.0, std::max(std::fabs(a), std::fabs(b)));
  record(ok, file, line, std::string(ea) + " ~= " + eb + "  (" + show(a) + " vs " + show(b) + ")");
}

#define CHECK(cond) record(static_cast<bool>(cond), __FILE__, __LINE__, #cond)
#define CHECK_EQ(a, b) check_eq((a), (b), #a, #b, __FILE__, __LINE__)
#define CHECK_NEAR(a, b, tol) check_near((a), (b), (tol), #a, #b, __FILE__, __LINE__)

// --- Fixtures ---------------------------------------------------------------------------------

ClusterState make_state(std::initializer_list<NodeSpec> specs) {
  const std::vector<NodeSpec> v(specs);
  return ClusterState(v);
}

// Node 0: 4 GPUs of model 0. Node 1: CPU only. Node 2: 8 GPUs of model 1.
ClusterState three_nodes() {
  return make_state({{32000, 65536, 4, 0, 1, 2}, {16000, 32768, 0, 3, 1, 2},
                     {64000, 131072, 8, 1, 2, 3}});
}

Request req(int64_t cpu, int64_t mem, int32_t num_gpu, int32_t gpu_milli, ModelMask models = 0) {
  Request r;
  r.cpu_milli = cpu;
  r.memory_mib = mem;
  r.num_gpu = num_gpu;
  r.gpu_milli = gpu_milli;
  r.models = models;
  return r;
}

// Everything observable about a state, to check that rejected operations change nothing.
struct Snapshot {
  std::vector<int64_t> cpu_free, mem_free;
  std::vector<int32_t> gpu_free, free_total, whole_free, max_free, kinds, present;
  std::vector<uint32_t> versions;
  std::vector<uint8_t> flags;
  int64_t allocated = 0;
  bool operator==(const Snapshot&) const = default;
};

Snapshot snapshot(const ClusterState& s, bool with_versions = true) {
  Snapshot out;
  out.cpu_free = s.cpu_free_array();
  out.mem_free = s.memory_free_array();
  out.gpu_free = s.gpu_free_array();
  out.flags = s.flags_array();
  for (int32_t n = 0; n < s.num_nodes(); ++n) {
    out.free_total.push_back(s.gpu_free_total(n));
    out.whole_free.push_back(s.gpu_whole_free(n));
    out.max_free.push_back(s.gpu_max_free(n));
    out.present.push_back(s.kinds_present(n));
    for (int k = 0; k < kGpuKindSlots; ++k) out.kinds.push_back(s.kind_count(n, k));
    if (with_versions) out.versions.push_back(s.version(n));
  }
  out.allocated = s.allocated_gpu_milli();
  return out;
}

Snapshot snapshot_without_versions(Snapshot s) {
  s.versions.clear();
  return s;
}

std::vector<int32_t> free_of(const ClusterState& s, int32_t n) {
  const auto f = s.gpu_free_of(n);
  return {f.begin(), f.end()};
}

// Target workload used by the fragmentation tests (weights are binary fractions so that the
// hand-computed values are exact).
TargetWorkload small_workload() {
  return TargetWorkload({
      {1000, 1, 500, 0, 0.5},   // half a GPU
      {1000, 2, 1000, 0, 0.25},  // two whole GPUs
      {0, 0, 0, 0, 0.25},        // CPU only
  });
}

double sum_of(const std::vector<double>& v) {
  double s = 0.0;
  for (double x : v) s += x;
  return s;
}

// --- ClusterState -----------------------------------------------------------------------------

void test_cluster_construction() {
  const ClusterState s = three_nodes();
  CHECK_EQ(s.num_nodes(), 3);
  CHECK_EQ(s.num_gpus(), 12);
  CHECK_EQ(s.cpu_capacity(0), 32000);
  CHECK_EQ(s.cpu_free(0), 32000);
  CHECK_EQ(s.memory_capacity(2), 131072);
  CHECK_EQ(s.memory_free(2), 131072);
  CHECK_EQ(s.gpu_count(0), 4);
  CHECK_EQ(s.gpu_count(1), 0);
  CHECK_EQ(s.gpu_count(2), 8);
  CHECK_EQ(s.gpu_begin(0), 0);
  CHECK_EQ(s.gpu_begin(1), 4);
  CHECK_EQ(s.gpu_begin(2), 4);
  CHECK_EQ(s.gpu_begin_array().size(), 4U);
  CHECK_EQ(s.gpu_begin_array().back(), 12);
  CHECK_EQ(s.gpu_model(0), 0);
  CHECK_EQ(s.gpu_model(1), -1);  // a node without GPUs has no model, whatever the spec says
  CHECK_EQ(s.gpu_model(2), 1);
  CHECK_EQ(s.rack(2), 2);
  CHECK_EQ(s.spine(2), 3);
  CHECK_EQ(s.gpu_free_total(0), 4000);
  CHECK_EQ(s.gpu_whole_free(0), 4);
  CHECK_EQ(s.gpu_max_free(0), 1000);
  CHECK_EQ(s.gpu_free_total(1), 0);
  CHECK_EQ(s.gpu_whole_free(1), 0);
  CHECK_EQ(s.gpu_max_free(1), 0);
  CHECK_EQ(s.gpu_free_total(2), 8000);
  CHECK_EQ(s.gpu_whole_free(2), 8);
  CHECK_EQ(s.total_gpu_milli(), 12000);
  CHECK_EQ(s.allocated_gpu_milli(), 0);
  CHECK_EQ(s.nvlink_array().size(), 12U);
  CHECK_EQ(s.numa_array().size(), 12U);
  bool all_whole = true;
  for (int32_t f : s.gpu_free_array()) all_whole = all_whole && f == kMilliGpu;
  CHECK(all_whole);
  for (int32_t n = 0; n < s.num_nodes(); ++n) {
    CHECK_EQ(s.flags(n), 0);
    CHECK_EQ(s.version(n), 1U);
    CHECK_EQ(s.kinds_present(n), 0);
    int32_t kinds = 0;
    for (int k = 0; k < kGpuKindSlots; ++k) kinds += s.kind_count(n, k);
    CHECK_EQ(kinds, 0);
  }
  CHECK(s.check_invariants());

  const ClusterState empty;
  CHECK_EQ(empty.num_nodes(), 0);
  CHECK_EQ(empty.num_gpus(), 0);
  CHECK(empty.check_invariants());

  ClusterState flagged = three_nodes();
  flagged.set_flags(1, kNodeCordoned);
  CHECK_EQ(flagged.flags(1), kNodeCordoned);
  CHECK_EQ(flagged.version(1), 2U);
  CHECK_EQ(flagged.version(0), 1U);
}

void test_request_valid() {
  CHECK(req(0, 0, 0, 0).valid());
  CHECK(req(1000, 1000, 0, 0).valid());
  CHECK(req(0, 0, 1, 1).valid());
  CHECK(req(0, 0, 1, 500).valid());
  CHECK(req(0, 0, 1, 1000).valid());
  CHECK(req(0, 0, 8, 1000).valid());
  CHECK(!req(-1, 0, 0, 0).valid());
  CHECK(!req(0, -1, 0, 0).valid());
  CHECK(!req(0, 0, -1, 0).valid());
  CHECK(!req(0, 0, 0, 500).valid());
  CHECK(!req(0, 0, 1, 0).valid());
  CHECK(!req(0, 0, 1, 1001).valid());
  CHECK(!req(0, 0, 2, 500).valid());
  CHECK(!req(0, 0, 2, 0).valid());
  CHECK(req(0, 0, 1, 500).is_share());
  CHECK(!req(0, 0, 1, 1000).is_share());
  CHECK(req(0, 0, 1, 500).wants_gpu());
  CHECK(!req(0, 0, 0, 0).wants_gpu());
  CHECK_EQ(req(0, 0, 3, 1000).total_gpu_milli(), 3000);
}

void test_gpu_fits() {
  ClusterState s = three_nodes();
  CHECK(s.gpu_fits(1, req(1000, 0, 0, 0)));       // no GPU wanted: always fits
  CHECK(!s.gpu_fits(1, req(0, 0, 1, 500)));       // no devices at all
  CHECK(s.gpu_fits(0, req(0, 0, 4, 1000)));
  CHECK(!s.gpu_fits(0, req(0, 0, 5, 1000)));
  const int32_t g[] = {0, 1, 2};
  CHECK(s.allocate(0, req(0, 0, 1, 700), std::span<const int32_t>(g, 1)).ok());
  CHECK(s.allocate(0, req(0, 0, 1, 700), std::span<const int32_t>(g + 1, 1)).ok());
  CHECK(s.allocate(0, req(0, 0, 1, 700), std::span<const int32_t>(g + 2, 1)).ok());
  // free = {300, 300, 300, 1000}
  CHECK(s.gpu_fits(0, req(0, 0, 1, 1000)));
  CHECK(!s.gpu_fits(0, req(0, 0, 2, 1000)));
  CHECK(s.gpu_fits(0, req(0, 0, 1, 300)));
  CHECK(s.gpu_fits(0, req(0, 0, 1, 301)));  // the whole free device takes it
  CHECK(s.gpu_fits(0, req(0, 0, 4, 300)));             // several fractional devices: scanned
  CHECK(!s.gpu_fits(0, req(0, 0, 2, 400)));
}

void test_allocate_release_success() {
  ClusterState s = three_nodes();
  const Snapshot fresh = snapshot(s, false);

  const Request share = req(4000, 1024, 1, 500);
  const int32_t g2[] = {2};
  Status st = s.allocate(0, share, g2);
  CHECK(st.ok());
  CHECK_EQ(s.cpu_free(0), 28000);
  CHECK_EQ(s.memory_free(0), 64512);
  CHECK(free_of(s, 0) == (std::vector<int32_t>{1000, 1000, 500, 1000}));
  CHECK_EQ(s.gpu_free_total(0), 3500);
  CHECK_EQ(s.gpu_whole_free(0), 3);
  CHECK_EQ(s.gpu_max_free(0), 1000);
  CHECK_EQ(s.kind_count(0, 0), 1);
  CHECK_EQ(s.kinds_present(0), 1);
  CHECK_EQ(s.allocated_gpu_milli(), 500);
  CHECK_EQ(s.version(0), 2U);
  CHECK_EQ(s.version(1), 1U);
  CHECK(s.check_invariants());

  const Request two = req(8000, 4096, 2, 1000);
  const int32_t g01[] = {0, 1};
  CHECK(s.allocate(0, two, g01).ok());
  CHECK(free_of(s, 0) == (std::vector<int32_t>{0, 0, 500, 1000}));
  CHECK_EQ(s.gpu_free_total(0), 1500);
  CHECK_EQ(s.gpu_whole_free(0), 1);
  CHECK_EQ(s.gpu_max_free(0), 1000);
  CHECK_EQ(s.kind_count(0, 2), 1);
  CHECK_EQ(s.kinds_present(0), 2);
  CHECK_EQ(s.allocated_gpu_milli(), 2500);
  CHECK_EQ(s.version(0), 3U);

  // A second task of an existing kind does not add a kind.
  const int32_t g3[] = {3};
  const Request share2 = req(0, 0, 1, 500);
  CHECK(s.allocate(0, share2, g3).ok());
  CHECK_EQ(s.kind_count(0, 0), 2);
  CHECK_EQ(s.kinds_present(0), 2);
  CHECK_EQ(s.gpu_max_free(0), 500);
  CHECK_EQ(s.gpu_whole_free(0), 0);

  // CPU-only task on the CPU node: no GPU bookkeeping, but the version moves.
  const Request cpu_only = req(16000, 32768, 0, 0);
  CHECK(s.allocate(1, cpu_only, {}).ok());
  CHECK_EQ(s.cpu_free(1), 0);
  CHECK_EQ(s.memory_free(1), 0);
  CHECK_EQ(s.kinds_present(1), 0);
  CHECK_EQ(s.version(1), 2U);
  CHECK(s.check_invariants());

  // Very large whole-GPU requests are counted in the last kind slot.
  const int32_t g_all[] = {0, 1, 2, 3, 4, 5, 6, 7};
  const Request eight = req(0, 0, 8, 1000);
  CHECK(s.allocate(2, eight, g_all).ok());
  CHECK_EQ(s.kind_count(2, 8), 1);
  CHECK_EQ(s.gpu_free_total(2), 0);
  CHECK_EQ(s.gpu_max_free(2), 0);
  CHECK_EQ(s.allocated_gpu_milli(), 11000);

  // Release everything, in another order: back to the fresh state.
  CHECK(s.release(0, share, g2).ok());
  CHECK(s.release(1, cpu_only, {}).ok());
  CHECK(s.release(2, eight, g_all).ok());
  CHECK(s.release(0, two, g01).ok());
  CHECK_EQ(s.kinds_present(0), 1);
  CHECK(s.release(0, share2, g3).ok());
  CHECK(snapshot(s, false) == fresh);
  CHECK_EQ(s.version(0), 7U);  // 3 allocations + 3 releases
  CHECK(s.check_invariants());
}

void test_allocate_rejections() {
  ClusterState s = three_nodes();
  const int32_t g2[] = {2};
  CHECK(s.allocate(0, req(30000, 60000, 1, 600), g2).ok());  // cpu 2000, mem 5536 left
  const Snapshot before = snapshot(s);

  auto expect = [&](Status st, Code code, int line) {
    record(st.code == code, __FILE__, line,
           "allocate code " + std::string(code_name(st.code)) + " vs " +
               std::string(code_name(code)));
    record(st.plugin == "ClusterState", __FILE__, line, "plugin ClusterState");
    record(snapshot(s) == before, __FILE__, line, "rejected allocate left the state unchanged");
  };
  const int32_t g0[] = {0};
  const int32_t g4[] = {4};
  const int32_t gneg[] = {-1};
  const int32_t g00[] = {0, 0};
  const int32_t g01[] = {0, 1};
  const int32_t g013[] = {0, 1, 3};
  const int32_t g12[] = {1, 2};
  const int32_t g24[] = {2, 4};
  expect(s.allocate(0, req(2001, 0, 0, 0), {}), Code::kInsufficientCpu, __LINE__);
  expect(s.allocate(0, req(0, 5537, 0, 0), {}), Code::kInsufficientMemory, __LINE__);
  expect(s.allocate(0, req(0, 0, 1, 500), g2), Code::kInsufficientGpu, __LINE__);  // 400 free
  expect(s.allocate(0, req(0, 0, 2, 1000), g12), Code::kInsufficientGpu, __LINE__);
  expect(s.allocate(0, req(0, 0, 1, 500), g4), Code::kInvalidArgument, __LINE__);
  expect(s.allocate(0, req(0, 0, 1, 500), gneg), Code::kInvalidArgument, __LINE__);
  expect(s.allocate(0, req(0, 0, 2, 1000), g00), Code::kInvalidArgument, __LINE__);
  expect(s.allocate(0, req(0, 0, 2, 1000), g0), Code::kInvalidArgument, __LINE__);
  expect(s.allocate(0, req(0, 0, 2, 1000), g013), Code::kInvalidArgument, __LINE__);
  expect(s.allocate(0, req(0, 0, 1, 500), {}), Code::kInvalidArgument, __LINE__);
  expect(s.allocate(0, req(0, 0, 0, 0), g0), Code::kInvalidArgument, __LINE__);  // GPUs for CPU task
  expect(s.allocate(1, req(0, 0, 1, 500), g0), Code::kInvalidArgument, __LINE__);  // node has none
  expect(s.allocate(3, req(0, 0, 0, 0), {}), Code::kInvalidArgument, __LINE__);
  expect(s.allocate(-1, req(0, 0, 0, 0), {}), Code::kInvalidArgument, __LINE__);
  expect(s.allocate(0, req(-1, 0, 0, 0), {}), Code::kInvalidArgument, __LINE__);
  expect(s.allocate(0, req(0, -1, 0, 0), {}), Code::kInvalidArgument, __LINE__);
  expect(s.allocate(0, req(0, 0, -1, 0), {}), Code::kInvalidArgument, __LINE__);
  expect(s.allocate(0, req(0, 0, 1, -5), {}), Code::kInvalidArgument, __LINE__);
  expect(s.allocate(0, req(0, 0, 1, 1001), g0), Code::kInvalidArgument, __LINE__);
  // Shapes outside Request::valid(): GPU share without devices, device without share, several
  // fractional devices.
  expect(s.allocate(0, req(0, 0, 0, 500), {}), Code::kInvalidArgument, __LINE__);
  expect(s.allocate(0, req(0, 0, 1, 0), {}), Code::kInvalidArgument, __LINE__);
  expect(s.allocate(0, req(0, 0, 1, 0), g0), Code::kInvalidArgument, __LINE__);
  expect(s.allocate(0, req(0, 0, 2, 300), g01), Code::kInvalidArgument, __LINE__);
  // Insufficient GPU is reported even when a later index is invalid (devices checked in order).
  expect(s.allocate(0, req(0, 0, 2, 1000), g24), Code::kInsufficientGpu, __LINE__);
  // Nothing above committed anything: a valid request still succeeds afterwards.
  CHECK(s.allocate(0, req(0, 0, 2, 1000), g01).ok());
  CHECK(s.check_invariants());
}

void test_release_rejections() {
  ClusterState s = three_nodes();
  const int32_t g0[] = {0};
  const int32_t g1[] = {1};
  const int32_t g4[] = {4};
  const int32_t g01[] = {0, 1};
  const Request half = req(1000, 100, 1, 500);
  CHECK(s.allocate(0, half, g0).ok());
  CHECK(s.allocate(0, req(0, 0, 1, 500), g0).ok());  // device 0 now fully used by two halves
  const Snapshot before = snapshot(s);

  auto expect_invalid = [&](Status st, int line) {
    record(st.code == Code::kInvalidArgument, __FILE__, line,
           "release code " + std::string(code_name(st.code)) + " vs invalid_argument");
    record(st.plugin == "ClusterState", __FILE__, line, "plugin ClusterState");
    record(snapshot(s) == before, __FILE__, line, "rejected release left the state unchanged");
  };
  expect_invalid(s.release(0, req(1001, 0, 0, 0), {}), __LINE__);     // CPU beyond capacity
  expect_invalid(s.release(0, req(0, 101, 0, 0), {}), __LINE__);      // memory beyond capacity
  expect_invalid(s.release(0, req(0, 0, 1, 500), g1), __LINE__);      // device 1 is free
  expect_invalid(s.release(0, req(0, 0, 1, 500), g4), __LINE__);      // bad index
  expect_invalid(s.release(0, req(0, 0, 1, 500), {}), __LINE__);      // missing device
  expect_invalid(s.release(0, req(0, 0, 0, 0), g0), __LINE__);        // devices for CPU task
  expect_invalid(s.release(0, req(0, 0, 2, 1000), g0), __LINE__);     // wrong count
  expect_invalid(s.release(0, req(0, 0, 2, 1000), g01), __LINE__);    // device 1 is free
  expect_invalid(s.release(0, req(0, 0, 1, 1000), g0), __LINE__);     // no 1-GPU task there
  expect_invalid(s.release(5, req(0, 0, 0, 0), {}), __LINE__);
  expect_invalid(s.release(0, req(-1, 0, 0, 0), {}), __LINE__);
  expect_invalid(s.release(0, req(0, 0, 1, 1001), g0), __LINE__);
  expect_invalid(s.release(1, req(0, 0, 1, 500), g0), __LINE__);      // CPU node has no devices

  CHECK(s.release(0, half, g0).ok());
  CHECK(s.release(0, req(0, 0, 1, 500), g0).ok());
  CHECK_EQ(s.kinds_present(0), 0);
  CHECK_EQ(s.allocated_gpu_milli(), 0);
  // Releasing once more exceeds capacity.
  const Snapshot empty = snapshot(s);
  const Status again = s.release(0, half, g0);
  CHECK_EQ(again.code, Code::kInvalidArgument);
  CHECK(snapshot(s) == empty);
  CHECK(s.check_invariants());
}

// A device named twice is rejected by release as by allocate (it would otherwise be given back
// twice and end above 1000 milli-GPU free).
void test_release_duplicate_gpu() {
  ClusterState s = make_state({{8000, 8000, 2, 0, 0, 0}});
  const int32_t g01[] = {0, 1};
  const int32_t g00[] = {0, 0};
  CHECK(s.allocate(0, req(0, 0, 2, 1000), g01).ok());
  const Snapshot before = snapshot(s);
  const Status st = s.release(0, req(0, 0, 2, 1000), g00);
  CHECK_EQ(st.code, Code::kInvalidArgument);
  CHECK(snapshot(s) == before);
  CHECK(s.check_invariants());
  // Also when the duplicate is the only problem and the device has room for both.
  ClusterState t = make_state({{8000, 8000, 2, 0, 0, 0}});
  const int32_t g0[] = {0};
  CHECK(t.allocate(0, req(0, 0, 1, 1000), g0).ok());
  const Snapshot t_before = snapshot(t);
  CHECK_EQ(t.release(0, req(0, 0, 2, 1000), g00).code, Code::kInvalidArgument);
  CHECK(snapshot(t) == t_before);
}

// Model ids index a 64-bit mask: node lists with ids outside [-1, 64) are rejected up front.
void test_gpu_model_out_of_range_rejected() {
  bool threw = false;
  try {
    const ClusterState s = make_state({{8000, 8000, 2, 70, 0, 0}});
  } catch (const std::invalid_argument&) {
    threw = true;
  }
  CHECK(threw);
  threw = false;
  try {
    const ClusterState s = make_state({{-1, 8000, 0, -1, 0, 0}});
  } catch (const std::invalid_argument&) {
    threw = true;
  }
  CHECK(threw);
  const ClusterState ok = make_state({{8000, 8000, 2, 63, 0, 0}, {8000, 8000, 0, 99, 0, 0}});
  CHECK_EQ(ok.gpu_model(1), -1);  // a CPU-only node's model is ignored
}

// --- Filters ----------------------------------------------------------------------------------

void test_filters() {
  ClusterState s = make_state({{32000, 65536, 4, 0, 0, 0}, {16000, 32768, 0, 0, 0, 0},
                               {64000, 131072, 8, 1, 0, 0}, {8000, 8000, 2, -1, 0, 0}});
  auto expect = [&](int32_t n, const Request& r, Code code, std::string_view plugin, int line) {
    const Status st = filter_node(s, n, r);
    record(st.code == code, __FILE__, line,
           "filter code " + std::string(code_name(st.code)) + " vs " + std::string(code_name(code)));
    record(st.plugin == plugin, __FILE__, line,
           "filter plugin " + std::string(st.plugin) + " vs " + std::string(plugin));
  };
  expect(0, req(1000, 1000, 1, 500), Code::kOk, "", __LINE__);
  expect(1, req(1000, 1000, 0, 0), Code::kOk, "", __LINE__);
  expect(1, req(1000, 1000, 1, 500), Code::kInsufficientGpu, "GpuShare", __LINE__);
  expect(0, req(1000, 1000, 1, 500, 1ULL << 1), Code::kGpuModelMismatch, "GpuModel", __LINE__);
  expect(0, req(1000, 1000, 1, 500, 1ULL << 0), Code::kOk, "", __LINE__);
  expect(2, req(1000, 1000, 1, 500, (1ULL << 0) | (1ULL << 1)), Code::kOk, "", __LINE__);
  expect(3, req(1000, 1000, 1, 500, 1ULL << 0), Code::kGpuModelMismatch, "GpuModel", __LINE__);
  expect(3, req(1000, 1000, 1, 500), Code::kOk, "", __LINE__);  // any model: unknown is fine
  // A CPU-only task ignores the model mask.
  expect(1, req(1000, 1000, 0, 0, 1ULL << 5), Code::kOk, "", __LINE__);
  expect(0, req(32001, 1000, 0, 0), Code::kInsufficientCpu, "NodeResourcesFit", __LINE__);
  expect(0, req(1000, 65537, 0, 0), Code::kInsufficientMemory, "NodeResourcesFit", __LINE__);
  expect(0, req(1000, 1000, 5, 1000), Code::kInsufficientGpu, "GpuShare", __LINE__);
  // Order: CPU before memory before GPU.
  expect(0, req(32001, 65537, 5, 1000), Code::kInsufficientCpu, "NodeResourcesFit", __LINE__);
  expect(0, req(1000, 65537, 5, 1000), Code::kInsufficientMemory, "NodeResourcesFit", __LINE__);
  // Model before resources.
  expect(0, req(32001, 1000, 1, 500, 1ULL << 3), Code::kGpuModelMismatch, "GpuModel", __LINE__);
  // Node state first of all.
  s.set_flags(0, kNodeDown);
  expect(0, req(0, 0, 0, 0), Code::kNodeUnavailable, "NodeState", __LINE__);
  s.set_flags(0, kNodeDraining);
  expect(0, req(32001, 1000, 1, 500, 1ULL << 3), Code::kNodeUnavailable, "NodeState", __LINE__);
  s.set_flags(0, 0);
  expect(0, req(0, 0, 0, 0), Code::kOk, "", __LINE__);

  // Shared request on partly used devices.
  const int32_t g[] = {0, 1, 2, 3};
  for (int i = 0; i < 4; ++i) {
    CHECK(s.allocate(0, req(0, 0, 1, 600), std::span<const int32_t>(g + i, 1)).ok());
  }
  expect(0, req(0, 0, 1, 400), Code::kOk, "", __LINE__);
  expect(0, req(0, 0, 1, 401), Code::kInsufficientGpu, "GpuShare", __LINE__);
  expect(0, req(0, 0, 1, 1000), Code::kInsufficientGpu, "GpuShare", __LINE__);

  CHECK_EQ(code_name(Code::kOk), std::string_view("ok"));
  CHECK_EQ(code_name(Code::kNodeUnavailable), std::string_view("node_unavailable"));
  CHECK_EQ(code_name(Code::kGpuModelMismatch), std::string_view("gpu_model_mismatch"));
  CHECK_EQ(code_name(Code::kInsufficientCpu), std::string_view("insufficient_cpu"));
  CHECK_EQ(code_name(Code::kInsufficientMemory), std::string_view("insufficient_memory"));
  CHECK_EQ(code_name(Code::kInsufficientGpu), std::string_view("insufficient_gpu"));
  CHECK_EQ(code_name(Code::kInvalidArgument), std::string_view("invalid_argument"));
  CHECK_EQ(code_name(Code::kNoFeasibleNode), std::string_view("no_feasible_node"));
}

// --- Scorers ----------------------------------------------------------------------------------

void test_scorer_names() {
  for (int i = 0; i < kNumScorers; ++i) {
    const auto kind = static_cast<ScorerKind>(i);
    const auto back = scorer_from_name(scorer_name(kind));
    CHECK(back.has_value() && *back == kind);
  }
  CHECK_EQ(scorer_name(ScorerKind::kFgd), std::string_view("fgd"));
  CHECK_EQ(scorer_name(ScorerKind::kGpuClustering), std::string_view("clustering"));
  CHECK(!scorer_from_name("nope").has_value());
  CHECK(!scorer_from_name("").has_value());
  for (int i = 0; i < kNumGpuPicks; ++i) {
    const auto pick = static_cast<GpuPick>(i);
    const auto back = gpu_pick_from_name(gpu_pick_name(pick));
    CHECK(back.has_value() && *back == pick);
  }
  CHECK_EQ(gpu_pick_name(GpuPick::kWorst), std::string_view("worst"));
  CHECK(!gpu_pick_from_name("Best").has_value());
  CHECK(scorer_normalizes(ScorerKind::kBestFit));
  CHECK(scorer_normalizes(ScorerKind::kWorstFit));
  CHECK(!scorer_normalizes(ScorerKind::kDotProd));
  CHECK(!scorer_normalizes(ScorerKind::kFgd));
  CHECK(!scorer_normalizes(ScorerKind::kGpuClustering));
  CHECK(!scorer_normalizes(ScorerKind::kGpuPacking));
  CHECK(!scorer_normalizes(ScorerKind::kRandom));
}

void test_score_dotprod() {
  const ClusterState s = three_nodes();
  // node (0.25, 0.5) . pod (0.0625, 0.125) = 0.078125; / 2 = 0.0390625; 100 * (1 - x) = 96.09
  CHECK_EQ(score_dotprod(s, 0, req(8000, 0, 1, 1000)), 96);
  // CPU-only: (0.25 * 0.125) / 2 = 0.015625 -> 98.4
  CHECK_EQ(score_dotprod(s, 0, req(16000, 0, 0, 0)), 98);
  CHECK_EQ(score_dotprod(s, 0, req(0, 0, 0, 0)), 100);
  CHECK_EQ(score_dotprod(s, 1, req(16001, 0, 0, 0)), kMinScore);  // does not fit the CPU
  // node 2: (0.5, 1.0) . (0.5, 1.0) = 1.25, / 2 = 0.625 -> 37.5
  CHECK_EQ(score_dotprod(s, 2, req(64000, 0, 8, 1000)), 37);
}

void test_score_gpu_clustering() {
  ClusterState s = three_nodes();
  const Request share = req(0, 0, 1, 500);
  const Request one = req(0, 0, 1, 1000);
  // Idle node: fill 25 * 4000 / 8000 = 12, + 25 for an idle node.
  CHECK_EQ(score_gpu_clustering(s, 0, share), 37);
  // Node 2: fill 0, + 25.
  CHECK_EQ(score_gpu_clustering(s, 2, share), 25);
  CHECK_EQ(score_gpu_clustering(s, 0, req(1000, 0, 0, 0)), kMinScore);
  const int32_t g2[] = {2};
  CHECK(s.allocate(0, share, g2).ok());
  // Same kind only: fill 25 * 4500 / 8000 = 14, + 75.
  CHECK_EQ(score_gpu_clustering(s, 0, share), 89);
  // Another kind on a node with one kind: fill 14 + 0.
  CHECK_EQ(score_gpu_clustering(s, 0, one), 14);
  const int32_t g01[] = {0, 1};
  CHECK(s.allocate(0, req(0, 0, 2, 1000), g01).ok());
  // Mixed node, kind present: fill 25 * 6500 / 8000 = 20, + 50.
  CHECK_EQ(score_gpu_clustering(s, 0, share), 70);
  CHECK_EQ(score_gpu_clustering(s, 0, req(0, 0, 2, 1000)), 70);
  // Mixed node, kind absent: fill only.
  CHECK_EQ(score_gpu_clustering(s, 0, one), 20);
}

void test_score_gpu_packing() {
  ClusterState s = three_nodes();
  // Idle nodes: max(33 - whole, whole).
  CHECK_EQ(score_gpu_packing(s, 0, req(0, 0, 1, 500)), 29);
  CHECK_EQ(score_gpu_packing(s, 2, req(0, 0, 1, 500)), 25);
  CHECK_EQ(score_gpu_packing(s, 0, req(1000, 0, 0, 0)), kMinScore);
  const int32_t g2[] = {2};
  CHECK(s.allocate(0, req(0, 0, 1, 500), g2).ok());  // free {1000, 1000, 500, 1000}
  // Shares the used device: 100 - (50 / 10) = 95.
  CHECK_EQ(score_gpu_packing(s, 0, req(0, 0, 1, 500)), 95);
  CHECK_EQ(score_gpu_packing(s, 0, req(0, 0, 1, 200)), 95);
  // Needs a whole free device on a used node: max(50 - 1, 33).
  CHECK_EQ(score_gpu_packing(s, 0, req(0, 0, 1, 600)), 49);
  CHECK_EQ(score_gpu_packing(s, 0, req(0, 0, 1, 1000)), 49);
  CHECK_EQ(score_gpu_packing(s, 0, req(0, 0, 2, 1000)), 48);
  CHECK_EQ(score_gpu_packing(s, 0, req(0, 0, 3, 1000)), 47);
  CHECK_EQ(score_gpu_packing(s, 0, req(0, 0, 4, 1000)), kMinScore);  // cannot fit
  const int32_t g0[] = {0};
  CHECK(s.allocate(0, req(0, 0, 1, 900), g0).ok());  // free {100, 1000, 500, 1000}
  // Best (smallest) fitting used device: 500 free -> 100 - 5.
  CHECK_EQ(score_gpu_packing(s, 0, req(0, 0, 1, 300)), 95);
  // 100 free on the fullest device -> 100 - 1.
  CHECK_EQ(score_gpu_packing(s, 0, req(0, 0, 1, 100)), 99);
}

void test_score_fit() {
  const ClusterState s = three_nodes();
  const Request r = req(8000, 0, 1, 1000);
  // leftover = 24000 / 128000 / 2 + 3000 / 8000 / 2 = 0.28125
  CHECK_EQ(score_bestfit(s, 0, r), 71);
  CHECK_EQ(score_worstfit(s, 0, r), 28);
  // CPU node: leftover = 8000 / 128000 / 2 + 0 = 0.03125 (GPU term -1000 / 8000 / 2 = -0.0625)
  const Request c = req(8000, 0, 0, 0);
  CHECK_EQ(score_bestfit(s, 1, c), 96);  // 1 - 0.03125 -> 96.875
  CHECK_EQ(score_worstfit(s, 1, c), 3);  // 3.125
  // Fuller node fits better.
  CHECK(score_bestfit(s, 0, r) > score_bestfit(s, 2, r));
  CHECK(score_worstfit(s, 0, r) < score_worstfit(s, 2, r));
}

void test_normalize_scores() {
  std::vector<int64_t> a{10, 20, 30};
  normalize_scores(a);
  CHECK(a == (std::vector<int64_t>{0, 50, 100}));
  std::vector<int64_t> b{5, 5, 5};
  normalize_scores(b);
  CHECK(b == (std::vector<int64_t>{0, 0, 0}));
  std::vector<int64_t> c{1, 2, 4};
  normalize_scores(c);
  CHECK(c == (std::vector<int64_t>{0, 33, 100}));  // integer truncation
  std::vector<int64_t> d{-10, 0, 10, 30};
  normalize_scores(d);
  CHECK(d == (std::vector<int64_t>{0, 25, 50, 100}));
  std::vector<int64_t> one{42};
  normalize_scores(one);
  CHECK(one == (std::vector<int64_t>{0}));
  std::vector<int64_t> empty;
  normalize_scores(empty);
  CHECK(empty.empty());
}

// --- Fragmentation ----------------------------------------------------------------------------

void test_node_fragmentation() {
  const TargetWorkload w = small_workload();
  CHECK_EQ(w.tasks().size(), 3U);
  CHECK_EQ(w.cpu_fit_count(0), 1);
  CHECK_EQ(w.cpu_fit_count(999), 1);
  CHECK_EQ(w.cpu_fit_count(1000), 3);
  CHECK_EQ(w.cpu_fit_count(-1), 0);
  CHECK(!w.empty());
  CHECK(TargetWorkload().empty());

  const std::vector<int32_t> free{1000, 300, 0, 700};
  // Idle 2000. Half GPU: fits (1000, 700), too small 300 -> 0.5 * 300 = 150. Two GPUs: only
  // one whole device -> 0.25 * 2000 = 500. CPU only: 0.25 * 2000 = 500.
  CHECK_EQ(node_fragmentation(w, 4000, 0, free), 1150.0);
  // Not enough CPU for the GPU types: all idle capacity counts for them.
  CHECK_EQ(node_fragmentation(w, 500, 0, free), 2000.0);
  // Order of the devices does not matter.
  const std::vector<int32_t> shuffled{0, 700, 1000, 300};
  CHECK_EQ(node_fragmentation(w, 4000, 0, shuffled), 1150.0);
  // Nothing idle: nothing fragmented.
  CHECK_EQ(node_fragmentation(w, 4000, 0, std::vector<int32_t>{0, 0}), 0.0);
  CHECK_EQ(node_fragmentation(w, 4000, -1, std::vector<int32_t>{}), 0.0);
  // Fully free node: only the CPU-only type leaves it fragmented.
  CHECK_EQ(node_fragmentation(w, 4000, 0, std::vector<int32_t>{1000, 1000, 1000, 1000}), 1000.0);

  // Model restriction: the type that excludes the node's model sees all idle capacity.
  const TargetWorkload m({{0, 1, 500, 1ULL << 1, 0.5}, {0, 1, 500, 1ULL << 0, 0.5}});
  CHECK_EQ(node_fragmentation(m, 0, 0, std::vector<int32_t>{1000, 200}), 0.5 * 1200 + 0.5 * 200);
  CHECK_EQ(node_fragmentation(m, 0, 1, std::vector<int32_t>{1000, 200}), 0.5 * 200 + 0.5 * 1200);
  CHECK_EQ(node_fragmentation(m, 0, -1, std::vector<int32_t>{1000, 200}), 1200.0);
}

void test_frag_index() {
  // Mixed shapes, including a node with more devices than the compact memo key handles.
  ClusterState s = make_state({{32000, 65536, 4, 0, 0, 0}, {16000, 32768, 0, -1, 0, 0},
                               {64000, 131072, 8, 1, 0, 0}, {96000, 262144, 10, 0, 0, 0}});
  const TargetWorkload w = small_workload();
  FragIndex idx(s, w);
  CHECK_EQ(idx.node_array().size(), 4U);
  CHECK_EQ(idx.node(0), 1000.0);  // only the CPU-only type
  CHECK_EQ(idx.node(1), 0.0);
  CHECK_EQ(idx.node(2), 2000.0);
  CHECK_EQ(idx.node(3), 2500.0);
  CHECK_EQ(idx.total(), 5500.0);

  // Memoised evaluate equals the pure function for many states, repeated states included.
  Rng rng(123);
  bool all_equal = true;
  bool repeat_equal = true;
  for (int iter = 0; iter < 3000; ++iter) {
    const auto ngpu = static_cast<size_t>(rng.below(12));
    std::vector<int32_t> free(ngpu);
    for (int32_t& f : free) {
      // Coarse values so that states repeat and hit the memo.
      f = static_cast<int32_t>(rng.below(5)) * 250;
      if (rng.below(10) == 0) f = static_cast<int32_t>(rng.below(1001));
    }
    const int64_t cpu = static_cast<int64_t>(rng.below(3000));
    const int32_t model = static_cast<int32_t>(rng.below(3)) - 1;
    const double pure = node_fragmentation(w, cpu, model, free);
    const double memo = idx.evaluate(cpu, model, free);
    all_equal = all_equal && pure == memo;
    std::reverse(free.begin(), free.end());
    repeat_equal = repeat_equal && idx.evaluate(cpu, model, free) == pure;
  }
  CHECK(all_equal);
  CHECK(repeat_equal);

  // Update after each change keeps node values and the total consistent.
  struct Op {
    int32_t node;
    Request r;
    std::vector<int32_t> gpus;
  };
  const std::vector<Op> ops = {
      {0, req(1000, 0, 1, 500), {2}},   {0, req(1000, 0, 1, 700), {1}},
      {2, req(8000, 0, 2, 1000), {0, 5}}, {3, req(95500, 0, 1, 300), {9}},
      {1, req(16000, 0, 0, 0), {}},     {3, req(0, 0, 4, 1000), {0, 1, 2, 3}},
  };
  bool consistent = true;
  for (const Op& op : ops) {
    CHECK(s.allocate(op.node, op.r, op.gpus).ok());
    idx.update(s, op.node);
    for (int32_t n = 0; n < s.num_nodes(); ++n) {
      consistent = consistent &&
                   idx.node(n) == node_fragmentation(w, s.cpu_free(n), s.gpu_model(n), s.gpu_free_of(n));
    }
    consistent = consistent && std::fabs(idx.total() - sum_of(idx.node_array())) < 1e-9;
  }
  CHECK(consistent);
  // Node 0: free {1000, 300, 500, 1000}, cpu 30000. Half: too small 300 -> 150; two whole:
  // too small 800 -> 200; CPU only: 0.25 * 2800 = 700.
  CHECK_EQ(idx.node(0), 1050.0);
  // Node 3: cpu 500 left -> GPU types do not fit the CPU: whole idle 5700 for every type.
  CHECK_EQ(idx.node(3), 5700.0);
  const double running = idx.total();
  idx.rebuild(s);
  CHECK_NEAR(idx.total(), running, 1e-12);
  CHECK_NEAR(idx.total(), sum_of(idx.node_array()), 1e-12);

  // Release and update: back to the fresh values.
  for (auto it = ops.rbegin(); it != ops.rend(); ++it) {
    CHECK(s.release(it->node, it->r, it->gpus).ok());
    idx.update(s, it->node);
  }
  CHECK_NEAR(idx.total(), 5500.0, 1e-12);

  // Without a workload nothing is tracked.
  FragIndex none(s, TargetWorkload{});
  CHECK_EQ(none.total(), 0.0);
  none.update(s, 0);
  CHECK_EQ(none.node(0), 0.0);
}

void test_score_fgd_and_pick_gpus() {
  ClusterState s = three_nodes();
  const TargetWorkload w = small_workload();
  FragIndex idx(s, w);
  // Fresh node 0: before = 1000 (CPU-only type), taking half a device gives 1000 again.
  FgdChoice c = score_fgd(s, idx, 0, req(1000, 0, 1, 500));
  CHECK_EQ(c.score, 50);  // sigmoid(0)
  CHECK_EQ(c.gpu, 0);     // all devices equal: the lowest index

  const int32_t g1[] = {1};
  const int32_t g3[] = {3};
  CHECK(s.allocate(0, req(0, 0, 1, 400), g1).ok());
  CHECK(s.allocate(0, req(0, 0, 1, 700), g3).ok());
  idx.update(s, 0);
  // free {1000, 600, 1000, 300}: half 150 + two whole 225 + CPU only 725.
  CHECK_EQ(idx.node(0), 1100.0);
  // Half on device 0 -> 1350 (score 43), on device 1 -> 900 (score 54): device 1 wins.
  c = score_fgd(s, idx, 0, req(1000, 0, 1, 500));
  CHECK_EQ(c.score, 54);
  CHECK_EQ(c.gpu, 1);
  // Two whole devices -> free {0, 600, 0, 300}: 150 + 225 + 225 = 600, gradient 500.
  c = score_fgd(s, idx, 0, req(1000, 0, 2, 1000));
  CHECK_EQ(c.score, 62);
  CHECK_EQ(c.gpu, -1);
  // A share nothing fits: no device reported.
  const int32_t g0[] = {0};
  const int32_t g2[] = {2};
  ClusterState full = three_nodes();
  FragIndex full_idx(full, w);
  for (const int32_t* g : {g0, g1, g2, g3}) {
    CHECK(full.allocate(0, req(0, 0, 1, 900), std::span<const int32_t>(g, 1)).ok());
  }
  full_idx.update(full, 0);
  c = score_fgd(full, full_idx, 0, req(0, 0, 1, 500));
  CHECK_EQ(c.gpu, -1);
  CHECK_EQ(c.score, kMinScore);

  // pick_gpus on free {1000, 600, 1000, 300}.
  Rng rng(9);
  std::vector<int32_t> out(4, -7);
  const Request half = req(1000, 0, 1, 500);
  CHECK_EQ(pick_gpus(s, &idx, 0, half, GpuPick::kBest, rng, out), 1);
  CHECK_EQ(out[0], 1);  // smallest share that fits
  CHECK_EQ(pick_gpus(s, &idx, 0, half, GpuPick::kWorst, rng, out), 1);
  CHECK_EQ(out[0], 0);  // largest, lowest index on ties
  CHECK_EQ(pick_gpus(s, &idx, 0, half, GpuPick::kFgd, rng, out), 1);
  CHECK_EQ(out[0], 1);
  CHECK_EQ(pick_gpus(s, &idx, 0, req(0, 0, 1, 300), GpuPick::kBest, rng, out), 1);
  CHECK_EQ(out[0], 3);
  CHECK_EQ(pick_gpus(s, &idx, 0, req(0, 0, 1, 700), GpuPick::kBest, rng, out), 1);
  CHECK_EQ(out[0], 0);
  std::set<int32_t> seen;
  bool in_range = true;
  for (int i = 0; i < 200; ++i) {
    CHECK_EQ(pick_gpus(s, &idx, 0, half, GpuPick::kRandom, rng, out), 1);
    in_range = in_range && (out[0] == 0 || out[0] == 1 || out[0] == 2);
    seen.insert(out[0]);
  }
  CHECK(in_range);
  CHECK_EQ(seen.size(), 3U);
  // Same seed, same draws.
  Rng r1(77);
  Rng r2(77);
  bool same = true;
  for (int i = 0; i < 50; ++i) {
    std::vector<int32_t> o1(1), o2(1);
    CHECK_EQ(pick_gpus(s, &idx, 0, half, GpuPick::kRandom, r1, o1), 1);
    CHECK_EQ(pick_gpus(s, &idx, 0, half, GpuPick::kRandom, r2, o2), 1);
    same = same && o1 == o2;
  }
  CHECK(same);
  // Whole devices: the lowest-indexed free ones, whatever the pick rule.
  for (GpuPick p : {GpuPick::kBest, GpuPick::kWorst, GpuPick::kRandom, GpuPick::kFgd}) {
    std::fill(out.begin(), out.end(), -7);
    CHECK_EQ(pick_gpus(s, &idx, 0, req(0, 0, 2, 1000), p, rng, out), 2);
    CHECK_EQ(out[0], 0);
    CHECK_EQ(out[1], 2);
  }
  // No GPU wanted, cannot hold, output too small, FGD without an index.
  CHECK_EQ(pick_gpus(s, &idx, 0, req(1000, 0, 0, 0), GpuPick::kBest, rng, out), 0);
  CHECK_EQ(pick_gpus(s, &idx, 0, req(0, 0, 3, 1000), GpuPick::kBest, rng, out), -1);
  CHECK_EQ(pick_gpus(s, &idx, 1, half, GpuPick::kBest, rng, out), -1);
  CHECK_EQ(pick_gpus(s, &idx, 0, req(0, 0, 2, 1000), GpuPick::kBest, rng,
                     std::span<int32_t>(out.data(), 1)),
           -1);
  CHECK_EQ(pick_gpus(s, nullptr, 0, half, GpuPick::kFgd, rng, out), -1);
  FragIndex no_workload(s, TargetWorkload{});
  CHECK_EQ(pick_gpus(s, &no_workload, 0, half, GpuPick::kFgd, rng, out), -1);
}

// --- Engine -----------------------------------------------------------------------------------

Profile profile_of(std::initializer_list<WeightedScorer> scorers, GpuPick pick, TieBreak tie) {
  Profile p;
  p.scorers = scorers;
  p.gpu_pick = pick;
  p.tie_break = tie;
  return p;
}

// A heterogeneous cluster: 4-GPU, 8-GPU, CPU-only and 2-GPU nodes of two models.
ClusterState mixed_cluster(int32_t copies) {
  std::vector<NodeSpec> specs;
  for (int32_t i = 0; i < copies; ++i) {
    specs.push_back({32000, 131072, 4, 0, i, 0});
    specs.push_back({64000, 262144, 8, 1, i, 0});
    specs.push_back({16000, 65536, 0, -1, i, 0});
    specs.push_back({24000, 98304, 2, 0, i, 1});
  }
  return ClusterState(specs);
}

std::vector<Request> random_requests(uint64_t seed, int count) {
  Rng rng(seed);
  std::vector<Request> out;
  for (int i = 0; i < count; ++i) {
    const auto cpu = static_cast<int64_t>(rng.below(8) + 1) * 1000;
    const auto mem = static_cast<int64_t>(rng.below(16) + 1) * 1024;
    switch (rng.below(4)) {
      case 0: out.push_back(req(cpu, mem, 0, 0)); break;
      case 1: out.push_back(req(cpu, mem, 1, static_cast<int32_t>(rng.below(9) + 1) * 100)); break;
      case 2: out.push_back(req(cpu, mem, 1, 1000)); break;
      default:
        out.push_back(req(cpu, mem, static_cast<int32_t>(rng.below(4)) + 2, 1000,
                          rng.below(4) == 0 ? (1ULL << 1) : 0));
    }
  }
  return out;
}

TargetWorkload engine_workload() {
  return TargetWorkload({
      {2000, 1, 250, 0, 0.25},
      {4000, 1, 500, 0, 0.25},
      {8000, 1, 1000, 0, 0.25},
      {16000, 2, 1000, 1ULL << 1, 0.125},
      {1000, 0, 0, 0, 0.125},
  });
}

struct Decision {
  Code code;
  int32_t node;
  std::vector<int32_t> gpus;
  bool operator==(const Decision&) const = default;
};

std::vector<Decision> run_engine(const Profile& p, uint64_t seed, const std::vector<Request>& reqs,
                                 bool with_workload, ClusterState* final_state = nullptr) {
  ClusterState s = mixed_cluster(3);
  Engine e(s, p, with_workload ? engine_workload() : TargetWorkload{}, seed);
  std::vector<Decision> out;
  std::vector<int32_t> gpus;
  for (const Request& r : reqs) {
    int32_t node = -1;
    const Status st = e.place(r, node, gpus);
    out.push_back({st.code, node, gpus});
  }
  if (final_state != nullptr) *final_state = s;
  return out;
}

void test_engine_determinism() {
  const std::vector<Request> reqs = random_requests(5, 150);
  for (TieBreak tie : {TieBreak::kRank, TieBreak::kRandom}) {
    for (GpuPick pick : {GpuPick::kBest, GpuPick::kRandom, GpuPick::kFgd}) {
      const Profile p = profile_of({{ScorerKind::kRandom, 1}, {ScorerKind::kBestFit, 2},
                                    {ScorerKind::kGpuPacking, 1}, {ScorerKind::kFgd, 1}},
                                   pick, tie);
      ClusterState s1, s2;
      const auto a = run_engine(p, 42, reqs, true, &s1);
      const auto b = run_engine(p, 42, reqs, true, &s2);
      CHECK(a == b);
      CHECK(snapshot(s1) == snapshot(s2));
      CHECK(s1.check_invariants());
      const auto c = run_engine(p, 43, reqs, true);
      CHECK(a != c);  // the random scorer makes a different seed visible
      int placed = 0;
      for (const Decision& d : a) placed += d.code == Code::kOk ? 1 : 0;
      CHECK(placed > 20);
    }
  }
  // No random scorer, rank ties: same seed, same decisions; the seed picks the node order.
  const Profile plain = profile_of({{ScorerKind::kDotProd, 1}}, GpuPick::kBest, TieBreak::kRank);
  CHECK(run_engine(plain, 1, reqs, false) == run_engine(plain, 1, reqs, false));
}

void test_engine_rank_tie_break() {
  std::vector<NodeSpec> specs(6, NodeSpec{8000, 8000, 2, 0, 0, 0});
  ClusterState s(specs);
  // No scorers: every feasible node ties at 0.
  Engine e(s, profile_of({}, GpuPick::kBest, TieBreak::kRank), TargetWorkload{}, 7);
  const std::vector<uint32_t>& rank = e.tie_rank();
  CHECK_EQ(rank.size(), 6U);
  std::vector<uint32_t> sorted(rank.begin(), rank.end());
  std::sort(sorted.begin(), sorted.end());
  bool permutation = true;
  for (size_t i = 0; i < sorted.size(); ++i) permutation = permutation && sorted[i] == i;
  CHECK(permutation);
  std::vector<int32_t> by_rank(6);
  for (size_t n = 0; n < rank.size(); ++n) by_rank[rank[n]] = static_cast<int32_t>(n);

  // Two tasks fill a node's CPU; ties always go to the lowest-ranked feasible node.
  std::vector<int32_t> gpus;
  for (int i = 0; i < 12; ++i) {
    int32_t node = -1;
    const Status st = e.place(req(4000, 100, 0, 0), node, gpus);
    CHECK(st.ok());
    CHECK_EQ(node, by_rank[static_cast<size_t>(i / 2)]);
    CHECK(gpus.empty());
  }
  int32_t node = 7;
  const Status full = e.place(req(4000, 100, 0, 0), node, gpus);
  CHECK_EQ(full.code, Code::kInsufficientCpu);
  CHECK_EQ(full.plugin, std::string_view("NodeResourcesFit"));
  CHECK_EQ(node, -1);
  CHECK_EQ(e.last_rejections().by_code[static_cast<size_t>(Code::kInsufficientCpu)], 6);

  // Another seed gives a (generally) different order, the same seed the same one.
  ClusterState s2(specs);
  Engine same(s2, profile_of({}, GpuPick::kBest, TieBreak::kRank), TargetWorkload{}, 7);
  CHECK(same.tie_rank() == e.tie_rank());
  bool differs = false;
  for (uint64_t seed = 8; seed < 16; ++seed) {
    Engine other(s2, profile_of({}, GpuPick::kBest, TieBreak::kRank), TargetWorkload{}, seed);
    differs = differs || other.tie_rank() != e.tie_rank();
  }
  CHECK(differs);

  // With a scorer, the score decides and ties among the best go by rank: best-fit keeps
  // filling the node it started on.
  ClusterState s3(specs);
  Engine bf(s3, profile_of({{ScorerKind::kBestFit, 1}}, GpuPick::kBest, TieBreak::kRank),
            TargetWorkload{}, 7);
  int32_t first = -1;
  CHECK(bf.place(req(1000, 100, 1, 500), first, gpus).ok());
  CHECK_EQ(first, by_rank[0]);
  CHECK(gpus == (std::vector<int32_t>{0}));
  int32_t second = -1;
  CHECK(bf.place(req(1000, 100, 1, 500), second, gpus).ok());
  CHECK_EQ(second, first);
  CHECK(gpus == (std::vector<int32_t>{0}));  // best device: the used one (500 free)
  // Worst-fit spreads to the emptiest node: all others tie, the lowest rank among them wins.
  ClusterState s4(specs);
  Engine wf(s4, profile_of({{ScorerKind::kWorstFit, 1}}, GpuPick::kBest, TieBreak::kRank),
            TargetWorkload{}, 7);
  CHECK(wf.place(req(1000, 100, 0, 0), first, gpus).ok());
  CHECK_EQ(first, by_rank[0]);
  CHECK(wf.place(req(1000, 100, 0, 0), second, gpus).ok());
  CHECK_EQ(second, by_rank[1]);
}

void test_engine_random_tie_break() {
  std::vector<NodeSpec> specs(6, NodeSpec{64000, 64000, 0, -1, 0, 0});
  ClusterState s(specs);
  Engine e(s, profile_of({}, GpuPick::kBest, TieBreak::kRandom), TargetWorkload{}, 3);
  std::set<int32_t> used;
  std::vector<int32_t> gpus;
  std::vector<int32_t> seq;
  for (int i = 0; i < 60; ++i) {
    int32_t node = -1;
    CHECK(e.place(req(100, 100, 0, 0), node, gpus).ok());
    used.insert(node);
    seq.push_back(node);
  }
  CHECK(used.size() >= 5U);  // spreads
  // Same seed: same sequence.
  ClusterState s2(specs);
  Engine e2(s2, profile_of({}, GpuPick::kBest, TieBreak::kRandom), TargetWorkload{}, 3);
  std::vector<int32_t> seq2;
  for (int i = 0; i < 60; ++i) {
    int32_t node = -1;
    CHECK(e2.place(req(100, 100, 0, 0), node, gpus).ok());
    seq2.push_back(node);
  }
  CHECK(seq == seq2);
  // A strictly best node is taken regardless of the tie rule.
  ClusterState s3(specs);
  // (a small difference would vanish in the scorer's integer truncation and tie)
  CHECK(s3.allocate(4, req(32000, 0, 0, 0), {}).ok());
  Engine e3(s3, profile_of({{ScorerKind::kBestFit, 1}}, GpuPick::kBest, TieBreak::kRandom),
            TargetWorkload{}, 3);
  for (int i = 0; i < 5; ++i) {
    int32_t node = -1;
    CHECK(e3.place(req(100, 100, 0, 0), node, gpus).ok());
    CHECK_EQ(node, 4);
  }
}

void test_engine_invalid_and_infeasible() {
  ClusterState s = three_nodes();
  Engine e(s, profile_of({{ScorerKind::kBestFit, 1}}, GpuPick::kBest, TieBreak::kRank),
           TargetWorkload{}, 1);
  const Snapshot before = snapshot(s);
  std::vector<int32_t> gpus{9, 9};
  for (const Request& bad : {req(-1, 0, 0, 0), req(0, -1, 0, 0), req(0, 0, -1, 0),
                             req(0, 0, 1, -1), req(0, 0, 1, 1001), req(0, 0, 2, 500),
                             req(0, 0, 0, 500), req(0, 0, 1, 0), req(0, 0, 3, 0)}) {
    int32_t node = 5;
    const Status st = e.place(bad, node, gpus);
    CHECK_EQ(st.code, Code::kInvalidArgument);
    CHECK_EQ(st.plugin, std::string_view("Engine"));
    CHECK_EQ(node, -1);
    CHECK(gpus.empty());
  }
  CHECK(snapshot(s) == before);

  int32_t node = 5;
  Status st = e.place(req(1000, 1000, 9, 1000), node, gpus);  // no node has 9 devices
  CHECK_EQ(st.code, Code::kInsufficientGpu);
  CHECK_EQ(st.plugin, std::string_view("GpuShare"));
  CHECK_EQ(node, -1);
  st = e.place(req(1000, 1000, 1, 500, 1ULL << 7), node, gpus);
  // Two GPU nodes of other models, one node without devices.
  CHECK_EQ(st.code, Code::kGpuModelMismatch);
  CHECK_EQ(st.plugin, std::string_view("GpuModel"));
  CHECK_EQ(e.last_rejections().by_code[static_cast<size_t>(Code::kGpuModelMismatch)], 2);
  CHECK_EQ(e.last_rejections().by_code[static_cast<size_t>(Code::kInsufficientGpu)], 1);
  st = e.place(req(0, 1 << 30, 0, 0), node, gpus);
  CHECK_EQ(st.code, Code::kInsufficientMemory);
  CHECK(snapshot(s) == before);

  // Zero nodes: nothing is feasible and nothing was rejected.
  ClusterState empty;
  Engine e0(empty, profile_of({{ScorerKind::kBestFit, 1}}, GpuPick::kBest, TieBreak::kRank),
            TargetWorkload{}, 1);
  st = e0.place(req(1, 1, 0, 0), node, gpus);
  CHECK_EQ(st.code, Code::kNoFeasibleNode);
  CHECK_EQ(st.plugin, std::string_view("Filter"));
  CHECK(e0.tie_rank().empty());

  // FGD needs a target workload.
  bool threw = false;
  try {
    Engine bad(s, profile_of({{ScorerKind::kFgd, 1}}, GpuPick::kBest, TieBreak::kRank),
               TargetWorkload{}, 1);
  } catch (const std::invalid_argument&) {
    threw = true;
  }
  CHECK(threw);
  threw = false;
  try {
    Engine bad(s, profile_of({{ScorerKind::kBestFit, 1}}, GpuPick::kFgd, TieBreak::kRank),
               TargetWorkload{}, 1);
  } catch (const std::invalid_argument&) {
    threw = true;
  }
  CHECK(threw);
  // Weights must be positive (scores are "higher is better"; a single scorer is ranked on its
  // raw scores).
  for (int64_t w : {int64_t{0}, int64_t{-1}}) {
    threw = false;
    try {
      Engine bad(s, profile_of({{ScorerKind::kBestFit, w}}, GpuPick::kBest, TieBreak::kRank),
                 TargetWorkload{}, 1);
    } catch (const std::invalid_argument&) {
      threw = true;
    }
    CHECK(threw);
    threw = false;
    try {
      Engine bad(s,
                 profile_of({{ScorerKind::kDotProd, 1}, {ScorerKind::kBestFit, w}}, GpuPick::kBest,
                            TieBreak::kRank),
                 TargetWorkload{}, 1);
    } catch (const std::invalid_argument&) {
      threw = true;
    }
    CHECK(threw);
  }
}

void test_rejection_counts() {
  RejectionCounts rc;
  Status d = rc.dominant();
  CHECK_EQ(d.code, Code::kNoFeasibleNode);
  CHECK_EQ(d.plugin, std::string_view("Filter"));
  struct Case {
    Code code;
    std::string_view plugin;
  };
  for (const Case& c : {Case{Code::kNodeUnavailable, "NodeState"},
                        Case{Code::kGpuModelMismatch, "GpuModel"},
                        Case{Code::kInsufficientCpu, "NodeResourcesFit"},
                        Case{Code::kInsufficientMemory, "NodeResourcesFit"},
                        Case{Code::kInsufficientGpu, "GpuShare"}}) {
    RejectionCounts one;
    one.by_code[static_cast<size_t>(c.code)] = 3;
    one.by_code[static_cast<size_t>(Code::kNodeUnavailable)] += 1;
    d = one.dominant();
    CHECK_EQ(d.code, c.code);
    CHECK_EQ(d.plugin, c.plugin);
  }
  // The largest count wins; ties go to the lowest code.
  RejectionCounts many;
  many.by_code[static_cast<size_t>(Code::kInsufficientCpu)] = 4;
  many.by_code[static_cast<size_t>(Code::kInsufficientGpu)] = 5;
  CHECK_EQ(many.dominant().code, Code::kInsufficientGpu);
  many.by_code[static_cast<size_t>(Code::kInsufficientCpu)] = 5;
  CHECK_EQ(many.dominant().code, Code::kInsufficientCpu);
  // Codes that are not filter outcomes map to no_feasible_node.
  RejectionCounts odd;
  odd.by_code[static_cast<size_t>(Code::kInvalidArgument)] = 2;
  CHECK_EQ(odd.dominant().code, Code::kNoFeasibleNode);
}

void test_engine_release() {
  ClusterState s = mixed_cluster(1);
  const Snapshot fresh = snapshot(s, false);
  Engine e(s,
           profile_of({{ScorerKind::kFgd, 1}, {ScorerKind::kGpuClustering, 1}}, GpuPick::kFgd,
                      TieBreak::kRank),
           engine_workload(), 11);
  const double frag0 = e.frag().total();
  struct Placed {
    Request r;
    int32_t node;
    std::vector<int32_t> gpus;
  };
  std::vector<Placed> placed;
  std::vector<int32_t> gpus;
  for (const Request& r : {req(2000, 1024, 1, 250), req(4000, 1024, 1, 500),
                           req(8000, 1024, 2, 1000), req(1000, 1024, 0, 0),
                           req(2000, 1024, 1, 250)}) {
    int32_t node = -1;
    CHECK(e.place(r, node, gpus).ok());
    CHECK_EQ(static_cast<int32_t>(gpus.size()), r.wants_gpu() ? r.num_gpu : 0);
    placed.push_back({r, node, gpus});
  }
  CHECK(e.frag().total() != frag0);
  CHECK_EQ(s.allocated_gpu_milli(), 250 + 500 + 2000 + 250);
  // Release in reverse order: back to the fresh state and fragmentation.
  for (auto it = placed.rbegin(); it != placed.rend(); ++it) {
    CHECK(e.release(it->node, it->r, it->gpus).ok());
    CHECK_NEAR(e.frag().total(), sum_of(e.frag().node_array()), 1e-9);
  }
  CHECK(snapshot(s, false) == fresh);
  CHECK_NEAR(e.frag().total(), frag0, 1e-9);
  // Releasing again fails and changes nothing.
  const Snapshot now = snapshot(s);
  const double frag_now = e.frag().total();
  const Status st = e.release(placed[0].node, placed[0].r, placed[0].gpus);
  CHECK_EQ(st.code, Code::kInvalidArgument);
  CHECK(snapshot(s) == now);
  CHECK_EQ(e.frag().total(), frag_now);
  // The engine places the same way again after the release (caches are version-checked).
  for (const Placed& p : placed) {
    int32_t node = -1;
    CHECK(e.place(p.r, node, gpus).ok());
    CHECK_EQ(node, p.node);
    CHECK(gpus == p.gpus);
  }
}

void test_engine_fgd_consistency() {
  ClusterState s = mixed_cluster(4);
  Engine e(s,
           profile_of({{ScorerKind::kFgd, 3}, {ScorerKind::kBestFit, 1}}, GpuPick::kFgd,
                      TieBreak::kRank),
           engine_workload(), 2024);
  const std::vector<Request> reqs = random_requests(99, 400);
  std::vector<int32_t> gpus;
  bool invariants = true;
  bool frag_ok = true;
  bool cache_ok = true;
  std::vector<int64_t> scores(static_cast<size_t>(s.num_nodes()));
  std::vector<uint8_t> codes(static_cast<size_t>(s.num_nodes()));
  int i = 0;
  bool filter_agrees = true;
  for (const Request& r : reqs) {
    // The engine's own feasibility pass agrees with filter_node: it places exactly when some
    // node passes, on a node that passes, and reports the dominant filter code otherwise.
    e.filter_all(r, codes);
    RejectionCounts expect_rc;
    bool any_ok = false;
    for (uint8_t c : codes) {
      any_ok = any_ok || c == 0;
      ++expect_rc.by_code[c];
    }
    int32_t node = -1;
    const Status st = e.place(r, node, gpus);
    filter_agrees = filter_agrees && st.ok() == any_ok;
    if (st.ok()) {
      filter_agrees = filter_agrees && codes[static_cast<size_t>(node)] == 0;
      for (int32_t g : gpus) {
        invariants = invariants && g >= 0 && g < s.gpu_count(node);
      }
    } else {
      filter_agrees = filter_agrees && st.code == expect_rc.dominant().code &&
                      e.last_rejections().by_code == expect_rc.by_code;
    }
    invariants = invariants && s.check_invariants();
    if (++i % 25 == 0) {
      // The cached FGD scores agree with a direct evaluation; filter_all agrees with
      // filter_node; infeasible nodes score -1.
      e.score_all(r, ScorerKind::kFgd, scores);
      e.filter_all(r, codes);
      for (int32_t n = 0; n < s.num_nodes(); ++n) {
        const Status f = filter_node(s, n, r);
        cache_ok = cache_ok && codes[static_cast<size_t>(n)] == static_cast<uint8_t>(f.code);
        const int64_t want = f.ok() ? score_fgd(s, e.frag(), n, r).score : -1;
        cache_ok = cache_ok && scores[static_cast<size_t>(n)] == want;
      }
      for (int32_t n = 0; n < s.num_nodes(); ++n) {
        frag_ok = frag_ok && e.frag().node(n) == node_fragmentation(e.frag().workload(),
                                                                    s.cpu_free(n), s.gpu_model(n),
                                                                    s.gpu_free_of(n));
      }
      frag_ok = frag_ok && std::fabs(e.frag().total() - sum_of(e.frag().node_array())) < 1e-6;
    }
  }
  CHECK(invariants);
  CHECK(filter_agrees);
  CHECK(frag_ok);
  CHECK(cache_ok);
  FragIndex fresh(s, engine_workload());
  CHECK_NEAR(e.frag().total(), fresh.total(), 1e-9);

  // node_changed after an outside edit keeps the index current.
  s.set_flags(0, kNodeCordoned);
  if (s.cpu_free(1) >= 1000) {
    CHECK(s.allocate(1, req(1000, 0, 0, 0), {}).ok());
    e.node_changed(1);
  }
  e.node_changed(0);
  FragIndex again(s, engine_workload());
  CHECK_NEAR(e.frag().total(), again.total(), 1e-9);
  std::vector<uint8_t> c2(static_cast<size_t>(s.num_nodes()));
  e.filter_all(req(0, 0, 0, 0), c2);
  CHECK_EQ(c2[0], static_cast<uint8_t>(Code::kNodeUnavailable));
}

void test_place_batch() {
  const std::vector<Request> base = random_requests(17, 120);
  std::vector<Request> reqs = base;
  reqs.insert(reqs.begin() + 3, req(0, 0, 2, 500));           // invalid
  reqs.insert(reqs.begin() + 7, req(1000000, 0, 0, 0));       // nowhere fits
  const Profile p = profile_of({{ScorerKind::kFgd, 1}, {ScorerKind::kRandom, 1}}, GpuPick::kRandom,
                               TieBreak::kRandom);

  ClusterState s1 = mixed_cluster(2);
  Engine batch_engine(s1, p, engine_workload(), 5);
  const BatchResult b = batch_engine.place_batch(reqs, true);

  ClusterState s2 = mixed_cluster(2);
  Engine single(s2, p, engine_workload(), 5);

  const size_t n = reqs.size();
  CHECK_EQ(b.node.size(), n);
  CHECK_EQ(b.code.size(), n);
  CHECK_EQ(b.gpu_offsets.size(), n + 1);
  CHECK_EQ(b.allocated_gpu_milli.size(), n);
  CHECK_EQ(b.frag_milli.size(), n);
  CHECK_EQ(b.gpu_offsets[0], 0);
  CHECK_EQ(b.gpu_offsets[n], static_cast<int64_t>(b.gpus.size()));
  CHECK_EQ(b.code[3], static_cast<uint8_t>(Code::kInvalidArgument));
  CHECK_EQ(b.node[3], -1);
  CHECK_EQ(b.code[7], static_cast<uint8_t>(Code::kInsufficientCpu));
  CHECK_EQ(b.node[7], -1);

  bool same_as_single = true;
  bool tracked = true;
  bool csr_ok = true;
  int64_t allocated = 0;
  std::vector<int32_t> gpus;
  for (size_t i = 0; i < n; ++i) {
    int32_t node = -1;
    const Status st = single.place(reqs[i], node, gpus);
    same_as_single = same_as_single && static_cast<uint8_t>(st.code) == b.code[i] && node == b.node[i];
    const auto lo = static_cast<size_t>(b.gpu_offsets[i]);
    const auto hi = static_cast<size_t>(b.gpu_offsets[i + 1]);
    csr_ok = csr_ok && lo <= hi;
    const std::vector<int32_t> bg(b.gpus.begin() + static_cast<std::ptrdiff_t>(lo),
                                  b.gpus.begin() + static_cast<std::ptrdiff_t>(hi));
    same_as_single = same_as_single && bg == gpus;
    if (st.ok()) allocated += reqs[i].wants_gpu() ? reqs[i].total_gpu_milli() : 0;
    csr_ok = csr_ok && (st.ok() || bg.empty());
    tracked = tracked && b.allocated_gpu_milli[i] == allocated;
    tracked = tracked && std::fabs(b.frag_milli[i] - single.frag().total()) < 1e-6;
  }
  CHECK(same_as_single);
  CHECK(tracked);
  CHECK(csr_ok);
  CHECK_EQ(s1.allocated_gpu_milli(), allocated);
  CHECK(snapshot(s1) == snapshot(s2));
  CHECK_EQ(b.frag_milli.back(), batch_engine.frag().total());
  FragIndex fresh(s1, engine_workload());
  CHECK_NEAR(b.frag_milli.back(), fresh.total(), 1e-9);
  CHECK(s1.check_invariants());

  // Untracked: no tracking columns.
  ClusterState s3 = mixed_cluster(1);
  Engine e3(s3, p, engine_workload(), 5);
  const BatchResult u = e3.place_batch(std::span<const Request>(reqs.data(), 10), false);
  CHECK_EQ(u.node.size(), 10U);
  CHECK(u.allocated_gpu_milli.empty());
  CHECK(u.frag_milli.empty());
  // Empty batch.
  const BatchResult none = e3.place_batch({}, true);
  CHECK(none.node.empty());
  CHECK_EQ(none.gpu_offsets.size(), 1U);
}

// The one-scorer fast path (raw scores, normalised only when the range exceeds 100) decides
// exactly like the general weighted-sum path.
void test_single_scorer_fast_path() {
  const std::vector<Request> reqs = random_requests(31, 200);
  for (ScorerKind kind : {ScorerKind::kDotProd, ScorerKind::kGpuClustering,
                          ScorerKind::kGpuPacking, ScorerKind::kBestFit, ScorerKind::kWorstFit,
                          ScorerKind::kFgd}) {
    for (TieBreak tie : {TieBreak::kRank, TieBreak::kRandom}) {
      const Profile fast = profile_of({{kind, 3}}, GpuPick::kRandom, tie);
      // The same scorer twice (weights 1 + 2) forces the general weighted-sum path.
      const Profile general = profile_of({{kind, 1}, {kind, 2}}, GpuPick::kRandom, tie);
      const auto a = run_engine(fast, 8, reqs, true);
      const auto b = run_engine(general, 8, reqs, true);
      record(a == b, __FILE__, __LINE__,
             std::string("fast path == general path for ") + std::string(scorer_name(kind)));
    }
  }
}


// The placement rule written out plainly: filter_node on every node, every scorer on every
// feasible node, min-max normalisation where the scorer asks for it, weighted sum, best total
// with ties to the lowest tie rank. Engine::place must agree although it uses its own filter
// pass, a one-scorer shortcut and a per-(scorer, shape, node) score cache.
struct RefDecision {
  Code code = Code::kOk;
  int32_t node = -1;
};

RefDecision reference_place(Engine& e, const Request& r) {
  const ClusterState& s = e.state();
  std::vector<int32_t> feasible;
  RejectionCounts rc;
  for (int32_t n = 0; n < s.num_nodes(); ++n) {
    const Status st = filter_node(s, n, r);
    if (st.ok()) {
      feasible.push_back(n);
    } else {
      ++rc.by_code[static_cast<size_t>(st.code)];
    }
  }
  if (feasible.empty()) return {rc.dominant().code, -1};
  std::vector<int64_t> total(feasible.size(), 0);
  for (const WeightedScorer& ws : e.profile().scorers) {
    std::vector<int64_t> part(feasible.size(), 0);
    for (size_t i = 0; i < feasible.size(); ++i) {
      const int32_t n = feasible[i];
      switch (ws.kind) {
        case ScorerKind::kDotProd: part[i] = score_dotprod(s, n, r); break;
        case ScorerKind::kGpuClustering: part[i] = score_gpu_clustering(s, n, r); break;
        case ScorerKind::kGpuPacking: part[i] = score_gpu_packing(s, n, r); break;
        case ScorerKind::kBestFit: part[i] = score_bestfit(s, n, r); break;
        case ScorerKind::kWorstFit: part[i] = score_worstfit(s, n, r); break;
        case ScorerKind::kFgd: part[i] = score_fgd(s, e.frag(), n, r).score; break;
        case ScorerKind::kPython: part[i] = score_external(ws.external, s, n, r); break;
        case ScorerKind::kRandom: break;  // not used with the reference
      }
    }
    if (normalizes(ws)) normalize_scores(part);
    for (size_t i = 0; i < feasible.size(); ++i) total[i] += ws.weight * part[i];
  }
  size_t pick = 0;
  for (size_t i = 1; i < feasible.size(); ++i) {
    if (total[i] > total[pick] ||
        (total[i] == total[pick] &&
         e.tie_rank()[static_cast<size_t>(feasible[i])] <
             e.tie_rank()[static_cast<size_t>(feasible[pick])])) {
      pick = i;
    }
  }
  return {Code::kOk, feasible[pick]};
}

void test_engine_matches_reference() {
  const std::vector<Profile> profiles = {
      profile_of({{ScorerKind::kBestFit, 1}}, GpuPick::kBest, TieBreak::kRank),
      profile_of({{ScorerKind::kWorstFit, 1}}, GpuPick::kWorst, TieBreak::kRank),
      profile_of({{ScorerKind::kDotProd, 1}}, GpuPick::kBest, TieBreak::kRank),
      profile_of({{ScorerKind::kGpuPacking, 1}}, GpuPick::kBest, TieBreak::kRank),
      profile_of({{ScorerKind::kGpuClustering, 1}}, GpuPick::kBest, TieBreak::kRank),
      profile_of({{ScorerKind::kFgd, 1}}, GpuPick::kFgd, TieBreak::kRank),
      profile_of({{ScorerKind::kFgd, 2}, {ScorerKind::kBestFit, 1}}, GpuPick::kBest,
                 TieBreak::kRank),
      profile_of({{ScorerKind::kGpuPacking, 1}, {ScorerKind::kGpuClustering, 2},
                  {ScorerKind::kWorstFit, 1}},
                 GpuPick::kWorst, TieBreak::kRank),
  };
  uint64_t k = 0;
  for (const Profile& p : profiles) {
    ++k;
    ClusterState s = mixed_cluster(3);
    Engine e(s, p, engine_workload(), 100 + k);
    Rng rng(500 + k);
    struct Live {
      Request r;
      int32_t node;
      std::vector<int32_t> gpus;
    };
    std::vector<Live> live;
    bool same = true;
    int placed = 0;
    int released = 0;
    std::vector<int32_t> gpus;
    for (int i = 0; i < 700; ++i) {
      if (!live.empty() && rng.below(3) == 0) {
        const auto at = static_cast<size_t>(rng.below(live.size()));
        same = same && e.release(live[at].node, live[at].r, live[at].gpus).ok();
        live[at] = live.back();
        live.pop_back();
        ++released;
        continue;
      }
      // Hundreds of distinct shapes: more than the engine's score cache has slots.
      const auto cpu = static_cast<int64_t>(rng.below(300) + 1) * 100;
      const auto mem = static_cast<int64_t>(rng.below(8) + 1) * 1024;
      Request r = req(cpu, mem, 0, 0);
      switch (rng.below(4)) {
        case 0: break;
        case 1: r = req(cpu, mem, 1, static_cast<int32_t>(rng.below(9) + 1) * 100); break;
        case 2: r = req(cpu, mem, 1, 1000, rng.below(3) == 0 ? (1ULL << 0) : 0); break;
        default: r = req(cpu, mem, static_cast<int32_t>(rng.below(3)) + 2, 1000,
                         rng.below(3) == 0 ? (1ULL << 1) : 0);
      }
      const RefDecision want = reference_place(e, r);
      std::vector<int32_t> want_gpus(static_cast<size_t>(r.num_gpu));
      Rng unused(0);  // best / worst / fgd picks draw nothing
      int32_t want_got = 0;
      if (want.node >= 0) {
        want_got = pick_gpus(s, &e.frag(), want.node, r, p.gpu_pick, unused, want_gpus);
        want_gpus.resize(static_cast<size_t>(std::max(want_got, 0)));
      }
      int32_t node = -1;
      const Status st = e.place(r, node, gpus);
      same = same && st.code == want.code && node == want.node;
      if (st.ok()) {
        same = same && gpus == want_gpus;
        live.push_back({r, node, gpus});
        ++placed;
      }
    }
    record(same, __FILE__, __LINE__,
           "Engine::place == reference placement, profile #" + std::to_string(k));
    CHECK(placed > 100);
    CHECK(released > 100);
    CHECK(s.check_invariants());
    FragIndex fresh(s, engine_workload());
    CHECK_NEAR(e.frag().total(), fresh.total(), 1e-9);
  }
}

// Score cache slots are reused for new request shapes once every slot is taken: the reused
// slot must not hand the new shape the old shape's scores for nodes that did not change.
void test_engine_score_cache_slot_reuse() {
  // sink: best (least free CPU) for the CPU-only shapes but has no GPU; n1: much CPU, one GPU;
  // n2: less CPU, eight GPUs. A CPU-only shape prefers n2 over n1; a one-GPU shape prefers n1.
  ClusterState s = make_state({{34000, 1 << 20, 0, -1, 0, 0},
                               {128000, 1 << 20, 1, 0, 0, 0},
                               {96000, 1 << 20, 8, 0, 0, 0}});
  Engine e(s, profile_of({{ScorerKind::kDotProd, 1}}, GpuPick::kBest, TieBreak::kRank),
           TargetWorkload{}, 1);
  std::vector<int32_t> gpus;
  bool sink_only = true;
  // 140 distinct CPU-only shapes (more than the cache's slots), each placed on the sink and
  // given back at once: n1 and n2 are scored every time but never change.
  for (int64_t cpu = 20000; cpu < 34000; cpu += 100) {
    const Request a = req(cpu, 0, 0, 0);
    int32_t node = -1;
    CHECK(e.place(a, node, gpus).ok());
    sink_only = sink_only && node == 0;
    if (node >= 0) CHECK(e.release(node, a, gpus).ok());
  }
  CHECK(sink_only);
  CHECK_EQ(s.version(1), 1U);
  CHECK_EQ(s.version(2), 1U);
  // New shapes now take recycled slots.
  for (int64_t cpu = 1000; cpu <= 3000; cpu += 1000) {
    const Request b = req(cpu, 0, 1, 1000);
    CHECK_EQ(reference_place(e, b).node, 1);
    int32_t node = -1;
    CHECK(e.place(b, node, gpus).ok());
    CHECK_EQ(node, 1);
    if (node >= 0) CHECK(e.release(node, b, gpus).ok());
  }
}

// --- External (python) scorers ---------------------------------------------------------------

// Plain C function pointers with the ExternalScoreFn signature, standing in for numba cfuncs.
int64_t g_external_calls = 0;
bool g_external_args_ok = true;

// BestFit over the raw columns, as a researcher would write it in Python; also checks that the
// engine hands over consistent columns and the request.
int64_t external_bestfit(int64_t node, int64_t num_nodes, int64_t num_gpus, const int64_t* cpu_cap,
                         const int64_t* cpu_free, const int64_t* mem_cap, const int64_t* mem_free,
                         const int32_t* gpu_model, const int32_t* gpu_begin, const int32_t* gpu_free,
                         const int32_t* gpu_free_total, const int32_t* gpu_whole_free,
                         const int32_t* gpu_max_free, const int32_t* kind_count,
                         const int32_t* kinds_present, const int64_t* request) {
  ++g_external_calls;
  int32_t sum = 0;
  for (int32_t g = gpu_begin[node]; g < gpu_begin[node + 1]; ++g) sum += gpu_free[g];
  g_external_args_ok = g_external_args_ok && node >= 0 && node < num_nodes &&
                       gpu_begin[num_nodes] == num_gpus && sum == gpu_free_total[node] &&
                       cpu_free[node] <= cpu_cap[node] && mem_free[node] <= mem_cap[node] &&
                       gpu_whole_free[node] <= gpu_begin[node + 1] - gpu_begin[node] &&
                       gpu_max_free[node] <= kMilliGpu &&
                       kinds_present[node] <= kGpuKindSlots && kind_count[node * kGpuKindSlots] >= 0 &&
                       gpu_model[node] >= -1 && request[0] >= 0 && request[1] >= 0;
  double left = static_cast<double>(cpu_free[node] - request[0]) / kMaxSpecCpu * 0.5;
  left += static_cast<double>(gpu_free_total[node] - request[2] * request[3]) / kMaxSpecGpu * 0.5;
  return static_cast<int64_t>((1.0 - left) * static_cast<double>(kMaxScore));
}

// Prefers the last node, with scores outside the external bounds at both ends (clamped).
int64_t external_last(int64_t node, int64_t num_nodes, int64_t, const int64_t*, const int64_t*,
                         const int64_t*, const int64_t*, const int32_t*, const int32_t*,
                         const int32_t*, const int32_t*, const int32_t*, const int32_t*,
                         const int32_t*, const int32_t*, const int64_t*) {
  ++g_external_calls;
  if (node == 0) return std::numeric_limits<int64_t>::min();
  return node == num_nodes - 1 ? std::numeric_limits<int64_t>::max() : node;
}

void test_engine_external_scorer() {
  const std::vector<Request> reqs = random_requests(77, 300);
  g_external_calls = 0;
  for (TieBreak tie : {TieBreak::kRank, TieBreak::kRandom}) {
    const Profile native = profile_of({{ScorerKind::kBestFit, 1}}, GpuPick::kBest, tie);
    const Profile external =
        profile_of({{ScorerKind::kPython, 1, &external_bestfit, true}}, GpuPick::kBest, tie);
    CHECK(run_engine(native, 3, reqs, false) == run_engine(external, 3, reqs, false));
    // Mixed with another scorer (the general path normalises the python scores as asked).
    const Profile native2 =
        profile_of({{ScorerKind::kBestFit, 2}, {ScorerKind::kDotProd, 1}}, GpuPick::kBest, tie);
    const Profile external2 = profile_of(
        {{ScorerKind::kPython, 2, &external_bestfit, true}, {ScorerKind::kDotProd, 1}},
        GpuPick::kBest, tie);
    CHECK(run_engine(native2, 4, reqs, false) == run_engine(external2, 4, reqs, false));
  }
  CHECK(g_external_calls > 0);
  CHECK(g_external_args_ok);

  // The pointer is really what decides: huge scores are clamped, not overflowed.
  g_external_calls = 0;
  ClusterState s = mixed_cluster(2);
  Engine e(s, profile_of({{ScorerKind::kPython, 1, &external_last, false}}, GpuPick::kBest,
                         TieBreak::kRank),
           TargetWorkload{}, 1);
  int32_t node = -1;
  std::vector<int32_t> gpus;
  CHECK(e.place(req(1000, 100, 0, 0), node, gpus).ok());
  CHECK_EQ(node, s.num_nodes() - 1);
  CHECK(g_external_calls >= s.num_nodes());
  std::vector<int64_t> scores(static_cast<size_t>(s.num_nodes()));
  e.score_all(req(1000, 100, 0, 0), ScorerKind::kPython, scores);
  CHECK_EQ(scores[0], -kMaxExternalScore);
  CHECK_EQ(scores[1], 1);
  CHECK_EQ(scores.back(), kMaxExternalScore);

  // score_all by kind uses the profile's python scorer and agrees with bestfit.
  ClusterState s2 = mixed_cluster(2);
  Engine bf(s2, profile_of({{ScorerKind::kPython, 1, &external_bestfit, true}}, GpuPick::kBest,
                           TieBreak::kRank),
            TargetWorkload{}, 1);
  std::vector<int64_t> a(static_cast<size_t>(s2.num_nodes()));
  std::vector<int64_t> b(a.size());
  bf.score_all(req(2000, 100, 1, 500), ScorerKind::kPython, a);
  bf.score_all(req(2000, 100, 1, 500), ScorerKind::kBestFit, b);
  CHECK(a == b);

  // A python scorer needs a function, and only it takes one.
  bool threw = false;
  try {
    Engine bad(s2, profile_of({{ScorerKind::kPython, 1}}, GpuPick::kBest, TieBreak::kRank),
               TargetWorkload{}, 1);
  } catch (const std::invalid_argument&) {
    threw = true;
  }
  CHECK(threw);
  threw = false;
  try {
    Engine bad(s2, profile_of({{ScorerKind::kBestFit, 1, &external_bestfit, false}},
                              GpuPick::kBest, TieBreak::kRank),
               TargetWorkload{}, 1);
  } catch (const std::invalid_argument&) {
    threw = true;
  }
  CHECK(threw);
  threw = false;
  try {
    Engine plain(s2, profile_of({{ScorerKind::kBestFit, 1}}, GpuPick::kBest, TieBreak::kRank),
                 TargetWorkload{}, 1);
    plain.score_all(req(1000, 100, 0, 0), ScorerKind::kPython, a);
  } catch (const std::invalid_argument&) {
    threw = true;
  }
  CHECK(threw);
}

void test_engine_score_and_filter_all() {
  ClusterState s = three_nodes();
  Engine e(s, profile_of({{ScorerKind::kBestFit, 1}}, GpuPick::kBest, TieBreak::kRank),
           TargetWorkload{}, 1);
  const Request r = req(8000, 0, 1, 1000);
  std::vector<uint8_t> codes(3);
  e.filter_all(r, codes);
  CHECK(codes == (std::vector<uint8_t>{0, static_cast<uint8_t>(Code::kInsufficientGpu), 0}));
  std::vector<int64_t> scores(3);
  e.score_all(r, ScorerKind::kBestFit, scores);
  CHECK(scores == (std::vector<int64_t>{71, -1, score_bestfit(s, 2, r)}));
  e.score_all(r, ScorerKind::kDotProd, scores);
  CHECK_EQ(scores[0], 96);
  e.score_all(r, ScorerKind::kRandom, scores);
  CHECK(scores == (std::vector<int64_t>{0, -1, 0}));
}

void test_engine_allocate_on() {
  const Profile p = profile_of({{ScorerKind::kFgd, 1}, {ScorerKind::kGpuClustering, 1}},
                               GpuPick::kFgd, TieBreak::kRank);
  // Engine A places a random stream; engine B, built fresh, gets the same allocations.
  ClusterState sa = mixed_cluster(2);
  Engine a(sa, p, engine_workload(), 5);
  ClusterState sb = mixed_cluster(2);
  Engine b(sb, p, engine_workload(), 5);
  // Warm B's score cache first, so a commit that did not invalidate it would show later.
  {
    int32_t node = -1;
    std::vector<int32_t> g;
    for (const Request& r : random_requests(17, 6)) {
      if (b.place(r, node, g).ok()) CHECK(b.release(node, r, g).ok());
    }
  }
  struct Placed {
    Request r;
    int32_t node;
    std::vector<int32_t> gpus;
  };
  std::vector<Placed> placed;
  std::vector<int32_t> gpus;
  for (const Request& r : random_requests(3, 30)) {
    int32_t node = -1;
    if (a.place(r, node, gpus).ok()) placed.push_back({r, node, gpus});
  }
  CHECK(placed.size() > 10);
  // Restored in reverse order: the end state does not depend on the order.
  for (auto it = placed.rbegin(); it != placed.rend(); ++it) {
    CHECK(b.allocate_on(it->node, it->r, it->gpus).ok());
  }
  CHECK(snapshot(sa, false) == snapshot(sb, false));
  CHECK(a.frag().node_array() == b.frag().node_array());
  CHECK_NEAR(a.frag().total(), b.frag().total(), 1e-9);
  CHECK_NEAR(b.frag().total(), sum_of(b.frag().node_array()), 1e-9);
  CHECK(sb.check_invariants());
  // Both engines decide the same from here on (caches follow the node versions).
  for (const Request& r : random_requests(99, 20)) {
    int32_t na = -1;
    int32_t nb = -1;
    std::vector<int32_t> ga;
    std::vector<int32_t> gb;
    const Status x = a.place(r, na, ga);
    const Status y = b.place(r, nb, gb);
    CHECK_EQ(x.code, y.code);
    CHECK_EQ(na, nb);
    CHECK(ga == gb);
  }

  // Rejections change nothing.
  ClusterState s = three_nodes();
  Engine e(s, p, engine_workload(), 1);
  CHECK(e.allocate_on(0, req(1000, 1024, 1, 1000), std::vector<int32_t>{2}).ok());
  const Snapshot before = snapshot(s);
  const double frag_before = e.frag().total();
  auto rejected = [&](int32_t node, const Request& r, std::vector<int32_t> g, Code code) {
    CHECK_EQ(e.allocate_on(node, r, g).code, code);
    CHECK(snapshot(s) == before);
    CHECK_EQ(e.frag().total(), frag_before);
  };
  rejected(-1, req(1000, 0, 0, 0), {}, Code::kInvalidArgument);
  rejected(3, req(1000, 0, 0, 0), {}, Code::kInvalidArgument);
  rejected(0, req(1000, 0, 1, 1000), {4}, Code::kInvalidArgument);      // device out of range
  rejected(0, req(1000, 0, 1, 1000), {-1}, Code::kInvalidArgument);
  rejected(0, req(1000, 0, 2, 1000), {1, 1}, Code::kInvalidArgument);   // named twice
  rejected(0, req(1000, 0, 2, 1000), {1}, Code::kInvalidArgument);      // wrong count
  rejected(1, req(1000, 0, 0, 0), {0}, Code::kInvalidArgument);         // CPU-only with a device
  rejected(0, req(1000, 0, 1, 1000), {2}, Code::kInsufficientGpu);      // taken
  rejected(0, req(1000, 0, 1, 500), {2}, Code::kInsufficientGpu);       // no share left either
  rejected(0, req(1000, 0, 2, 1000), {1, 2}, Code::kInsufficientGpu);
  rejected(0, req(40000, 0, 0, 0), {}, Code::kInsufficientCpu);
  rejected(0, req(0, 70000, 0, 0), {}, Code::kInsufficientMemory);
  rejected(0, req(1000, 0, 2, 500), {0, 1}, Code::kInvalidArgument);    // invalid shape
  // Node flags do not matter: the task already runs there.
  s.set_flags(0, kNodeCordoned | kNodeDraining);
  CHECK(e.allocate_on(0, req(1000, 0, 1, 300), std::vector<int32_t>{2}).ok() == false);
  CHECK(e.allocate_on(0, req(1000, 0, 1, 300), std::vector<int32_t>{3}).ok());
  CHECK(e.allocate_on(0, req(1000, 0, 1, 700), std::vector<int32_t>{3}).ok());
  CHECK_EQ(s.gpu_free_of(0)[3], 0);
  CHECK_NEAR(e.frag().total(), sum_of(e.frag().node_array()), 1e-9);
  CHECK(s.check_invariants());
}

// --- QueueScheduler::restore ------------------------------------------------------------------

struct QueueRig {
  ClusterState state;
  Engine engine;
  QueueScheduler queue;
  explicit QueueRig(QueueOptions o = {})
      : state(mixed_cluster(2)),
        engine(state, profile_of({{ScorerKind::kBestFit, 1}}, GpuPick::kBest, TieBreak::kRank),
               TargetWorkload{}, 7),
        queue(engine, o) {}
  QueueRig(const QueueRig&) = delete;
  QueueRig& operator=(const QueueRig&) = delete;
};

void add_jobs(QueueScheduler& q) {
  const Request shapes[] = {req(4000, 8192, 1, 1000), req(2000, 4096, 1, 250),
                            req(8000, 16384, 2, 1000), req(1000, 2048, 0, 0)};
  for (int32_t i = 0; i < 12; ++i) {
    q.add_job(i, 100 + i, 1 + i % 3, shapes[static_cast<size_t>(i) % 4], 0.0);
  }
}

void test_queue_restore() {
  QueueRig live;
  add_jobs(live.queue);
  live.queue.set_quotas({QuotaSpec{-1, {1 << 20, 1 << 22, 100000}, {0, 0, 0}, {0, 0, 0}}});
  for (int32_t j = 0; j < live.queue.num_jobs(); ++j) {
    live.queue.set_job_meta(j, j % 2 == 0 ? 0 : -1, 0, 0);
    CHECK(live.queue.submit(j).ok());
  }
  CHECK(!live.queue.cycle(10).empty());

  QueueRig back;
  add_jobs(back.queue);
  back.queue.set_quotas({QuotaSpec{-1, {1 << 20, 1 << 22, 100000}, {0, 0, 0}, {0, 0, 0}}});
  for (int32_t j = 0; j < back.queue.num_jobs(); ++j) {
    back.queue.set_job_meta(j, j % 2 == 0 ? 0 : -1, 0, 0);
    if (j % 3 != 0) CHECK(back.queue.submit(j).ok());  // some pending, some still new
  }
  const int32_t pending_before = back.queue.num_pending();
  int32_t left_queue = 0;
  for (int32_t j = 0; j < live.queue.num_jobs(); ++j) {
    if (live.queue.state(j) != JobState::kRunning) continue;
    left_queue += back.queue.state(j) == JobState::kPending ? 1 : 0;
    CHECK(back.queue.restore(j, live.queue.start_time(j), live.queue.nodes_of(j),
                             live.queue.gpus_of(j)).ok());
    CHECK(back.queue.state(j) == JobState::kRunning);
    CHECK_EQ(back.queue.start_time(j), 10);
    // A running job cannot be restored again.
    const Snapshot snap = snapshot(back.state);
    CHECK_EQ(back.queue.restore(j, 10, live.queue.nodes_of(j), live.queue.gpus_of(j)).code,
             Code::kInvalidArgument);
    CHECK(snapshot(back.state) == snap);
  }
  CHECK_EQ(back.queue.num_pending(), pending_before - left_queue);
  CHECK_EQ(back.queue.num_running(), live.queue.num_running());
  CHECK(snapshot(live.state, false) == snapshot(back.state, false));
  CHECK(live.queue.usage(0) == back.queue.usage(0));
  for (const int32_t j : back.queue.pending_jobs()) CHECK(back.queue.state(j) == JobState::kPending);
  // The same later submissions start the same way.
  for (int32_t j = 0; j < back.queue.num_jobs(); ++j) {
    if (back.queue.state(j) == JobState::kNew) CHECK(back.queue.submit(j).ok());
  }
  for (int32_t j = 0; j < 2; ++j) {
    const int32_t a = live.queue.add_job(20, 50, 2, req(2000, 4096, 1, 500), 0.0);
    const int32_t b = back.queue.add_job(20, 50, 2, req(2000, 4096, 1, 500), 0.0);
    CHECK(live.queue.submit(a).ok());
    CHECK(back.queue.submit(b).ok());
  }
  for (const int64_t t : {20, 30}) {
    const std::vector<int32_t> x = live.queue.cycle(t);
    const std::vector<int32_t> y = back.queue.cycle(t);
    CHECK(x == y);
    for (const int32_t j : x) {
      CHECK(std::ranges::equal(live.queue.nodes_of(j), back.queue.nodes_of(j)));
      CHECK(std::ranges::equal(live.queue.gpus_of(j), back.queue.gpus_of(j)));
    }
    CHECK(snapshot(live.state, false) == snapshot(back.state, false));
  }
  // finish() after restore releases everything.
  for (int32_t j = 0; j < back.queue.num_jobs(); ++j) {
    if (back.queue.state(j) == JobState::kRunning) CHECK(back.queue.finish(j).ok());
  }
  QueueRig fresh;
  CHECK(snapshot(back.state, false) == snapshot(fresh.state, false));
  CHECK(back.queue.usage(0) == (Calendar::Vec{0, 0, 0}));
  CHECK(back.state.check_invariants());
}

void test_queue_restore_failures() {
  QueueOptions o;
  o.lock_head = true;
  QueueRig rig(o);
  QueueScheduler& q = rig.queue;
  // A gang of two one-GPU tasks, an exclusive CPU job, an elastic 2..3 job, and a job that
  // fits no node (the blocked, locked head: submitted first).
  const int32_t gang = q.add_job(1, 100, 2, req(1000, 1024, 1, 1000), 0.0);
  const int32_t excl = q.add_job(0, 100, 1, req(1000, 1024, 0, 0), 0.0);
  const int32_t elas = q.add_job(0, 100, 3, req(1000, 1024, 0, 0), 0.0);
  const int32_t huge = q.add_job(0, 100, 1, req(1000, 1024, 16, 1000), 0.0);
  const int32_t tail = q.add_job(2, 100, 1, req(1000, 1024, 0, 0), 0.0);
  q.set_exclusive(excl, true);
  q.set_min_tasks(elas, 2);
  CHECK(q.submit(huge).ok());
  CHECK(q.submit(gang).ok());
  CHECK(q.cycle(0).empty());  // the huge head blocks (no backfill) and is locked
  CHECK_EQ(q.num_pending(), 2);
  // Occupy GPU 1 of node 0.
  CHECK(rig.engine.allocate_on(0, req(0, 0, 1, 1000), std::vector<int32_t>{1}).ok());
  // Rejected before anything is allocated: nothing changes, node versions included.
  const Snapshot before = snapshot(rig.state);
  auto unchanged = [&](int32_t job, JobState st, bool versions) {
    CHECK(versions ? snapshot(rig.state) == before
                   : snapshot(rig.state, false) == snapshot_without_versions(before));
    CHECK(q.state(job) == st);
    CHECK_EQ(q.num_running(), 0);
    CHECK_EQ(q.num_pending(), 2);
  };
  const std::vector<int32_t> two_nodes{0, 0};
  CHECK_EQ(q.restore(gang, 5, std::vector<int32_t>{0}, std::vector<int32_t>{0}).code,
           Code::kInvalidArgument);  // not elastic: exactly num_tasks
  CHECK_EQ(q.restore(gang, 5, two_nodes, std::vector<int32_t>{0}).code, Code::kInvalidArgument);
  CHECK_EQ(q.restore(gang, 5, two_nodes, std::vector<int32_t>{0, 1, 2}).code,
           Code::kInvalidArgument);
  CHECK_EQ(q.restore(gang, 5, std::vector<int32_t>{0, 8}, std::vector<int32_t>{0, 0}).code,
           Code::kInvalidArgument);
  CHECK_EQ(q.restore(gang, -1, two_nodes, std::vector<int32_t>{0, 2}).code, Code::kInvalidArgument);
  CHECK_EQ(q.restore(-1, 5, two_nodes, std::vector<int32_t>{0, 2}).code, Code::kInvalidArgument);
  CHECK_EQ(q.restore(99, 5, two_nodes, std::vector<int32_t>{0, 2}).code, Code::kInvalidArgument);
  unchanged(gang, JobState::kPending, true);
  // The second task fails: the first is given back (node versions move on, nothing else).
  CHECK_EQ(q.restore(gang, 5, two_nodes, std::vector<int32_t>{0, 1}).code, Code::kInsufficientGpu);
  unchanged(gang, JobState::kPending, false);
  CHECK_EQ(q.restore(gang, 5, two_nodes, std::vector<int32_t>{0, 0}).code, Code::kInsufficientGpu);
  unchanged(gang, JobState::kPending, false);
  CHECK_EQ(q.restore(gang, 5, std::vector<int32_t>{4, 0}, std::vector<int32_t>{0, 4}).code,
           Code::kInvalidArgument);  // node 0 has 4 devices
  unchanged(gang, JobState::kPending, false);
  CHECK_EQ(rig.state.gpu_free_of(4)[0], 1000);
  // Two tasks on one node with devices 0 and 2; the node may even be cordoned.
  rig.state.set_flags(0, kNodeCordoned);
  CHECK(q.restore(gang, 5, two_nodes, std::vector<int32_t>{0, 2}).ok());
  CHECK_EQ(q.num_pending(), 1);
  CHECK_EQ(q.num_running(), 1);
  CHECK(q.pending_jobs() == std::vector<int32_t>{huge});
  CHECK_EQ(rig.state.gpu_free_of(0)[0], 0);
  CHECK_EQ(rig.state.gpu_free_of(0)[2], 0);
  rig.state.set_flags(0, 0);
  // Restoring the locked head unlocks the queue.
  CHECK(q.submit(tail).ok());
  CHECK(q.restore(huge, 5, std::vector<int32_t>{1},
                  std::vector<int32_t>{0, 1, 2, 3, 4, 5, 6, 7, 0, 1, 2, 3, 4, 5, 6, 7})
            .code == Code::kInvalidArgument);  // node 1 has 8 devices
  CHECK(q.cycle(6).empty());  // huge still blocks tail (FCFS, no backfill)
  CHECK(q.cancel(huge).ok());
  CHECK(q.cycle(7) == std::vector<int32_t>{tail});
  CHECK(q.finish(tail).ok());
  // Exclusive: idle nodes only; it flags them; nobody joins; finish clears.
  CHECK_EQ(q.restore(excl, 5, std::vector<int32_t>{0}, std::vector<int32_t>{}).code,
           Code::kNodeUnavailable);  // node 0 is busy
  CHECK(q.state(excl) == JobState::kNew);
  CHECK(q.restore(excl, 5, std::vector<int32_t>{2}, std::vector<int32_t>{}).ok());
  CHECK((rig.state.flags(2) & kNodeExclusive) != 0);
  CHECK_EQ(q.restore(elas, 5, std::vector<int32_t>{2, 6}, std::vector<int32_t>{}).code,
           Code::kNodeUnavailable);
  // Elastic: any count in [min, num].
  CHECK_EQ(q.restore(elas, 5, std::vector<int32_t>{6}, std::vector<int32_t>{}).code,
           Code::kInvalidArgument);
  CHECK_EQ(q.restore(elas, 5, std::vector<int32_t>{6, 6, 6, 6}, std::vector<int32_t>{}).code,
           Code::kInvalidArgument);
  CHECK(q.restore(elas, 5, std::vector<int32_t>{6, 6}, std::vector<int32_t>{}).ok());
  CHECK_EQ(q.tasks_of(elas), 2);
  CHECK(q.finish(excl).ok());
  CHECK_EQ(rig.state.flags(2) & kNodeExclusive, 0);
  CHECK(q.finish(elas).ok());
  // Requeue after restore: back in the queue exactly once.
  CHECK(q.requeue(gang).ok());
  CHECK(q.pending_jobs() == std::vector<int32_t>{gang});
  CHECK(q.restore(gang, 9, two_nodes, std::vector<int32_t>{0, 2}).ok());
  CHECK(q.pending_jobs().empty());
  CHECK(q.finish(gang).ok());
  CHECK(rig.engine.release(0, req(0, 0, 1, 1000), std::vector<int32_t>{1}).ok());
  QueueRig fresh;
  CHECK(snapshot(rig.state, false) == snapshot(fresh.state, false));
  CHECK(rig.state.check_invariants());
}

// --- Rng --------------------------------------------------------------------------------------

// --- Argument checks at the entry points ----------------------------------------------------

// Runs `fn`, which must throw exactly E; returns the message ("" and a failure otherwise).
template <typename E, typename F>
std::string throws(F&& fn, const char* what, const char* file, int line) {
  try {
    fn();
  } catch (const E& ex) {
    record(true, file, line, what);
    return ex.what();
  } catch (const std::exception& ex) {
    record(false, file, line, std::string(what) + " threw the wrong exception: " + ex.what());
    return "";
  }
  record(false, file, line, std::string(what) + " did not throw");
  return "";
}
#define CHECK_THROWS(E, expr) throws<E>([&] { (void)(expr); }, #expr, __FILE__, __LINE__)
#define CHECK_CONTAINS(text, part) \
  record(std::string(text).find(part) != std::string::npos, __FILE__, __LINE__, \
         std::string("\"") + std::string(text) + "\" contains \"" + (part) + "\"")

void test_cluster_argument_checks() {
  using std::invalid_argument;
  using std::out_of_range;
  CHECK_CONTAINS(CHECK_THROWS(invalid_argument, make_state({{kMaxQuantity + 1, 0, 0, -1, 0, 0}})),
                 "node 0: cpu_milli");
  CHECK_THROWS(invalid_argument, make_state({{0, kMaxQuantity + 1, 0, -1, 0, 0}}));
  CHECK_THROWS(invalid_argument, make_state({{0, 0, kMaxGpusPerNode + 1, 0, 0, 0}}));
  CHECK_THROWS(invalid_argument, make_state({{0, -1, 0, -1, 0, 0}}));
  // Each node within its bounds, the cluster over its total: refused before any overflow.
  const std::vector<NodeSpec> big(static_cast<size_t>(kMaxClusterTotal / kMaxQuantity) + 1,
                                  NodeSpec{kMaxQuantity, 0, 0, -1, 0, 0});
  CHECK_CONTAINS(CHECK_THROWS(invalid_argument, ClusterState(big)), "cluster totals");
  const std::vector<NodeSpec> fits(big.begin(), big.end() - 1);
  CHECK_EQ(ClusterState(fits).num_nodes(), static_cast<int32_t>(fits.size()));

  ClusterState s = three_nodes();
  CHECK_CONTAINS(CHECK_THROWS(out_of_range, s.set_flags(3, kNodeDown)), "node 3 out of range [0, 3)");
  CHECK_THROWS(out_of_range, s.set_flags(-1, kNodeDown));
  CHECK_THROWS(out_of_range, s.set_flags(int64_t{1} << 40, kNodeDown));
  CHECK(s.flags_array() == (std::vector<uint8_t>{0, 0, 0}));
  s.set_flags(2, kNodeCordoned);
  CHECK_EQ(s.flags(2), kNodeCordoned);
  CHECK_CONTAINS(CHECK_THROWS(out_of_range, (void)s.kind_count_at(0, kGpuKindSlots)), "slot 17");
  CHECK_THROWS(out_of_range, (void)s.kind_count_at(0, -1));
  CHECK_THROWS(out_of_range, (void)s.kind_count_at(3, 0));
  CHECK_THROWS(out_of_range, (void)s.kinds_present_at(-1));
  CHECK_EQ(s.kind_count_at(0, 1), 0);
  CHECK_EQ(s.kinds_present_at(2), 0);
  // GPU topology: one id per device, all or nothing.
  const std::vector<int32_t> ids(12, 1);
  CHECK_CONTAINS(CHECK_THROWS(invalid_argument, s.set_gpu_topology(ids, std::vector<int32_t>(11))),
                 "one id per GPU (12)");
  CHECK(s.nvlink_array() == std::vector<int32_t>(12, 0));
  s.set_gpu_topology(ids, ids);
  CHECK(s.numa_array() == ids);
  // Requests beyond the per-task bounds are not valid (so every operation refuses them).
  CHECK(!req(kMaxQuantity + 1, 0, 0, 0).valid());
  CHECK(!req(0, kMaxQuantity + 1, 0, 0).valid());
  CHECK(!req(0, 0, kMaxGpusPerNode + 1, 1000).valid());
  CHECK(req(kMaxQuantity, kMaxQuantity, kMaxGpusPerNode, 1000).valid());
}

void test_engine_argument_checks() {
  using std::invalid_argument;
  using std::out_of_range;
  ClusterState s = mixed_cluster(1);
  const auto engine_with = [&](std::initializer_list<WeightedScorer> scorers) {
    return Engine(s, profile_of(scorers, GpuPick::kBest, TieBreak::kRank), TargetWorkload{}, 0);
  };
  CHECK_THROWS(invalid_argument, engine_with({{ScorerKind::kBestFit, 0}}));
  CHECK_THROWS(invalid_argument, engine_with({{ScorerKind::kBestFit, -5}}));
  CHECK_CONTAINS(CHECK_THROWS(invalid_argument,
                              engine_with({{ScorerKind::kBestFit, Engine::kMaxWeightSum},
                                           {ScorerKind::kDotProd, 1}})),
                 "dotprod");
  CHECK_THROWS(invalid_argument,
               engine_with({{ScorerKind::kBestFit, std::numeric_limits<int64_t>::max()}}));
  // Workload weights: finite and bounded.
  for (const double w : {std::nan(""), std::numeric_limits<double>::infinity(), -0.5, 2e9}) {
    CHECK_THROWS(invalid_argument, TargetWorkload({{1000, 1, 500, 0, w}}));
  }
  CHECK_THROWS(invalid_argument,
               node_fragmentation(small_workload(), 0, kMaxGpuModels, std::vector<int32_t>{1000}));
  CHECK_THROWS(invalid_argument,
               node_fragmentation(small_workload(), 0, -2, std::vector<int32_t>{1000}));

  Engine e = engine_with({{ScorerKind::kDotProd, 1000}, {ScorerKind::kBestFit, 1}});
  CHECK_THROWS(out_of_range, e.node_changed(4));
  CHECK_THROWS(out_of_range, e.node_changed(-1));
  e.node_changed(3);
  std::vector<uint8_t> codes(3);
  CHECK_THROWS(invalid_argument, e.filter_all(req(1000, 0, 0, 0), codes));
  std::vector<int64_t> scores(5);
  CHECK_THROWS(invalid_argument, e.score_all(req(1000, 0, 0, 0), ScorerKind::kBestFit, scores));
  // Inspection takes shapes place() refuses, but not amounts out of bounds (they would
  // overflow the scorers' arithmetic).
  codes.resize(4);
  scores.resize(4);
  for (const Request& r : {req(1000, 0, 1, std::numeric_limits<int32_t>::min()),
                           req(std::numeric_limits<int64_t>::min(), 0, 0, 0),
                           req(0, kMaxQuantity + 1, 0, 0), req(0, 0, -1, 1000),
                           req(0, 0, 1, kMilliGpu + 1)}) {
    CHECK_THROWS(invalid_argument, e.filter_all(r, codes));
    CHECK_THROWS(invalid_argument, e.score_all(r, ScorerKind::kBestFit, scores));
  }
  e.filter_all(req(1000, 0, 3, 500), codes);  // several shares: not placeable, but inspected
  CHECK_EQ(codes[2], static_cast<uint8_t>(Code::kInsufficientGpu));  // the CPU-only node
  e.score_all(req(1000, 0, 3, 500), ScorerKind::kDotProd, scores);
  CHECK(scores[0] >= 0 && scores[2] == -1);
  // Gang counts outside [1, kMaxTasks] are refused before any work.
  std::vector<int32_t> nodes, gpus;
  for (const int32_t count : {0, -1, kMaxTasks + 1, std::numeric_limits<int32_t>::max()}) {
    CHECK_EQ(e.place_gang(req(0, 0, 0, 0), count, nodes, gpus).code, Code::kInvalidArgument);
    CHECK_EQ(e.place_gang_topology(req(0, 0, 0, 0), count, SpanLimit::kNone, nodes, gpus).code,
             Code::kInvalidArgument);
  }
  const std::vector<int32_t> too_many(static_cast<size_t>(kMaxTasks) + 1, 0);
  CHECK_EQ(e.place_gang_on(req(0, 0, 0, 0), too_many, gpus).code, Code::kInvalidArgument);
  // Largest valid shapes never overflow the gang's aggregate test or the weighted totals.
  CHECK_EQ(e.place_gang(req(kMaxQuantity, kMaxQuantity, 0, 0), kMaxTasks, nodes, gpus).code,
           Code::kInsufficientCpu);
  int32_t node = -1;
  CHECK(e.place(req(1000, 1024, 0, 0), node, gpus).ok());
  CHECK(s.check_invariants());
  // gang_span: nodes must exist.
  const TopologyIndex idx = TopologyIndex::build(s);
  CHECK_CONTAINS(CHECK_THROWS(out_of_range, gang_span(idx, std::vector<int32_t>{0, 4})),
                 "node 4 out of range [0, 4)");
  CHECK_EQ(gang_span(idx, std::vector<int32_t>{0, 3}).nodes, 2);
}

void test_calendar_argument_checks() {
  using std::invalid_argument;
  const Calendar::Vec one{1, 1, 1};
  CHECK_THROWS(invalid_argument, Calendar(0, one, 0, 0));
  CHECK_THROWS(invalid_argument, Calendar(0, one, 1, -1));
  CHECK_THROWS(invalid_argument, Calendar(Calendar::kTimeLimit + 1, one));
  CHECK_THROWS(invalid_argument, Calendar(0, Calendar::Vec{Calendar::kLimit + 1, 0, 0}));
  Calendar cal(0, one, 7, 100);
  CHECK_THROWS(invalid_argument, cal.add_release(Calendar::kTimeLimit + 1, one));
  CHECK_THROWS(invalid_argument, cal.add_release(5, Calendar::Vec{0, -Calendar::kLimit - 1, 0}));
  CHECK_THROWS(invalid_argument, cal.reserve(std::numeric_limits<int64_t>::min(), 5, one));
  CHECK_THROWS(invalid_argument, (void)cal.fits(0, std::numeric_limits<int64_t>::max(), one));
  CHECK_THROWS(invalid_argument, (void)cal.earliest_start(one, std::numeric_limits<int64_t>::max(), 0));
  CHECK_THROWS(invalid_argument, (void)cal.free_at(std::numeric_limits<int64_t>::min()));
  CHECK_EQ(cal.steps(), size_t{1});
  // Extreme but allowed times round without overflow.
  cal.add_release(Calendar::kTimeLimit, one);
  CHECK(cal.free_at(Calendar::kTimeLimit + 0) == (Calendar::Vec{1, 1, 1}));
  CHECK_EQ(cal.earliest_start(Calendar::Vec{2, 2, 2}, Calendar::kTimeLimit, 0), Calendar::kNever);
  // Sums that would leave int64 saturate at +-kLimit instead.
  Calendar sat(0, Calendar::Vec{Calendar::kLimit, 0, -Calendar::kLimit});
  sat.add_release(10, Calendar::Vec{Calendar::kLimit, 5, 0});
  sat.add_release(20, Calendar::Vec{Calendar::kLimit, 5, 0});
  sat.reserve(30, 40, Calendar::Vec{0, 0, Calendar::kLimit});
  CHECK(sat.free_at(25) == (Calendar::Vec{Calendar::kLimit, 10, -Calendar::kLimit}));
  CHECK(sat.free_at(35) == (Calendar::Vec{Calendar::kLimit, 10, -Calendar::kLimit}));
  CHECK(sat.free_at(5) == (Calendar::Vec{Calendar::kLimit, 0, -Calendar::kLimit}));
}

// SlotProfile (bounded conservative backfilling) against a plain array: random range adds,
// earliest starts and reads agree.
void test_slot_profile_matches_array() {
  Rng rng(11);
  for (int round = 0; round < 40; ++round) {
    const size_t n = 1 + static_cast<size_t>(rng.below(70));
    std::vector<Calendar::Vec> plain(n);
    for (auto& v : plain) {
      v = {static_cast<int64_t>(rng.below(20)), static_cast<int64_t>(rng.below(3)),
           static_cast<int64_t>(rng.below(2))};
    }
    SlotProfile prof;
    prof.reset(plain);
    for (int op = 0; op < 60; ++op) {
      const size_t a = static_cast<size_t>(rng.below(n));
      const size_t b = a + static_cast<size_t>(rng.below(n - a + 3));
      const Calendar::Vec delta{static_cast<int64_t>(rng.below(9)) - 5,
                                static_cast<int64_t>(rng.below(3)) - 1, 0};
      prof.add(a, b, delta);
      for (size_t k = a; k < std::min(b, n); ++k) {
        for (size_t d = 0; d < delta.size(); ++d) plain[k][d] += delta[d];
      }
      const Calendar::Vec need{static_cast<int64_t>(rng.below(15)),
                               static_cast<int64_t>(rng.below(2)), 0};
      const size_t from = static_cast<size_t>(rng.below(n + 1));
      const size_t len = 1 + static_cast<size_t>(rng.below(6));
      size_t want = n;
      for (size_t c = from; c < n && want == n; ++c) {
        bool ok = true;
        for (size_t k = c; k < std::min(n, c + len) && ok; ++k) {
          for (size_t d = 0; d < need.size(); ++d) ok = ok && plain[k][d] >= need[d];
        }
        if (ok) want = c;
      }
      CHECK_EQ(prof.earliest(from, len, need), want);
      const size_t at = static_cast<size_t>(rng.below(n));
      CHECK(prof.at(at) == plain[at]);
    }
  }
}

// QuotaLedger from columns (what the bindings hand over): lengths and values checked in the
// core; borrowing within a cohort.
void test_quota_ledger_columns() {
  using std::invalid_argument;
  QuotaLedger ledger;
  const std::vector<int32_t> cohort{0, 0};
  const std::vector<int64_t> nominal{4000, 0, 0, 0, 0, 0};
  const std::vector<int64_t> borrowing{0, 0, 0, 4000, 0, 0};
  const std::vector<int64_t> lending{4000, 0, 0, 0, 0, 0};
  const std::vector<int32_t> parent{-1};
  const std::vector<int64_t> caps{-1, -1, -1};
  const std::vector<int64_t> short_col{4000, 0, 0};
  const std::vector<int64_t> two{-1, -1};
  CHECK_CONTAINS(CHECK_THROWS(invalid_argument,
                              ledger.set(cohort, short_col, borrowing, lending, parent, caps)),
                 "3 values per project");
  CHECK_CONTAINS(CHECK_THROWS(invalid_argument,
                              ledger.set(cohort, nominal, borrowing, lending, parent, two)),
                 "3 values per cohort");
  const std::vector<int64_t> negative{-1, 0, 0, 0, 0, 0};
  CHECK_THROWS(invalid_argument, ledger.set(cohort, negative, borrowing, lending, parent, caps));
  CHECK(ledger.empty());  // a refused table changes nothing
  ledger.set(cohort, nominal, borrowing, lending, parent, caps);
  CHECK_EQ(ledger.num_projects(), 2);
  CHECK(ledger.same_root(0, 1));
  // Project 1 has no nominal quota: it borrows project 0's unused 4 cores, no more.
  CHECK(ledger.admits(1, Calendar::Vec{4000, 0, 0}));
  CHECK(!ledger.admits(1, Calendar::Vec{5000, 0, 0}));
  ledger.charge(0, Calendar::Vec{3000, 0, 0}, +1);
  CHECK(!ledger.admits(1, Calendar::Vec{2000, 0, 0}));
  CHECK(ledger.admits(1, Calendar::Vec{1000, 0, 0}));
  CHECK(ledger.usage_of(0) == (Calendar::Vec{3000, 0, 0}));
  CHECK_THROWS(std::out_of_range, ledger.usage_of(2));
}

void test_queue_argument_checks() {
  using std::invalid_argument;
  using std::out_of_range;
  {
    QueueOptions bad;
    bad.grace_period = -1;
    CHECK_THROWS(invalid_argument, QueueRig(bad));
    bad = {};
    bad.calendar_resolution = 0;
    CHECK_THROWS(invalid_argument, QueueRig(bad));
    bad = {};
    bad.calendar_horizon = kMaxTime + 1;
    CHECK_THROWS(invalid_argument, QueueRig(bad));
    bad = {};
    bad.max_backfill_jobs = -1;
    CHECK_THROWS(invalid_argument, QueueRig(bad));
    bad = {};
    bad.backfill_interval = -1;
    CHECK_THROWS(invalid_argument, QueueRig(bad));
    bad = {};
    bad.backfill = BackfillMode::kConservative;
    bad.calendar_horizon = QueueScheduler::kMaxSlots + 1;  // resolution 1: too many slots
    CHECK_THROWS(invalid_argument, QueueRig(bad));
  }
  QueueRig rig;
  QueueScheduler& q = rig.queue;
  // Queries on a queue without jobs: the crash this guards against.
  CHECK_CONTAINS(CHECK_THROWS(out_of_range, q.state(5)), "job 5 out of range [0, 0)");
  CHECK_THROWS(out_of_range, q.start_time(5));
  CHECK_THROWS(out_of_range, q.reason(5));
  CHECK_THROWS(out_of_range, q.reservation(5));
  CHECK_THROWS(out_of_range, q.nodes_of(5));
  CHECK_THROWS(out_of_range, q.gpus_of(5));
  CHECK_THROWS(out_of_range, q.tasks_of(5));
  CHECK_THROWS(out_of_range, q.terminating(5));
  CHECK_THROWS(out_of_range, q.lost_work(5, 0));
  CHECK_THROWS(out_of_range, q.usage(0));
  CHECK_THROWS(out_of_range, q.set_priority(0, 1.0));
  CHECK_THROWS(out_of_range, q.set_min_tasks(0, 1));
  CHECK_THROWS(out_of_range, q.set_exclusive(0, true));
  CHECK_THROWS(out_of_range, q.set_job_meta(0, -1, 0, 0));
  // Registration: bad values refused, batches all or nothing.
  CHECK_THROWS(invalid_argument, q.add_job(0, 10, 1, req(1000, 0, 0, 0), std::nan("")));
  CHECK_THROWS(invalid_argument, q.add_job(kMaxTime + 1, 10, 1, req(1000, 0, 0, 0), 0.0));
  const JobSpec good{0, 10, 1, req(1000, 1024, 0, 0), 0.0};
  const JobSpec nan_priority{0, 10, 1, req(1000, 1024, 0, 0), std::nan("")};
  CHECK_THROWS(invalid_argument, q.add_jobs(std::vector<JobSpec>{good, nan_priority}));
  CHECK_EQ(q.num_jobs(), 0);
  CHECK_EQ(q.add_jobs(std::vector<JobSpec>{good, good}), 0);
  const int32_t forever = q.add_job(0, std::numeric_limits<int64_t>::max(), 1, req(1000, 0, 0, 0), 0);
  const int32_t zero = q.add_job(0, 10, 0, req(1000, 0, 0, 0), 0.0);
  const int32_t wide = q.add_job(0, 10, kMaxTasks + 1, req(0, 0, 0, 0), 0.0);
  const int32_t huge = q.add_job(0, 10, 1, req(kMaxQuantity + 1, 0, 0, 0), 0.0);
  const int32_t gang = q.add_job(0, 10, 2, req(1000, 1024, 1, 1000), 0.0);
  CHECK_EQ(q.num_jobs(), 7);
  CHECK_THROWS(out_of_range, q.state(7));
  CHECK_THROWS(out_of_range, q.state(-1));
  CHECK_THROWS(out_of_range, q.state(std::numeric_limits<int64_t>::max()));
  // Submit and the other status answers: unknown jobs and invalid shapes are not accepted.
  for (const int64_t bogus : {int64_t{-1}, int64_t{7}, int64_t{1} << 40}) {
    CHECK_EQ(q.submit(bogus).code, Code::kInvalidArgument);
    CHECK_EQ(q.cancel(bogus).code, Code::kInvalidArgument);
    CHECK_EQ(q.finish(bogus).code, Code::kInvalidArgument);
    CHECK_EQ(q.requeue(bogus).code, Code::kInvalidArgument);
    CHECK_EQ(q.restore(bogus, 0, std::vector<int32_t>{0}, {}).code, Code::kInvalidArgument);
  }
  for (const int32_t j : {zero, wide, huge}) CHECK_EQ(q.submit(j).code, Code::kInvalidArgument);
  CHECK_EQ(q.submit_many(std::vector<int64_t>{0, 1, 7, -3, forever, gang, 0}), 4);
  // Setters check every entry before changing anything.
  q.set_job_meta(0, -1, 100, 10);
  CHECK_THROWS(out_of_range, q.set_job_meta(std::vector<int64_t>{1, 9}, std::vector<int32_t>{-1, -1},
                                            std::vector<int64_t>{50, 50}, std::vector<int64_t>{0, 0}));
  CHECK_THROWS(invalid_argument,
               q.set_job_meta(std::vector<int64_t>{0}, std::vector<int32_t>{-1},
                              std::vector<int64_t>{kMaxTime + 1}, std::vector<int64_t>{0}));
  CHECK_THROWS(invalid_argument, q.set_job_meta(std::vector<int64_t>{0}, std::vector<int32_t>{},
                                                std::vector<int64_t>{0}, std::vector<int64_t>{0}));
  CHECK_THROWS(invalid_argument, q.set_priority(1, std::nan("")));
  CHECK_THROWS(invalid_argument, q.set_priorities(std::vector<int64_t>{0, 1},
                                                  std::vector<double>{1.0, std::nan("")}));
  CHECK_THROWS(out_of_range, q.set_priorities(std::vector<int64_t>{0, 70}, std::vector<double>{1, 2}));
  CHECK_THROWS(invalid_argument, q.set_min_tasks(gang, 0));
  CHECK_THROWS(invalid_argument, q.set_min_tasks(gang, -5));
  CHECK_THROWS(out_of_range, q.set_min_tasks(std::vector<int64_t>{gang, 99}, std::vector<int32_t>{1, 1}));
  q.set_min_tasks(zero, 3);  // a job with no tasks (which submit refuses) is simply not elastic
  CHECK_THROWS(out_of_range, q.set_exclusive(std::vector<int64_t>{0, 99}, std::vector<uint8_t>{1, 1}));
  // Reservations: nodes must exist, windows must be non-empty and in range.
  CHECK_THROWS(out_of_range, q.add_reservation(Reservation{0, 10, {0, 8}, -1}));
  CHECK_THROWS(out_of_range, q.add_reservation(Reservation{0, 10, {-1}, -1}));
  CHECK_THROWS(invalid_argument, q.add_reservation(Reservation{10, 10, {0}, -1}));
  CHECK_THROWS(invalid_argument, q.add_reservation(Reservation{0, kMaxTime + 1, {0}, -1}));
  CHECK(q.reservations_list().empty());
  // Cycles: the time must be in range; a run-time estimate of "forever" does not overflow.
  CHECK_THROWS(invalid_argument, q.cycle(kMaxTime + 1));
  CHECK_THROWS(invalid_argument, q.cycle(std::numeric_limits<int64_t>::min()));
  CHECK_EQ(q.cycle(kMaxTime).size(), size_t{4});
  CHECK(q.state(forever) == JobState::kRunning);
  CHECK_EQ(q.start_time(forever), kMaxTime);
  CHECK_THROWS(invalid_argument, q.lost_work(forever, kMaxTime + 1));
  CHECK(q.lost_work(0, kMaxTime) >= 0.0);
  // A running job's exclusivity cannot change (its nodes' flags follow it).
  CHECK_THROWS(invalid_argument, q.set_exclusive(0, true));
  q.set_exclusive(0, false);
  CHECK_EQ(q.finish_many(std::vector<int64_t>{0, 0, 99, -1, forever}), 2);
  CHECK(rig.state.check_invariants());
}

void test_quota_argument_checks() {
  using std::invalid_argument;
  using std::out_of_range;
  constexpr int64_t kMax = std::numeric_limits<int64_t>::max();
  QueueOptions o;
  o.preemption = Preemption::kBoth;
  QueueRig rig(o);
  QueueScheduler& q = rig.queue;
  CHECK_THROWS(invalid_argument, q.set_quotas({QuotaSpec{-1, {-1, 0, 0}, {0, 0, 0}, {0, 0, 0}}}));
  CHECK_THROWS(invalid_argument, q.set_quotas({QuotaSpec{-1, {0, 0, 0}, {0, -1, 0}, {0, 0, 0}}}));
  CHECK_THROWS(invalid_argument, q.set_quotas({QuotaSpec{-1, {0, 0, 0}, {0, 0, 0}, {0, 0, -1}}}));
  CHECK_THROWS(invalid_argument, q.set_quotas({QuotaSpec{-2, {0, 0, 0}, {0, 0, 0}, {0, 0, 0}}}));
  // A cohort far beyond the table would allocate that many roots.
  CHECK_THROWS(invalid_argument,
               q.set_quotas({QuotaSpec{1 << 30, {0, 0, 0}, {0, 0, 0}, {0, 0, 0}}}));
  CHECK_THROWS(out_of_range, q.set_quotas({}, {CohortSpec{3, {-1, -1, -1}}}));
  CHECK_CONTAINS(CHECK_THROWS(invalid_argument,
                              q.set_quotas({}, {CohortSpec{1, {-1, -1, -1}}, CohortSpec{0, {-1, -1, -1}}})),
                 "cycle");
  CHECK_THROWS(invalid_argument, q.set_quotas({}, {CohortSpec{0, {-1, -1, -1}}}));
  CHECK_THROWS(invalid_argument, q.set_quotas({}, {CohortSpec{-1, {-2, -1, -1}}}));
  // "Unlimited" quotas (INT64_MAX everywhere) in one cohort with a capped parent: the sums
  // would overflow int64; they are computed wide.
  const QuotaSpec unlimited{1, {kMax, kMax, kMax}, {kMax, kMax, kMax}, {kMax, kMax, kMax}};
  q.set_quotas({unlimited, unlimited, QuotaSpec{1, {0, 0, 0}, {kMax, kMax, kMax}, {0, 0, 0}}},
               {CohortSpec{-1, {kMax, kMax, kMax}}, CohortSpec{0, {-1, -1, -1}}});
  for (int32_t p = 0; p < 3; ++p) {
    const int32_t j = q.add_job(0, 100, 2, req(4000, 8192, 1, 1000), static_cast<double>(p));
    q.set_job_meta(j, p, 10, 1);
    CHECK(q.submit(j).ok());
  }
  CHECK_EQ(q.cycle(0).size(), size_t{3});
  CHECK_EQ(q.usage(2)[0], int64_t{8000});
  CHECK_THROWS(out_of_range, q.usage(3));
  CHECK_THROWS(out_of_range, q.usage(-1));
  // Shrinking the table: jobs of projects it no longer has lose their project (no stale index).
  q.set_quotas({QuotaSpec{-1, {kMax, kMax, kMax}, {0, 0, 0}, {0, 0, 0}}});
  CHECK_EQ(q.usage(0)[0], int64_t{8000});
  const int32_t late = q.add_job(1, 100, 1, req(1000, 0, 0, 0), 9.0);
  CHECK(q.submit(late).ok());
  q.cycle(1);
  for (int32_t j = 0; j < q.num_jobs(); ++j) (void)q.finish(j);
  CHECK(q.usage(0) == (Calendar::Vec{0, 0, 0}));
  CHECK(rig.state.check_invariants());
}

void test_rng() {
  // Reference values of xoshiro256** seeded by splitmix64 (pins cross-platform determinism).
  Rng r0(0);
  CHECK_EQ(r0.next(), 0x99ec5f36cb75f2b4ULL);
  CHECK_EQ(r0.next(), 0xbf6e1f784956452aULL);
  CHECK_EQ(r0.next(), 0x1a5f849d4933e6e0ULL);
  Rng r42(42);
  CHECK_EQ(r42.next(), 0x15780b2e0c2ec716ULL);
  Rng r7(7);
  std::vector<uint64_t> draws;
  for (int i = 0; i < 10; ++i) draws.push_back(r7.below(10));
  CHECK(draws == (std::vector<uint64_t>{7, 2, 8, 9, 9, 8, 0, 1, 4, 1}));

  Rng a(1234);
  Rng b(1234);
  bool same = true;
  for (int i = 0; i < 1000; ++i) same = same && a.next() == b.next();
  CHECK(same);
  Rng c(1235);
  Rng d(1234);
  bool differ = false;
  for (int i = 0; i < 10; ++i) differ = differ || c.next() != d.next();
  CHECK(differ);
  // reseed restarts the sequence.
  Rng e(5);
  const uint64_t first = e.next();
  (void)e.next();
  e.reseed(5);
  CHECK_EQ(e.next(), first);
  Rng def;
  Rng zero(0);
  CHECK_EQ(def.next(), zero.next());

  // below(bound) stays in range, including awkward bounds.
  Rng g(99);
  bool in_range = true;
  for (uint64_t bound : {uint64_t{1}, uint64_t{2}, uint64_t{3}, uint64_t{7}, uint64_t{10},
                         uint64_t{1000}, (uint64_t{1} << 32) + 1, (uint64_t{1} << 63) + 1,
                         std::numeric_limits<uint64_t>::max()}) {
    for (int i = 0; i < 2000; ++i) in_range = in_range && g.below(bound) < bound;
  }
  CHECK(in_range);
  CHECK_EQ(g.below(1), 0U);
  // Roughly uniform over a small range.
  std::vector<int> hist(6, 0);
  for (int i = 0; i < 60000; ++i) ++hist[static_cast<size_t>(g.below(6))];
  bool uniform = true;
  for (int h : hist) uniform = uniform && h > 9000 && h < 11000;
  CHECK(uniform);
}

struct TestCase {
  const char* name;
  void (*fn)();
};

}  // namespace

int main() {
  const TestCase tests[] = {
      {"cluster_construction", test_cluster_construction},
      {"request_valid", test_request_valid},
      {"gpu_fits", test_gpu_fits},
      {"allocate_release_success", test_allocate_release_success},
      {"allocate_rejections", test_allocate_rejections},
      {"release_rejections", test_release_rejections},
      {"release_duplicate_gpu", test_release_duplicate_gpu},
      {"gpu_model_out_of_range_rejected", test_gpu_model_out_of_range_rejected},
      {"filters", test_filters},
      {"scorer_names", test_scorer_names},
      {"score_dotprod", test_score_dotprod},
      {"score_gpu_clustering", test_score_gpu_clustering},
      {"score_gpu_packing", test_score_gpu_packing},
      {"score_fit", test_score_fit},
      {"normalize_scores", test_normalize_scores},
      {"node_fragmentation", test_node_fragmentation},
      {"frag_index", test_frag_index},
      {"score_fgd_and_pick_gpus", test_score_fgd_and_pick_gpus},
      {"engine_determinism", test_engine_determinism},
      {"engine_rank_tie_break", test_engine_rank_tie_break},
      {"engine_random_tie_break", test_engine_random_tie_break},
      {"engine_invalid_and_infeasible", test_engine_invalid_and_infeasible},
      {"rejection_counts", test_rejection_counts},
      {"engine_release", test_engine_release},
      {"engine_fgd_consistency", test_engine_fgd_consistency},
      {"place_batch", test_place_batch},
      {"single_scorer_fast_path", test_single_scorer_fast_path},
      {"engine_matches_reference", test_engine_matches_reference},
      {"engine_score_cache_slot_reuse", test_engine_score_cache_slot_reuse},
      {"engine_score_and_filter_all", test_engine_score_and_filter_all},
      {"engine_external_scorer", test_engine_external_scorer},
      {"engine_allocate_on", test_engine_allocate_on},
      {"queue_restore", test_queue_restore},
      {"queue_restore_failures", test_queue_restore_failures},
      {"cluster_argument_checks", test_cluster_argument_checks},
      {"engine_argument_checks", test_engine_argument_checks},
      {"calendar_argument_checks", test_calendar_argument_checks},
      {"queue_argument_checks", test_queue_argument_checks},
      {"slot_profile_matches_array", test_slot_profile_matches_array},
      {"quota_ledger_columns", test_quota_ledger_columns},
      {"quota_argument_checks", test_quota_argument_checks},
      {"rng", test_rng},
  };
  int failed_tests = 0;
  for (const TestCase& t : tests) {
    g_current_test = t.name;
    const int before = g_failed;
    try {
      t.fn();
    } catch (const std::exception& ex) {
      record(false, __FILE__, __LINE__, std::string("uncaught exception: ") + ex.what());
    } catch (...) {
      record(false, __FILE__, __LINE__, "uncaught non-standard exception");
    }
    const bool ok = g_failed == before;
    failed_tests += ok ? 0 : 1;
    std::printf("[%s] %s\n", ok ? "  OK  " : " FAIL ", t.name);
  }
  std::printf("%d tests, %d failed\n", static_cast<int>(std::size(tests)), failed_tests);
  std::printf("%d passed, %d failed\n", g_passed, g_failed);
  std::fflush(stdout);
  return g_failed == 0 ? 0 : 1;
}
