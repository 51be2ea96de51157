#include "weight_pages.hpp"

#include "kernels/k3_runtime.hpp"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <atomic>
#include <map>

#ifdef __linux__
#include <sys/mman.h>
#include <unistd.h>
#ifndef MADV_COLLAPSE
#define MADV_COLLAPSE 25  // Linux 6.1+; older kernels return EINVAL and the pages stay 4 KB
#endif
#endif

namespace nncf_moe3 {

struct HugeWeights::Region {
    const uint8_t* use = nullptr;  // where the kernels read the tensor
    size_t bytes = 0;              // bytes of the source the region was made for (a copy holds exactly these)
    void* mem = nullptr;           // our copy (file-mapped source), or nullptr
    size_t mem_bytes = 0;
    ~Region() {
#ifdef __linux__
        if (mem) munmap(mem, mem_bytes);
#endif
    }
};

namespace {

constexpr size_t HUGE_PAGE = size_t(2) << 20;
constexpr size_t MIN_BYTES = size_t(2) << 20;

bool enabled() {
    static const bool on = [] {
        const char* e = std::getenv("NNCF_MOE3_HUGEPAGES");
        return !(e && e[0] == '0');
    }();
    return on;
}

// tensors copied (file-mapped source) / collapsed in place (heap) so far, and their bytes (nncf_moe3_weight_pages)
std::atomic<int64_t> g_stats[4];

inline uintptr_t align_up(uintptr_t v, size_t a) { return (v + a - 1) / a * a; }
inline uintptr_t align_down(uintptr_t v, size_t a) { return v / a * a; }

#ifdef __linux__
enum class Kind { anonymous, file_read_only, other };

// The mapping that holds [p, p + bytes), from /proc/self/maps.
Kind classify(const uint8_t* p, size_t bytes) {
    FILE* f = std::fopen("/proc/self/maps", "r");
    if (!f) return Kind::other;
    const uintptr_t a = reinterpret_cast<uintptr_t>(p), e = a + bytes;
    Kind kind = Kind::other;
    char line[4096];
    while (std::fgets(line, sizeof line, f)) {
        unsigned long lo = 0, hi = 0, off = 0, inode = 0;
        unsigned dev_major = 0, dev_minor = 0;
        char perms[8] = {0};
        int path_at = 0;
        if (std::sscanf(line, "%lx-%lx %7s %lx %x:%x %lu %n", &lo, &hi, perms, &off, &dev_major, &dev_minor, &inode,
                        &path_at) < 7)
            continue;
        if (a < lo || a >= hi) continue;
        const char* path = line + path_at;
        const bool unnamed = path[0] == '\0' || path[0] == '\n';
        if (inode == 0 && (unnamed || std::strncmp(path, "[heap]", 6) == 0))
            kind = Kind::anonymous;  // may continue into the next anonymous mapping: madvise copes with that
        else if (inode != 0 && perms[1] != 'w' && e <= hi)
            kind = Kind::file_read_only;  // the mmapped IR .bin: the whole tensor inside one read-only mapping
        break;
    }
    std::fclose(f);
    return kind;
}

std::shared_ptr<HugeWeights::Region> make_region(const uint8_t* src, size_t bytes) {
    auto r = std::make_shared<HugeWeights::Region>();
    r->use = src;
    r->bytes = bytes;
    if (!enabled() || bytes < MIN_BYTES) return r;
    const Kind kind = classify(src, bytes);
    if (kind == Kind::anonymous) {  // in place: the contents do not change, only the page size
        const uintptr_t a = align_up(reinterpret_cast<uintptr_t>(src), HUGE_PAGE),
                        e = align_down(reinterpret_cast<uintptr_t>(src) + bytes, HUGE_PAGE);
        if (e > a) {
            madvise(reinterpret_cast<void*>(a), e - a, MADV_HUGEPAGE);
            if (madvise(reinterpret_cast<void*>(a), e - a, MADV_COLLAPSE) == 0) {  // failure: 4 KB pages, same data
                g_stats[2] += 1;
                g_stats[3] += (int64_t)(e - a);
            }
        }
    } else if (kind == Kind::file_read_only) {
        // 2 MB-aligned start, length rounded to 4 KB only: the whole 2 MB pieces get huge pages, the tail small ones
        const size_t page = (size_t)sysconf(_SC_PAGESIZE);
        const size_t len = align_up(bytes, page);
        void* m = mmap(nullptr, len + HUGE_PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (m == MAP_FAILED) return r;
        const uintptr_t raw = reinterpret_cast<uintptr_t>(m), base = align_up(raw, HUGE_PAGE);
        if (base > raw) munmap(m, base - raw);  // trim to a 2 MB-aligned [base, base + len)
        if (raw + len + HUGE_PAGE > base + len) munmap(reinterpret_cast<void*>(base + len), raw + len + HUGE_PAGE - base - len);
        void* dst = reinterpret_cast<void*>(base);
        madvise(dst, len, MADV_HUGEPAGE);  // before the first touch: the copy faults in 2 MB pages where possible
        // 2 MB pieces over the threads: most of the cost is the kernel zeroing fresh huge pages on first touch (and,
        // on a VM, the host backing them), which runs on whichever thread faults
        const int64_t pieces = (int64_t)((bytes + HUGE_PAGE - 1) / HUGE_PAGE);
        k3::parallel_for(pieces, [&](int64_t i) {
            const size_t o = (size_t)i * HUGE_PAGE;
            std::memcpy(static_cast<uint8_t*>(dst) + o, src + o, std::min(HUGE_PAGE, bytes - o));
        });
        mprotect(dst, len, PROT_READ);
        r->mem = dst;
        r->mem_bytes = len;
        r->use = static_cast<const uint8_t*>(dst);
        // drop the source's whole 4 KB pages from this process (a read-only file mapping re-reads them from the file
        // if touched again), so resident memory holds one copy
        const uintptr_t pa = align_up(reinterpret_cast<uintptr_t>(src), page),
                        pe = align_down(reinterpret_cast<uintptr_t>(src) + bytes, page);
        if (pe > pa) madvise(reinterpret_cast<void*>(pa), pe - pa, MADV_DONTNEED);
        g_stats[0] += 1;
        g_stats[1] += (int64_t)bytes;
    }
    return r;
}
#else
std::shared_ptr<HugeWeights::Region> make_region(const uint8_t* src, size_t bytes) {
    auto r = std::make_shared<HugeWeights::Region>();
    r->use = src;
    r->bytes = bytes;
    return r;
}
#endif

std::mutex g_mu;
std::map<const uint8_t*, std::weak_ptr<HugeWeights::Region>> g_regions;  // shared by every op reading a tensor

}  // namespace

const uint8_t* HugeWeights::view(const uint8_t* src, size_t bytes) const {
    std::lock_guard<std::mutex> lock(m_mu);
    // a region made for fewer bytes than asked (never for a Constant's one tensor) must not be read past its copy
    const auto use = [&](const Region& r) { return bytes <= r.bytes ? r.use : src; };
    for (const auto& h : m_held) {
        if (h.first == src) return use(*h.second);
        // a section of a tensor this op already placed (packed operands: the blob was placed whole)
        const Region& r = *h.second;
        if (r.use != h.first && src >= r.use && src + bytes <= r.use + r.bytes) return src;
    }
    std::shared_ptr<Region> r;
    {
        std::lock_guard<std::mutex> glock(g_mu);
        auto& slot = g_regions[src];
        r = slot.lock();
        if (!r) {
            r = make_region(src, bytes);
            slot = r;
        }
        for (auto it = g_regions.begin(); it != g_regions.end();)  // forget regions whose ops are gone
            it = it->second.expired() ? g_regions.erase(it) : std::next(it);
    }
    m_held.emplace_back(src, r);
    return use(*r);
}

}  // namespace nncf_moe3

// C entry point (ctypes: tests, diagnostics): out[0..3] = tensors copied out of a file mapping, their bytes, tensors
// collapsed into 2 MB pages in place, the collapsed bytes — process totals since the library was loaded.
extern "C" __attribute__((visibility("default"))) void nncf_moe3_weight_pages(int64_t* out) {
    for (int i = 0; i < 4; ++i) out[i] = nncf_moe3::g_stats[i].load();
}
