// MatMul3: Y [.., N] = X [.., K] @ dequant(W k3 [N, Kb, 12], S f16 [N, G], Z u8 [N, G] | [1], C f16 [8])^T, X and Y
// f32 (or both bf16: the kernels compute in f32). Contract: openvino_ext/reference.py.
#pragma once
#include <openvino/op/op.hpp>

#include "kernels/k3_runtime.hpp"
#include "op_util.hpp"
#include "weight_pages.hpp"

namespace nncf_moe3 {

int64_t k3_version_current();  // k3::K3_VERSION

class MatMul3 : public ov::op::Op {
public:
    OPENVINO_OP("MatMul3", "nncf_moe3");

    MatMul3() = default;
    MatMul3(const ov::OutputVector& args, int64_t group_size, int64_t k3_version = k3_version_current());

    void validate_and_infer_types() override;
    std::shared_ptr<ov::Node> clone_with_new_inputs(const ov::OutputVector& new_args) const override;
    bool visit_attributes(ov::AttributeVisitor& visitor) override;
    bool evaluate(ov::TensorVector& outputs, const ov::TensorVector& inputs) const override;
    bool has_evaluate() const override;

    int64_t get_group_size() const { return m_group_size; }

private:
    void compute(const ov::TensorVector& inputs, const float* x, float* y, int64_t M, int64_t K,
                 const k3::WeightSet& ws) const;

    HugeWeights m_pages;  // the k3 weights read through 2 MB pages (weight_pages.hpp)
    PackedViews m_packed;  // packed form (X, P): views of P's sections (op_util.hpp)
    int64_t m_group_size = 128;
    int64_t m_k3_version = 1;  // deserialized IRs without the attribute: version 1 (refused)
};

}  // namespace nncf_moe3
