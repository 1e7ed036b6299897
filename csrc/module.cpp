// bicycle._C: CPU implementations of the fused ops and the batch-preparation op.
// Operates on raw contiguous buffers handed over from Python, so it does not link against libtorch.
#include "common.h"

namespace bicycle {
void bind_reparam_kl(py::module_& m);
void bind_lsgan(py::module_& m);
void bind_prepare_batch(py::module_& m);
}  // namespace bicycle

PYBIND11_MODULE(_C, m) {
  m.doc() = "bicycle C++ CPU extension";
  m.attr("ABI_VERSION") = 1;
#ifdef _OPENMP
  m.attr("PARALLEL") = "openmp";
#else
  m.attr("PARALLEL") = "std::thread";
#endif
  bicycle::bind_reparam_kl(m);
  bicycle::bind_lsgan(m);
  bicycle::bind_prepare_batch(m);
}
