// Small utilities for the SIMT emulation tests: a check macro, host half/bfloat16 types (no torch),
// a deterministic RNG and a size switch for sanitizer builds.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <type_traits>

namespace emu {

inline int g_failures = 0;
inline int g_checks = 0;

#define EMU_CHECK(cond, ...)                                                  \
  do {                                                                        \
    ++emu::g_checks;                                                          \
    if (!(cond)) {                                                            \
      if (++emu::g_failures <= 20) {                                          \
        std::fprintf(stderr, "CHECK FAILED %s:%d: %s: ", __FILE__, __LINE__, #cond); \
        std::fprintf(stderr, __VA_ARGS__);                                    \
        std::fprintf(stderr, "\n");                                           \
      }                                                                       \
    }                                                                         \
  } while (0)

inline int finish(const char* name) {
  std::printf("%s: %d checks, %d failures\n", name, g_checks, g_failures);
  return g_failures == 0 ? 0 : 1;
}

// bfloat16 with round-to-nearest-even, like c10::BFloat16.
struct BF16 {
  uint16_t bits = 0;
  BF16() = default;
  BF16(float f) {  // NOLINT: implicit like c10::BFloat16
    uint32_t u;
    std::memcpy(&u, &f, 4);
    if (std::isnan(f)) {
      bits = 0x7fc0;
    } else {
      u += 0x7fffu + ((u >> 16) & 1u);
      bits = static_cast<uint16_t>(u >> 16);
    }
  }
  operator float() const {
    const uint32_t u = static_cast<uint32_t>(bits) << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
  }
};

// IEEE half through the compiler's _Float16 (GCC >= 12 on x86-64).
struct Half {
  _Float16 h = 0;
  Half() = default;
  Half(float f) : h(static_cast<_Float16>(f)) {}  // NOLINT
  operator float() const { return static_cast<float>(h); }
};

template <class T>
constexpr const char* type_name() {
  if constexpr (std::is_same_v<T, float>) return "float";
  if constexpr (std::is_same_v<T, double>) return "double";
  if constexpr (std::is_same_v<T, Half>) return "half";
  return "bfloat16";
}

// Relative tolerance of one stored value of T (its rounding) plus the fp32 arithmetic.
template <class T>
constexpr double tolerance() {
  if constexpr (std::is_same_v<T, double>) return 1e-12;
  if constexpr (std::is_same_v<T, float>) return 2e-6;
  if constexpr (std::is_same_v<T, Half>) return 1e-3;
  return 8e-3;
}

struct Rng {
  uint64_t s;
  explicit Rng(uint64_t seed) : s(seed * 6364136223846793005ull + 1442695040888963407ull) {}
  double uniform() {  // [0, 1)
    s = s * 6364136223846793005ull + 1442695040888963407ull;
    return static_cast<double>(s >> 11) * (1.0 / 9007199254740992.0);
  }
  double uniform(double lo, double hi) { return lo + (hi - lo) * uniform(); }
};

inline bool close(double got, double want, double rtol, double atol) {
  if (std::isnan(want)) return std::isnan(got);
  return std::fabs(got - want) <= atol + rtol * std::fabs(want);
}

// An element type T (double, float or a half type) from / to double; half types go through float.
template <class T>
T to_t(double v) {
  if constexpr (std::is_same_v<T, double>) {
    return v;
  } else {
    return T(static_cast<float>(v));
  }
}

template <class T>
double as_double(T v) {
  return static_cast<double>(static_cast<std::conditional_t<std::is_same_v<T, double>, double, float>>(v));
}

// got (a T) against the exact value: a value beyond T's range must come out as inf of the same
// sign (e.g. a half 'sum' over large losses), anything else within the tolerances.
template <class T>
bool matches(double got, double want, double rtol, double atol) {
  if constexpr (!std::is_same_v<T, double>) {
    const double rounded = as_double(to_t<T>(want));
    if (std::isinf(rounded)) return got == rounded;
  }
  return close(got, want, rtol, atol);
}

// "small" (sanitizer builds: fewer, smaller cases) or "full".
inline bool small_mode(int argc, char** argv) {
  return argc > 1 && std::string(argv[1]) == "small";
}

}  // namespace emu
