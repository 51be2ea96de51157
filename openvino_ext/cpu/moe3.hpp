// MoE3: routed SwiGLU experts of one MoE block with k3 weights (softmax -> top-k -> [renormalise] routing from
// router logits). MoE3R: the same block with the router MatMul inside (input 1 is the router weight [E, H], f32,
// instead of the logits [T, E]). Inputs/attributes: openvino_ext/reference.py.
#pragma once
#include <openvino/op/op.hpp>

#include "op_util.hpp"
#include "weight_pages.hpp"

namespace nncf_moe3 {

int64_t k3_version_current();

class MoE3 : public ov::op::Op {
public:
    OPENVINO_OP("MoE3", "nncf_moe3");

    MoE3() = default;
    MoE3(const ov::OutputVector& args, int64_t top_k, bool normalize_topk, int64_t group_size,
         int64_t k3_version = k3_version_current());

    void validate_and_infer_types() override;
    std::shared_ptr<ov::Node> clone_with_new_inputs(const ov::OutputVector& new_args) const override;
    bool visit_attributes(ov::AttributeVisitor& visitor) override;
    bool evaluate(ov::TensorVector& outputs, const ov::TensorVector& inputs) const override;
    bool has_evaluate() const override;

protected:
    // MoE3R: input 1 is the router weight [E, H] (logits = X . W_r^T computed inside the op); set before validation
    MoE3(bool router_in_op, const ov::OutputVector& args, int64_t top_k, bool normalize_topk, int64_t group_size,
         int64_t k3_version);
    explicit MoE3(bool router_in_op) : m_router_in_op(router_in_op) {}

    // inputs before the packed operands in the packed form: X (MoE3R), X + router_logits (MoE3)
    size_t packed_leading() const { return m_router_in_op ? 1 : 2; }

    bool m_router_in_op = false;
    PackedViews m_packed;  // packed form: views of the packed operands' sections (op_util.hpp)
    HugeWeights m_pages;  // the k3 weights read through 2 MB pages (weight_pages.hpp)
    int64_t m_top_k = 2;
    bool m_normalize_topk = true;
    int64_t m_group_size = 128;
    int64_t m_k3_version = 1;  // deserialized IRs without the attribute: version 1 (refused)
};

// MoE3 with the router MatMul inside: one extension op per MoE block instead of a router FullyConnected + its
// layout reorders + MoE3 (CPU). A separate type (not an attribute of MoE3) so that a runtime implementing only
// MoE3 (the GPU custom layer) refuses it instead of reading the router weight as logits.
class MoE3R : public MoE3 {
public:
    OPENVINO_OP("MoE3R", "nncf_moe3", MoE3);

    MoE3R() : MoE3(true) {}
    MoE3R(const ov::OutputVector& args, int64_t top_k, bool normalize_topk, int64_t group_size,
          int64_t k3_version = k3_version_current())
        : MoE3(true, args, top_k, normalize_topk, group_size, k3_version) {}

    std::shared_ptr<ov::Node> clone_with_new_inputs(const ov::OutputVector& new_args) const override;
};

}  // namespace nncf_moe3
