// bicycle._C: CPU implementations of the fused ops and the batch-preparation op.
// Operates on raw contiguous buffers handed over from Python, so it does not link against libtorch.
#include <pybind11/pybind11.h>

namespace py = pybind11;

PYBIND11_MODULE(_C, m) {
  m.doc() = "bicycle C++ CPU extension";
  m.attr("ABI_VERSION") = 1;
}
