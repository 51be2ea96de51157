// Operand checks shared by MatMul3 and MoE3.
#pragma once
#include <vector>

#include <openvino/core/node.hpp>
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

}  // namespace nncf_moe3
