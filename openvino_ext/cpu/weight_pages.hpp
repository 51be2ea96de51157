// Large k3 weight tensors read through 2 MB pages (Linux transparent huge pages) instead of 4 KB ones.
//
// A decode step streams ~190 MB of weights; with 4 KB pages every 4 KB is a TLB miss and a page walk. The CPU plugin
// hands extension ops pointers into the IR's mmapped .bin (4 KB file pages) or, with ENABLE_MMAP=False, into heap
// memory (4 KB anonymous pages unless THP is "always"). Measured on the MoE-stack decode (Zen 4 VM, one process,
// alternating rounds): mmapped 10.18 ms, heap 9.63 ms, heap collapsed into 2 MB pages 9.18 ms per token.
//
// HugeWeights::view(src, bytes) returns the address the kernels should read the tensor from:
//   * anonymous (heap) memory: the same address, after madvise(MADV_HUGEPAGE) + MADV_COLLAPSE of the 2 MB-aligned
//     interior (in place, contents unchanged);
//   * a read-only file mapping (the mmapped IR): a copy in 2 MB-page anonymous memory; the source pages are then
//     dropped from this process's mapping with MADV_DONTNEED (a read-only file mapping re-reads them from the file if
//     anything touches them again), so resident memory does not double;
//   * anything else, tensors below 2 MB, non-Linux systems, kernels without MADV_COLLAPSE, or env
//     NNCF_MOE3_HUGEPAGES=0: the source address, untouched.
// Copies are shared process-wide by source address and freed when the last op holding them is destroyed. The first
// call per tensor pays the copy / collapse (~0.1-0.4 s for a 0.3 GB model); later calls are a locked map lookup.
// A pointer inside a tensor this op already copied (a section of packed operands, placed whole) is returned as is.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <vector>

namespace nncf_moe3 {

class HugeWeights {
public:
    const uint8_t* view(const uint8_t* src, size_t bytes) const;
    struct Region;  // one copied or collapsed tensor (weight_pages.cpp)

private:
    mutable std::mutex m_mu;
    mutable std::vector<std::pair<const uint8_t*, std::shared_ptr<Region>>> m_held;  // this op's tensors
};

}  // namespace nncf_moe3
