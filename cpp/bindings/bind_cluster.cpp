// ClusterState, Status and the pure fragmentation function. Conversion only: the core checks
// every index and value.
#include <stdexcept>
#include <string>

#include "cplat/cluster.hpp"
#include "cplat/fragmentation.hpp"
#include "pybind.hpp"

namespace cplat::py_bind {

namespace {

std::vector<NodeSpec> node_specs(const py::handle& cpu_in, const py::handle& mem_in,
                                 const py::handle& ngpu_in, const py::handle& model_in,
                                 const py::handle& rack_in, const py::handle& spine_in) {
  const In<int64_t> cpu = column<int64_t>(cpu_in, "cpu_milli");
  const In<int64_t> mem = column<int64_t>(mem_in, "memory_mib");
  const In<int32_t> ngpu = column<int32_t>(ngpu_in, "num_gpu");
  const In<int32_t> model = column<int32_t>(model_in, "gpu_model");
  const In<int32_t> rack = column<int32_t>(rack_in, "rack");
  const In<int32_t> spine = column<int32_t>(spine_in, "spine");
  const py::ssize_t n = cpu.size();
  if (mem.size() != n || ngpu.size() != n || model.size() != n || rack.size() != n ||
      spine.size() != n) {
    throw std::invalid_argument("node columns must all have the same length");
  }
  std::vector<NodeSpec> specs(static_cast<size_t>(n));
  for (py::ssize_t i = 0; i < n; ++i) {
    specs[static_cast<size_t>(i)] = {cpu.at(i), mem.at(i), ngpu.at(i), model.at(i), rack.at(i),
                                     spine.at(i)};
  }
  return specs;
}

}  // namespace

TargetWorkload make_workload(const py::handle& cpu_in, const py::handle& num_gpu_in,
                             const py::handle& gpu_milli_in, const py::handle& models_in,
                             const py::handle& weight_in) {
  const In<int64_t> cpu = column<int64_t>(cpu_in, "workload cpu_milli");
  const In<int32_t> num_gpu = column<int32_t>(num_gpu_in, "workload num_gpu");
  const In<int32_t> gpu_milli = column<int32_t>(gpu_milli_in, "workload gpu_milli");
  const In<uint64_t> models = column<uint64_t>(models_in, "workload models");
  const In<double> weight = column<double>(weight_in, "workload weight");
  const py::ssize_t n = cpu.size();
  if (num_gpu.size() != n || gpu_milli.size() != n || models.size() != n || weight.size() != n) {
    throw std::invalid_argument("workload columns must all have the same length");
  }
  std::vector<TargetTask> tasks(static_cast<size_t>(n));
  for (py::ssize_t i = 0; i < n; ++i) {
    tasks[static_cast<size_t>(i)] = {cpu.at(i), num_gpu.at(i), gpu_milli.at(i), models.at(i),
                                     weight.at(i)};
  }
  return TargetWorkload(std::move(tasks));
}

void bind_cluster(py::module_& m) {
  py::class_<Status>(m, "Status")
      .def_property_readonly("ok", &Status::ok)
      .def_property_readonly("code", [](const Status& s) { return std::string(code_name(s.code)); })
      .def_property_readonly("plugin", [](const Status& s) { return std::string(s.plugin); })
      .def("__repr__", [](const Status& s) {
        return "Status(" + std::string(code_name(s.code)) +
               (s.plugin.empty() ? "" : ", " + std::string(s.plugin)) + ")";
      });

  m.def("code_names", [] {
    std::vector<std::string> names;
    for (int c = 0; c < kNumCodes; ++c) {
      names.emplace_back(code_name(static_cast<Code>(c)));
    }
    return names;
  });

  py::class_<ClusterState>(m, "ClusterState")
      .def(py::init([](const py::object& cpu, const py::object& mem, const py::object& ngpu,
                       const py::object& model, const py::object& rack, const py::object& spine) {
             const std::vector<NodeSpec> specs = node_specs(cpu, mem, ngpu, model, rack, spine);
             return ClusterState(specs);
           }),
           py::arg("cpu_milli"), py::arg("memory_mib"), py::arg("num_gpu"), py::arg("gpu_model"),
           py::arg("rack"), py::arg("spine"))
      .def_property_readonly("num_nodes", &ClusterState::num_nodes)
      .def_property_readonly("num_gpus", &ClusterState::num_gpus)
      .def_property_readonly("total_gpu_milli", &ClusterState::total_gpu_milli)
      .def_property_readonly("allocated_gpu_milli", &ClusterState::allocated_gpu_milli)
      .def_property_readonly("cpu_capacity", [](py::object self) {
        return readonly_view(self.cast<const ClusterState&>().cpu_capacity_array(), self);
      })
      .def_property_readonly("cpu_free", [](py::object self) {
        return readonly_view(self.cast<const ClusterState&>().cpu_free_array(), self);
      })
      .def_property_readonly("memory_capacity", [](py::object self) {
        return readonly_view(self.cast<const ClusterState&>().memory_capacity_array(), self);
      })
      .def_property_readonly("memory_free", [](py::object self) {
        return readonly_view(self.cast<const ClusterState&>().memory_free_array(), self);
      })
      .def_property_readonly("gpu_free", [](py::object self) {
        return readonly_view(self.cast<const ClusterState&>().gpu_free_array(), self);
      })
      .def_property_readonly("gpu_begin", [](py::object self) {
        return readonly_view(self.cast<const ClusterState&>().gpu_begin_array(), self);
      })
      .def_property_readonly("gpu_model", [](py::object self) {
        return readonly_view(self.cast<const ClusterState&>().gpu_model_array(), self);
      })
      .def_property_readonly("flags", [](py::object self) {
        return readonly_view(self.cast<const ClusterState&>().flags_array(), self);
      })
      .def_property_readonly("rack", [](py::object self) {
        return readonly_view(self.cast<const ClusterState&>().rack_array(), self);
      })
      .def_property_readonly("spine", [](py::object self) {
        return readonly_view(self.cast<const ClusterState&>().spine_array(), self);
      })
      .def("kind_count", &ClusterState::kind_count_at, py::arg("node"), py::arg("slot"))
      .def("kinds_present", &ClusterState::kinds_present_at, py::arg("node"))
      .def("set_flags", &ClusterState::set_flags, py::arg("node"), py::arg("flags"))
      .def("check_invariants", &ClusterState::check_invariants);

  m.def(
      "node_fragmentation",
      [](const py::object& cpu, const py::object& num_gpu, const py::object& gpu_milli,
         const py::object& models, const py::object& weight, int64_t cpu_free, int32_t model,
         const py::object& gpu_free) {
        const TargetWorkload w = make_workload(cpu, num_gpu, gpu_milli, models, weight);
        return node_fragmentation(w, cpu_free, model, span_of(column<int32_t>(gpu_free, "gpu_free")));
      },
      py::arg("cpu_milli"), py::arg("num_gpu"), py::arg("gpu_milli"), py::arg("models"),
      py::arg("weight"), py::arg("cpu_free"), py::arg("model"), py::arg("gpu_free"));
}

}  // namespace cplat::py_bind
