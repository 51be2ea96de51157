// Standalone microbenchmark behind the k3 v2 layout decision (kernel_design_3bit.md §3): one core, a GEMV row loop
// (K = 2048, group 128, one token, int8 activations, vpdpbusd) over N rows with the weight unpack of
//   "old"  k3 v1: 12-byte blocks, vpermb + 2 vpmultishiftqb + vpternlogd (+ vpand)
//   "new"  k3 v2: 24-byte super-blocks, vbroadcasti32x4 + vpsrlvd + vpand + kmovq + vpaddb{k}   (the shipped one)
//   "gf"   k3 v2 with vgf2p8affineqb instead of vpsrlvd + vpand (needs GFNI)
//   "v2"/"v3"/"v3gf": a rejected alternative that keeps self-contained 12-byte blocks (two 8-byte broadcasts)
// Build and run (AVX-512 VBMI/VNNI/GFNI CPU):
//   g++ -O2 -march=icelake-server -o /tmp/unpack_bench openvino_ext/cpu/tools/unpack_bench.cpp
//   /tmp/unpack_bench 1024     # 0.75 MB of codes: L2-resident
//   /tmp/unpack_bench 65536    # 48 MB: from DRAM
// Prints weights/ns and GB/s of 3-bit codes per variant ("ch2" rows: two FMA chains, slower here).
// realistic GEMV row loop: K=2048, g128 (bpg 4), M=1, rows streamed, per-group f[g] factor
#include <immintrin.h>
#include <chrono>
#include <cstdio>
#include <cstdint>
#include <cstring>
#include <vector>
#define DP(acc, w, x) __asm__ volatile("vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(w), "v"(x))
static __m512i arrange, ctl_lo, ctl_hi, three, seven, four, shv;
static inline __m512i old_unpack(const uint8_t* p) {
  __m512i raw = _mm512_castsi256_si512(_mm256_maskz_loadu_epi8(0xFFFFFFu, p));
  __m512i v = _mm512_permutexvar_epi8(arrange, raw);
  __m512i q = _mm512_ternarylogic_epi32(_mm512_multishift_epi64_epi8(ctl_lo, v), _mm512_multishift_epi64_epi8(ctl_hi, v), three, 0xE4);
  return _mm512_and_si512(q, seven);
}
static __m512i gfm;
static inline __m512i gf_unpack(const uint8_t* p) {
  __m512i l = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i*)p));
  __mmask64 k; memcpy(&k, p + 16, 8);
  __m512i q = _mm512_gf2p8affine_epi64_epi8(l, gfm, 0);
  return _mm512_mask_add_epi8(q, k, q, four);
}
static __m512i shq;
static inline __m512i v2_unpack(const uint8_t* p) {  // two 12-byte blocks at p, p+12
  uint64_t a, b; uint32_t ha, hb; memcpy(&a, p, 8); memcpy(&ha, p + 8, 4); memcpy(&b, p + 12, 8); memcpy(&hb, p + 20, 4);
  __m512i l = _mm512_mask_broadcastq_epi64(_mm512_set1_epi64(a), 0xF0, _mm_cvtsi64_si128(b));
  __mmask64 k = _mm512_kunpackd((__mmask64)hb, (__mmask64)ha);
  __m512i q = _mm512_and_si512(_mm512_srlv_epi64(l, shq), three);
  return _mm512_mask_add_epi8(q, k, q, four);
}
static __m512i gfq;
template <bool GF>
static inline __m512i v3_unpack(const uint8_t* p) {  // two 12-byte blocks at p, p+12, memory-operand broadcasts
  __m512i l = _mm512_mask_broadcastq_epi64(_mm512_broadcastq_epi64(_mm_loadl_epi64((const __m128i*)p)), 0xF0,
                                           _mm_loadl_epi64((const __m128i*)(p + 12)));
  __mmask64 k = _mm512_kunpackd(_cvtu32_mask32(*(const uint32_t*)(p + 20)), _cvtu32_mask32(*(const uint32_t*)(p + 8)));
  __m512i q = GF ? _mm512_gf2p8affine_epi64_epi8(l, gfq, 0) : _mm512_and_si512(_mm512_srlv_epi64(l, shq), three);
  return _mm512_mask_add_epi8(q, k, q, four);
}
static inline __m512i new_unpack(const uint8_t* p) {
  __m512i l = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i*)p));
  __mmask64 k; memcpy(&k, p + 16, 8);
  __m512i q = _mm512_and_si512(_mm512_srlv_epi32(l, shv), three);
  return _mm512_mask_add_epi8(q, k, q, four);
}
template <int NEW, bool PF, int CH>
float rows(const uint8_t* w, const int8_t* x, const float* f, int N, int K) {
  const int G = K / 128, rb = K / 32 * 12;
  float out = 0;
  for (int n = 0; n < N; ++n) {
    const uint8_t* p = w + (size_t)n * rb;
    __m512 t[CH]; for (int c = 0; c < CH; ++c) t[c] = _mm512_setzero_ps();
    for (int g = 0; g < G; ++g) {
      __m512i a0 = _mm512_setzero_si512(), c0 = a0;
      const uint8_t* q = p + g * 48;
      if (PF) _mm_prefetch((const char*)q + 3072, _MM_HINT_T0);
      __m512i lv = NEW == 5 ? v3_unpack<true>(q) : NEW == 4 ? v3_unpack<false>(q) : NEW == 3 ? v2_unpack(q) : NEW == 2 ? gf_unpack(q) : NEW ? new_unpack(q) : old_unpack(q), lw = NEW == 5 ? v3_unpack<true>(q + 24) : NEW == 4 ? v3_unpack<false>(q + 24) : NEW == 3 ? v2_unpack(q + 24) : NEW == 2 ? gf_unpack(q + 24) : NEW ? new_unpack(q + 24) : old_unpack(q + 24);
      DP(a0, lv, _mm512_loadu_si512(x + g * 128)); DP(c0, lw, _mm512_loadu_si512(x + g * 128 + 64));
      a0 = _mm512_add_epi32(a0, c0);
      t[g % CH] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(a0), _mm512_set1_ps(f[g]), t[g % CH]);
    }
    __m512 s = t[0]; for (int c = 1; c < CH; ++c) s = _mm512_add_ps(s, t[c]);
    out += _mm512_reduce_add_ps(s);
  }
  return out;
}
int main(int argc, char** argv) {
  const int K = 2048, N = argc > 1 ? atoi(argv[1]) : 1024;
  std::vector<uint8_t> w((size_t)N * K / 32 * 12 + 4096); std::vector<int8_t> x(K, 3); std::vector<float> f(K / 128, 0.5f);
  for (size_t i = 0; i < w.size(); ++i) w[i] = (uint8_t)(i * 37 + 11);
  alignas(64) uint8_t arr[64], clo[64], chi[64];
  for (int i = 0; i < 64; ++i) { int m = i / 8, j = i % 8, base = 12 * (m / 4), c = m % 4;
    arr[i] = (uint8_t)(j == 0 ? base + 2 * c : j == 1 ? base + 2 * c + 1 : base + 8 + c); clo[i] = 2 * j; chi[i] = 14 + j; }
  arrange = _mm512_load_si512(arr); ctl_lo = _mm512_load_si512(clo); ctl_hi = _mm512_load_si512(chi);
  three = _mm512_set1_epi8(3); seven = _mm512_set1_epi8(7); four = _mm512_set1_epi8(4);
  shq = _mm512_set_epi64(6,4,2,0,6,4,2,0);
  { alignas(64) uint64_t m[8]; for (int q = 0; q < 8; ++q) { int j = q % 4; m[q] = ((uint64_t)(1u << (2*j)) << 56) | ((uint64_t)(1u << (2*j+1)) << 48); } gfq = _mm512_load_si512(m); }
  shv = _mm512_set_epi32(6,6,6,6,4,4,4,4,2,2,2,2,0,0,0,0);
  { alignas(64) uint64_t m[8]; for (int q = 0; q < 8; ++q) { int j = q / 2; m[q] = ((uint64_t)(1u << (2*j)) << 56) | ((uint64_t)(1u << (2*j+1)) << 48); } gfm = _mm512_load_si512(m); }
  int reps = 4e9 / ((double)N * K);
  auto run = [&](const char* nm, auto fn) {
    fn(); auto t0 = std::chrono::steady_clock::now(); float s = 0;
    for (int r = 0; r < reps; ++r) s += fn();
    double sec = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    printf("%-22s N=%d: %.1f w/ns, %.1f GB/s (sink %g)\n", nm, N, (double)N * K * reps / sec / 1e9, (double)N * K * 0.375 * reps / sec / 1e9, s);
  };
  run("old pf ch1", [&] { return rows<false, true, 1>(w.data(), x.data(), f.data(), N, K); });
  run("old nopf ch1", [&] { return rows<false, false, 1>(w.data(), x.data(), f.data(), N, K); });
  run("old pf ch2", [&] { return rows<false, true, 2>(w.data(), x.data(), f.data(), N, K); });
  run("new pf ch1", [&] { return rows<true, true, 1>(w.data(), x.data(), f.data(), N, K); });
  run("gf pf ch1", [&] { return rows<2, true, 1>(w.data(), x.data(), f.data(), N, K); });
  run("v2 pf ch1", [&] { return rows<3, true, 1>(w.data(), x.data(), f.data(), N, K); });
  run("v3 pf ch1", [&] { return rows<4, true, 1>(w.data(), x.data(), f.data(), N, K); });
  run("v3gf pf ch1", [&] { return rows<5, true, 1>(w.data(), x.data(), f.data(), N, K); });
  run("new pf ch2", [&] { return rows<true, true, 2>(w.data(), x.data(), f.data(), N, K); });
  run("new nopf ch2", [&] { return rows<true, false, 2>(w.data(), x.data(), f.data(), N, K); });
}
