#include <cstdio>
#include <cstdlib>
#include <cstring>

#if defined(__linux__)
#include <cpuid.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

#include "k3_kernels.hpp"

namespace nncf_moe3 {
namespace k3 {

bool cpu_has_avx512() {
    static const bool v = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                          __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
                          __builtin_cpu_supports("f16c") && __builtin_cpu_supports("fma");
    return v;
}

bool cpu_has_avx2() {
    static const bool v = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                          __builtin_cpu_supports("f16c");
    return v;
}

bool cpu_has_avx512_vnni() {
    static const bool v = cpu_has_avx512() && __builtin_cpu_supports("avx512vnni") &&
                          __builtin_cpu_supports("avx512vbmi");
    return v;
}

bool cpu_has_avx2_vnni() {
#ifdef NNCF_MOE3_WITH_AVXVNNI
    static const bool v = cpu_has_avx2() && __builtin_cpu_supports("avxvnni");
    return v;
#else
    return false;
#endif
}

bool cpu_has_amx() {
    static const bool v = [] {
#if defined(__linux__) && defined(SYS_arch_prctl)
        unsigned a, b, c, d;
        if (!cpu_has_avx512_vnni() || !__get_cpuid_count(7, 0, &a, &b, &c, &d)) return false;
        if (!((d >> 24) & 1) || !((d >> 25) & 1)) return false;  // AMX-TILE, AMX-INT8
        const long ARCH_GET_XCOMP_PERM = 0x1022, ARCH_REQ_XCOMP_PERM = 0x1023, XFEATURE_XTILEDATA = 18;
        if (syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) != 0) return false;
        unsigned long perm = 0;
        if (syscall(SYS_arch_prctl, ARCH_GET_XCOMP_PERM, &perm) != 0) return false;
        return ((perm >> XFEATURE_XTILEDATA) & 1) != 0;
#else
        return false;
#endif
    }();
    return v;
}

static Kernels make_vnni() {
    Kernels k = avx512_kernels;
    k.name = "avx512_vnni";
    k.quantize = avx512_vnni_quantize;
    k.gemv_q8 = avx512_vnni_gemv_q8;
    k.gemv2_q8 = avx512_vnni_gemv2_q8;
    k.gemm_q8 = avx512_vnni_gemm_q8;
    return k;
}

static Kernels make_avx2_q8(bool vnni) {
    Kernels k = avx2_kernels;
    k.name = "avx2_int8";
    k.quantize = avx2_q8_quantize;
    k.gemv_q8 = avx2_int8_gemv_q8;
    k.gemv2_q8 = avx2_int8_gemv2_q8;
    k.gemm_q8 = avx2_int8_gemm_q8;
#ifdef NNCF_MOE3_WITH_AVXVNNI
    if (vnni) {
        k.name = "avx2_vnni";
        k.gemv_q8 = avx2_vnni_gemv_q8;
        k.gemv2_q8 = avx2_vnni_gemv2_q8;
        k.gemm_q8 = avx2_vnni_gemm_q8;
    }
#endif
    return k;
}

static Kernels make_amx(bool emulate) {
    Kernels k = make_vnni();
    k.name = emulate ? "amx_emulate" : "amx";
    k.gemm_q8 = emulate ? avx512_amx_emu_gemm_q8 : avx512_amx_gemm_q8;
    return k;
}

const Kernels& select() {
    static const Kernels vnni = make_vnni();
    const char* isa = std::getenv("NNCF_MOE3_ISA");
    int cap = 2;  // 2 avx512, 1 avx2, 0 scalar
    bool avx2_int8 = false;  // "avx2_int8": the plain-AVX2 int8 kernels even where AVX-VNNI is there
    if (isa && *isa) {
        if (!std::strcmp(isa, "scalar")) cap = 0;
        else if (!std::strcmp(isa, "avx2") || !std::strcmp(isa, "avx2_vnni")) cap = 1;
        else if (!std::strcmp(isa, "avx2_int8")) cap = 1, avx2_int8 = true;
        else if (std::strcmp(isa, "avx512") && std::strcmp(isa, "avx512_vnni") && std::strcmp(isa, "amx") &&
                 std::strcmp(isa, "amx_emulate")) {
            static bool warned = false;  // once per process (a benign race at worst prints it twice)
            if (!warned) {
                warned = true;
                std::fprintf(stderr,
                             "nncf_moe3: ignoring unknown NNCF_MOE3_ISA=%s (one of avx512, avx512_vnni, avx2, "
                             "avx2_vnni, avx2_int8, scalar, amx, amx_emulate); using the best kernels of this CPU\n",
                             isa);
            }
        }
    }
    const char* aq = std::getenv("NNCF_MOE3_ACT_QUANT");
    const bool act_quant = !(aq && !std::strcmp(aq, "0"));
    if (cap >= 2 && act_quant && isa && !std::strcmp(isa, "amx") && cpu_has_amx()) {
        static const Kernels amx = make_amx(false);
        return amx;
    }
    if (cap >= 2 && act_quant && isa && !std::strcmp(isa, "amx_emulate") && cpu_has_avx512_vnni()) {
        static const Kernels emu = make_amx(true);
        return emu;
    }
    if (cap >= 2 && act_quant && cpu_has_avx512_vnni()) return vnni;
    if (cap >= 2 && cpu_has_avx512()) return avx512_kernels;
    if (cap >= 1 && act_quant && !avx2_int8 && cpu_has_avx2_vnni()) {
        static const Kernels avx2_vnni = make_avx2_q8(true);
        return avx2_vnni;
    }
    if (cap >= 1 && act_quant && cpu_has_avx2()) {
        static const Kernels avx2_q8 = make_avx2_q8(false);
        return avx2_q8;
    }
    if (cap >= 1 && cpu_has_avx2()) return avx2_kernels;
    return scalar_kernels;
}

}  // namespace k3
}  // namespace nncf_moe3
