#include <cstdlib>
#include <cstring>

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

static Kernels make_vnni() {
    Kernels k = avx512_kernels;
    k.name = "avx512_vnni";
    k.gemv_q8 = avx512_vnni_gemv_q8;
    return k;
}

const Kernels& select() {
    static const Kernels vnni = make_vnni();
    const char* isa = std::getenv("NNCF_MOE3_ISA");
    int cap = 2;  // 2 avx512, 1 avx2, 0 scalar
    if (isa && *isa) {
        if (!std::strcmp(isa, "scalar")) cap = 0;
        else if (!std::strcmp(isa, "avx2")) cap = 1;
    }
    const char* aq = std::getenv("NNCF_MOE3_ACT_QUANT");
    const bool act_quant = !(aq && !std::strcmp(aq, "0"));
    if (cap >= 2 && act_quant && cpu_has_avx512_vnni()) return vnni;
    if (cap >= 2 && cpu_has_avx512()) return avx512_kernels;
    if (cap >= 1 && cpu_has_avx2()) return avx2_kernels;
    return scalar_kernels;
}

}  // namespace k3
}  // namespace nncf_moe3
