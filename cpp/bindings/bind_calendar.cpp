// Calendar: the backfill availability profile, bound for the Python reference twin's tests.
// Conversion only: every method forwards to cplat::Calendar.
#include <array>
#include <cstdint>
#include <vector>

#include "cplat/calendar.hpp"
#include "pybind.hpp"

namespace cplat::py_bind {

namespace {

std::vector<int64_t> to_list(const Calendar::Vec& v) { return {v.begin(), v.end()}; }

}  // namespace

void bind_calendar(py::module_& m) {
  py::class_<Calendar>(m, "Calendar")
      .def(py::init<int64_t, const Calendar::Vec&, int64_t, int64_t>(), py::arg("now"),
           py::arg("free"), py::arg("resolution") = 1, py::arg("horizon") = 0)
      .def("add_release", &Calendar::add_release, py::arg("t"), py::arg("amount"))
      .def("earliest_start", &Calendar::earliest_start, py::arg("need"), py::arg("duration"),
           py::arg("not_before"))
      .def("fits", &Calendar::fits, py::arg("start"), py::arg("end"), py::arg("need"))
      .def("reserve", &Calendar::reserve, py::arg("start"), py::arg("end"), py::arg("amount"))
      .def("free_at", [](const Calendar& c, int64_t t) { return to_list(c.free_at(t)); },
           py::arg("t"))
      .def_property_readonly("now", &Calendar::now)
      .def_property_readonly("steps", &Calendar::steps);
}

}  // namespace cplat::py_bind
