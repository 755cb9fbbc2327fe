#include "pybind.hpp"

PYBIND11_MODULE(_core, m) {
  m.doc() = "cplat native placement engine (internal; use the cplat package)";
  cplat::py_bind::bind_cluster(m);
  cplat::py_bind::bind_engine(m);
  cplat::py_bind::bind_queue(m);
  cplat::py_bind::bind_calendar(m);
  cplat::py_bind::bind_topology(m);  // after bind_engine: adds Engine methods
}
