// Topology: GPU island ids, per-node gang capacity, spans, and the engine's gang entry points.
// Conversion only: the core checks every index and value (span limit names are parsed here).
#include <stdexcept>
#include <string>
#include <vector>

#include "cplat/framework.hpp"
#include "cplat/topology.hpp"
#include "pybind.hpp"

namespace cplat::py_bind {

namespace {

SpanLimit limit_from(const std::string& name) {
  const auto limit = span_limit_from_name(name);
  if (!limit) throw std::invalid_argument("unknown span limit: " + name + " (valid: none, rack, spine)");
  return *limit;
}

py::tuple gang_result(const Status& s, const std::vector<int32_t>& nodes,
                      const std::vector<int32_t>& gpus) {
  return py::make_tuple(s, to_array(nodes), to_array(gpus));
}

}  // namespace

void bind_topology(py::module_& m) {
  m.def("span_limit_names", [] {
    std::vector<std::string> names;
    for (int i = 0; i < kNumSpanLimits; ++i) names.emplace_back(span_limit_name(static_cast<SpanLimit>(i)));
    return names;
  });

  m.def(
      "set_gpu_topology",
      [](ClusterState& state, const py::object& nvlink, const py::object& numa) {
        state.set_gpu_topology(span_of(column<int32_t>(nvlink, "nvlink")),
                               span_of(column<int32_t>(numa, "numa")));
      },
      py::arg("state"), py::arg("nvlink"), py::arg("numa"));
  m.def(
      "gpu_nvlink", [](const ClusterState& state) { return to_array(state.nvlink_array()); },
      py::arg("state"));
  m.def(
      "gpu_numa", [](const ClusterState& state) { return to_array(state.numa_array()); },
      py::arg("state"));

  m.def(
      "gang_capacity",
      [](const ClusterState& state, int64_t cpu, int64_t mem, int32_t num_gpu, int32_t gpu_milli,
         uint64_t models, int32_t cap) {
        const Request r{cpu, mem, num_gpu, gpu_milli, models};
        std::vector<int32_t> out(static_cast<size_t>(state.num_nodes()));
        for (int32_t n = 0; n < state.num_nodes(); ++n) out[static_cast<size_t>(n)] = tasks_fit(state, n, r, cap);
        return to_array(out);
      },
      py::arg("state"), py::arg("cpu_milli"), py::arg("memory_mib"), py::arg("num_gpu"),
      py::arg("gpu_milli"), py::arg("models"), py::arg("cap"));

  m.def(
      "topology_index",
      [](const ClusterState& state) {
        const TopologyIndex idx = TopologyIndex::build(state);
        return py::make_tuple(to_array(idx.node_rack), to_array(idx.rack_spine));
      },
      py::arg("state"));

  m.def(
      "gang_span",
      [](const ClusterState& state, const py::object& nodes) {
        const In<int32_t> ids = column<int32_t>(nodes, "nodes");
        const GangSpan s = gang_span(TopologyIndex::build(state), span_of(ids));
        return py::make_tuple(s.spines, s.racks, s.nodes);
      },
      py::arg("state"), py::arg("nodes"));

  auto engine = py::reinterpret_borrow<py::class_<Engine>>(m.attr("Engine"));
  engine.def(
      "place_gang",
      [](Engine& e, int64_t cpu, int64_t mem, int32_t num_gpu, int32_t gpu_milli, uint64_t models,
         int32_t count) {
        std::vector<int32_t> nodes, gpus;
        Status s;
        {
          py::gil_scoped_release release;
          s = e.place_gang(Request{cpu, mem, num_gpu, gpu_milli, models}, count, nodes, gpus);
        }
        return gang_result(s, nodes, gpus);
      },
      py::arg("cpu_milli"), py::arg("memory_mib"), py::arg("num_gpu"), py::arg("gpu_milli"),
      py::arg("models"), py::arg("count"));
  engine.def(
      "place_gang_topology",
      [](Engine& e, int64_t cpu, int64_t mem, int32_t num_gpu, int32_t gpu_milli, uint64_t models,
         int32_t count, const std::string& max_span) {
        const SpanLimit limit = limit_from(max_span);
        std::vector<int32_t> nodes, gpus;
        Status s;
        {
          py::gil_scoped_release release;
          s = e.place_gang_topology(Request{cpu, mem, num_gpu, gpu_milli, models}, count, limit,
                                    nodes, gpus);
        }
        return gang_result(s, nodes, gpus);
      },
      py::arg("cpu_milli"), py::arg("memory_mib"), py::arg("num_gpu"), py::arg("gpu_milli"),
      py::arg("models"), py::arg("count"), py::arg("max_span") = "none");
  engine.def(
      "place_gang_on",
      [](Engine& e, int64_t cpu, int64_t mem, int32_t num_gpu, int32_t gpu_milli, uint64_t models,
         const py::object& nodes) {
        const In<int32_t> ids = column<int32_t>(nodes, "nodes");
        const std::vector<int32_t> on(ids.data(), ids.data() + ids.size());
        std::vector<int32_t> gpus;
        const Status s = e.place_gang_on(Request{cpu, mem, num_gpu, gpu_milli, models}, on, gpus);
        return py::make_tuple(s, to_array(gpus));
      },
      py::arg("cpu_milli"), py::arg("memory_mib"), py::arg("num_gpu"), py::arg("gpu_milli"),
      py::arg("models"), py::arg("nodes"));
}

}  // namespace cplat::py_bind
