// Operand checks shared by MatMul3 and MoE3, and their packed-operand form.
#pragma once
#include <functional>
#include <memory>
#include <mutex>
#include <vector>

#include <openvino/core/node.hpp>
#include <openvino/op/constant.hpp>
#include <openvino/runtime/tensor.hpp>

#include "kernels/k3_runtime.hpp"

namespace nncf_moe3 {

// Type checks of a (W, S, Z) triple at ports (pw, pw+1, pw+2) and the codebook port.
void check_weight_types(const ov::Node* node, size_t pw);
// The same for a triple at any ports (MoE3R's 3-bit router: 1, 12, 13); messages start with what (e.g. "router ").
void check_weight_types(const ov::Node* node, size_t pw, size_t ps, size_t pz, const char* what);
void check_codebook(const ov::Node* node, size_t pc);
// The k3_version attribute must equal k3::K3_VERSION (IRs transformed by another build carry another layout).
void check_k3_version(const ov::Node* node, int64_t version);
// 32-value blocks per row of K values in the k3 v2 layout (always even).
inline int64_t k3_blocks(int64_t K) { return 2 * ((K + 63) / 64); }

// View of runtime tensors W [lead.., N, Kb, 12], S [lead.., N, G], Z [lead.., N, G] | [1]; K = reduction size.
k3::WeightSet weight_set(const ov::Tensor& w, const ov::Tensor& s, const ov::Tensor& z, int64_t K, int64_t gs,
                         const char* what);

// Marks the f16 Constants at the given ports "keep const precision" (the rt_info key OpenVINO's ConvertPrecision
// checks): without it the CPU plugin widens f16 constants of unknown ops to f32 at compile time, doubling the scale
// bytes every decoded token reads (3.25 instead of 3.125 bits per weight at group size 128, 3.5 at 64).
void keep_f16_constants(ov::Node* node, std::initializer_list<size_t> ports);

inline bool is_f16_or_f32(const ov::element::Type& t) { return t == ov::element::f16 || t == ov::element::f32; }

// Activation element types of the ops (X and the output): f32, or bf16 when the transformation put the ops' edges in
// the CPU plugin's bf16 inference precision (no layout reorders around the op; the kernels still compute in f32).
inline bool is_act_type(const ov::element::Type& t) { return t == ov::element::f32 || t == ov::element::bf16; }
void check_act_type(const ov::Node* node, size_t port);

// f32 view of an activation tensor: its data when f32, else (bf16) the values widened into buf.
const float* f32_activations(const ov::Tensor& t, std::vector<float>& buf);
// Where an op writes its f32 result: the output tensor itself when f32, else (bf16) buf resized to n.
float* f32_result(ov::Tensor& out, size_t n, std::vector<float>& buf);
// bf16 outputs: round the f32 result in buf (from f32_result) to nearest even into the tensor; no-op for f32.
void store_result(ov::Tensor& out, const float* y, size_t n);

// Env NNCF_MOE3_PROFILE (or nncf_moe3_profile(.., enable = 1)): the ops time their evaluate() calls.
bool profiling_on();

// ---- packed operands (openvino_ext/reference.py: pack_operands): the CPU form of the ops takes X (+ MoE3's router
// logits) and ONE u8 tensor holding every constant operand, because the CPU plugin's work per extension node grows
// with its input count (a Constant and a tensor view per input, on every inference: ~2-4 us per input on cold caches).

constexpr uint32_t PACK_MAGIC = 0x4B50334Bu;  // bytes "K3PK"
constexpr uint32_t PACK_VERSION = 1;
constexpr size_t PACK_HEADER = 16, PACK_DESC = 64, PACK_ALIGN = 64, PACK_MAX_SECTIONS = 64;

struct PackedSection {
    ov::element::Type type;
    ov::Shape shape;
    size_t offset = 0, bytes = 0;
};

// Parses and checks a packed blob (magic, version, section bounds and sizes); throws ov::Exception naming `what`.
std::vector<PackedSection> parse_packed(const uint8_t* data, size_t bytes, const char* what);

// The packed blob's Constant behind input `port` of `node`, or nullptr (not a Constant / not u8).
const ov::op::v0::Constant* packed_constant(const ov::Node* node, size_t port);

// Tensor views of a blob's sections, made once per blob address (the first evaluate() checks them: `check` gets the
// views and throws on operands the unpacked op would refuse); thread-safe. `place(data, bytes)` returns where the
// blob is read from (HugeWeights::view: the whole blob in 2 MB pages, its source pages dropped -- per section, the
// page cache's large folios re-mapped the dropped weight pages next to every small section that was read in place).
class PackedViews {
public:
    template <class Place, class Check>
    const ov::TensorVector& get(const ov::Tensor& blob, const char* what, Place&& place, Check&& check) const {
        std::lock_guard<std::mutex> lock(m_mu);
        if (blob.data() != m_src || blob.get_byte_size() != m_bytes) {
            check_blob(blob, what);
            ov::TensorVector views = make_views(place(static_cast<const uint8_t*>(blob.data()), blob.get_byte_size()),
                                                blob.get_byte_size(), what);
            check(views);
            m_views = std::move(views);
            m_src = blob.data();
            m_bytes = blob.get_byte_size();
        }
        return m_views;
    }

private:
    static void check_blob(const ov::Tensor& blob, const char* what);
    static ov::TensorVector make_views(const uint8_t* data, size_t bytes, const char* what);
    mutable std::mutex m_mu;
    mutable const void* m_src = nullptr;
    mutable size_t m_bytes = 0;
    mutable ov::TensorVector m_views;
};

// Logical inputs of a packed call: the leading (non-packed) inputs followed by the section views.
ov::TensorVector logical_inputs(const ov::TensorVector& inputs, size_t leading, const ov::TensorVector& views);

// Validates the unpacked form of a packed call (the leading inputs as Parameters of their runtime shapes, the section
// views as Constants sharing their memory) by constructing it: `make` builds the unpacked op from its arguments.
void check_unpacked(const ov::TensorVector& inputs, size_t leading, const ov::TensorVector& views,
                    const std::function<std::shared_ptr<ov::Node>(const ov::OutputVector&)>& make);

}  // namespace nncf_moe3
