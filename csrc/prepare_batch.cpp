// prepare_batch on CPU buffers: uint8 [N, H, W, C] -> crop (top, left) / horizontal flip -> float32 [N, C, s, s]
// through a 256-entry lookup table (built by the Python twin's own formula, so values match it bit for bit).
#include "common.h"

namespace bicycle {

void prepare_batch(const py::array& images, const py::array& top, const py::array& left, const py::array& flip,
                   int64_t size, const py::array& lut, const py::array& out, int num_threads) {
  const char* op = "prepare_batch";
  check_threads(num_threads, op);
  auto vi = view<uint8_t>(images, op, "images");
  auto vt = view<int64_t>(top, op, "top"), vl = view<int64_t>(left, op, "left");
  auto vf = view<bool>(flip, op, "flip");
  auto vlut = view<float>(lut, op, "lut");
  auto vo = view<float>(out, op, "out", true);
  if (vi.shape.size() != 4) {
    throw py::value_error(std::string(op) + ": argument 'images' must be [N, H, W, C], got shape " +
                          shape_str(vi.shape));
  }
  const int64_t N = vi.shape[0], H = vi.shape[1], W = vi.shape[2], C = vi.shape[3];
  if (size < 1) throw py::value_error(std::string(op) + ": argument 'size' must be >= 1, got " + std::to_string(size));
  const std::vector<int64_t> vec{N}, lut_shape{256}, out_shape{N, C, size, size};
  if (vt.shape != vec) throw py::value_error(std::string(op) + ": argument 'top' must be [N] = " + shape_str(vec) + ", got " + shape_str(vt.shape));
  if (vl.shape != vec) throw py::value_error(std::string(op) + ": argument 'left' must be [N] = " + shape_str(vec) + ", got " + shape_str(vl.shape));
  if (vf.shape != vec) throw py::value_error(std::string(op) + ": argument 'flip' must be [N] = " + shape_str(vec) + ", got " + shape_str(vf.shape));
  if (vlut.shape != lut_shape) throw py::value_error(std::string(op) + ": argument 'lut' must be [256]");
  if (vo.shape != out_shape) {
    throw py::value_error(std::string(op) + ": argument 'out' must be [N, C, size, size] = " + shape_str(out_shape) +
                          ", got " + shape_str(vo.shape));
  }
  for (int64_t n = 0; n < N; ++n) {
    const int64_t t = vt.data[n], l = vl.data[n];
    if (t < 0 || t + size > H) {
      throw py::value_error(std::string(op) + ": argument 'top' [" + std::to_string(n) + "] = " + std::to_string(t) +
                            " puts the " + std::to_string(size) + "-pixel crop outside the image height " +
                            std::to_string(H));
    }
    if (l < 0 || l + size > W) {
      throw py::value_error(std::string(op) + ": argument 'left' [" + std::to_string(n) + "] = " + std::to_string(l) +
                            " puts the " + std::to_string(size) + "-pixel crop outside the image width " +
                            std::to_string(W));
    }
  }
  const uint8_t* img = vi.data;
  const float* tab = vlut.data;
  float* dst = vo.data;
  const int64_t* tops = vt.data;
  const int64_t* lefts = vl.data;
  const bool* flips = vf.data;
  py::gil_scoped_release release;
  // One task per output row (n, y): reads one contiguous crop row, writes one row in each of the C planes.
  parallel_for(N * size, num_threads, [&](int64_t task) {
    const int64_t n = task / size, y = task % size;
    const uint8_t* row = img + ((n * H + tops[n] + y) * W + lefts[n]) * C;
    for (int64_t c = 0; c < C; ++c) {
      float* o = dst + ((n * C + c) * size + y) * size;
      if (flips[n]) {
        for (int64_t x = 0; x < size; ++x) o[x] = tab[row[(size - 1 - x) * C + c]];
      } else {
        for (int64_t x = 0; x < size; ++x) o[x] = tab[row[x * C + c]];
      }
    }
  });
}

void bind_prepare_batch(py::module_& m) {
  m.def("prepare_batch", &prepare_batch, py::arg("images"), py::arg("top"), py::arg("left"), py::arg("flip"),
        py::arg("size"), py::arg("lut"), py::arg("out"), py::arg("num_threads") = 1,
        "uint8 images [N, H, W, C], int64 top/left [N], bool flip [N] -> out float32 [N, C, size, size], "
        "out = lut[pixel] (lut: float32 [256]).");
}

}  // namespace bicycle
