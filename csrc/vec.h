// Loops the compiler can auto-vectorise with portable flags (no -march=native, no fast-math):
// an exp written in plain arithmetic, and sums over fixed lanes (each lane adds in order, so no
// reassociation is needed).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

// Hot loops are compiled twice, for AVX2 and for the baseline ISA, and picked at load time (ifunc).
// Both clones do the same IEEE operations in the same order (no FMA contraction, fixed sum lanes), so
// results are bit-identical whichever one runs. This is not -march=native: the .so runs anywhere.
#if defined(__x86_64__) && defined(__linux__) && (defined(__GNUC__) || defined(__clang__))
#define BICYCLE_SIMD_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define BICYCLE_SIMD_CLONES
#endif

namespace bicycle {

// exp for float: x = n ln2 + r with |r| <= ln2 / 2 (n rounded through the 1.5 * 2^23 shifter, ln2 split
// in two for an exact product), exp(r) by the Cephes degree-7 polynomial (about 1 ulp), times 2^n built
// in the exponent bits. Overflow gives inf, NaN stays NaN, underflow goes through the denormals to 0.
inline float exp_vec(float x) {
  // Clamping to [-104, 89] makes overflow (inf) and underflow (0) fall out of the final product.
  const float hi = 89.0f, lo = -104.0f;
  float xc = x > hi ? hi : x;
  xc = xc < lo ? lo : xc;
  const float shifter = 12582912.0f;  // 1.5 * 2^23
  const float t = xc * 1.44269504088896341f + shifter;
  const float n = t - shifter;
  float r = xc - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float y = p * r * r + r + 1.0f;
  int32_t tb, sb;
  std::memcpy(&tb, &t, 4);
  std::memcpy(&sb, &shifter, 4);
  // 2^n as 2^n1 * 2^n2, both halves normal floats for n in [-150, 128].
  const int32_t ni = tb - sb, n1 = ni >> 1, n2 = ni - n1;
  const uint32_t b1 = static_cast<uint32_t>(n1 + 127) << 23, b2 = static_cast<uint32_t>(n2 + 127) << 23;
  float s1, s2;
  std::memcpy(&s1, &b1, 4);
  std::memcpy(&s2, &b2, 4);
  return y * s1 * s2;
}

inline double exp_vec(double x) { return std::exp(x); }

// Sum of m values (m a multiple of 8) over 8 lanes, each summed in order.
template <class T>
inline double lane_sum(const T* v, int64_t m) {
  T acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  for (int64_t i = 0; i < m; i += 8) {
    for (int j = 0; j < 8; ++j) acc[j] += v[i + j];
  }
  double s = 0.0;
  for (int j = 0; j < 8; ++j) s += static_cast<double>(acc[j]);
  return s;
}

// Rows of this many elements are staged on the stack, summed by lane_sum and added up in double.
constexpr int64_t kRow = 256;

}  // namespace bicycle
