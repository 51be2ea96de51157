// Cost of the CPU plugin's shape-inference fallback for an extension op, reproduced outside the plugin: per call it
// wraps every input in a Constant made from a tensor, clones the op on them and validates the clone (OpenVINO's
// ShapeInferFallback, used for ops without a shape-inference entry in the CPU plugin -- all extension ops).
// Times that for the first MoE3R and MatMul3 of an IR transformed by openvino_ext.transform (e.g. bench_cpu.py --keep).
//
//   OV=$(python -c "import openvino, os; print(os.path.dirname(openvino.__file__))")
//   g++ -O2 -std=c++17 openvino_ext/cpu/tools/fallback_bench.cpp -I$OV/include -L$OV/libs \
//       -l:$(basename $(ls $OV/libs/libopenvino.so.2*)) -Wl,-rpath,$OV/libs -o /tmp/fallback_bench
//   /tmp/fallback_bench openvino_ext/cpu/build/*/libnncf_moe3_cpu.so out/bench/moe_moe3.xml
#include <openvino/openvino.hpp>
#include <openvino/op/constant.hpp>
#include <openvino/op/parameter.hpp>
#include <chrono>
#include <cstdio>
int main(int argc, char** argv) {
    ov::Core core;
    core.add_extension(argv[1]);
    auto model = core.read_model(argv[2]);
    for (auto& type : {"MoE3R", "MatMul3"}) {
        std::shared_ptr<ov::Node> op;
        for (auto& n : model->get_ordered_ops()) if (std::string(n->get_type_name()) == type) { op = n; break; }
        if (!op) continue;
        std::vector<ov::Tensor> ts;
        std::vector<std::vector<char>> bufs;
        for (size_t i = 0; i < op->get_input_size(); ++i) {
            ov::Shape shape;
            for (auto& d : op->get_input_partial_shape(i)) shape.push_back(d.is_static() ? d.get_length() : 1);
            bufs.emplace_back(ov::shape_size(shape) * op->get_input_element_type(i).size() + 64);
            ts.emplace_back(op->get_input_element_type(i), shape, bufs.back().data());
        }
        const int N = 20000;
        auto t0 = std::chrono::steady_clock::now();
        for (int it = 0; it < N; ++it) {
            ov::OutputVector in;
            for (auto& t : ts) in.push_back(std::make_shared<ov::op::v0::Constant>(t));
            auto local = op->clone_with_new_inputs(in);
            local->validate_and_infer_types();
        }
        double us = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / N * 1e6;
        std::printf("%s (%zu inputs): %.2f us per fallback shape inference\n", type, op->get_input_size(), us);
    }
}
