// Cost of the CPU plugin's shape-inference fallback for an extension op, reproduced outside the plugin: per call it
// wraps every input in a Constant made from a tensor, clones the op on them and validates the clone (OpenVINO's
// ShapeInferFallback, used for ops without a shape-inference entry in the CPU plugin -- all extension ops). Its port
// mask is "every input", so with a dynamic-shape graph the plugin re-runs it on EVERY inference (a node without such
// a data dependency skips shape inference while its input shapes stay the same).
// Times that for the first MoE3R and MatMul3 of an IR transformed by openvino_ext.transform (e.g. bench_cpu.py --keep),
// warm (back-to-back calls) and cold (64 MB streamed between calls, as a decode step's weight stream does between two
// extension ops), split into the stages: the Constants, + the clone (our constructor), + the clone's validation.
//
//   OV=$(python -c "import openvino, os; print(os.path.dirname(openvino.__file__))")
//   g++ -O2 -std=c++17 openvino_ext/cpu/tools/fallback_bench.cpp -I$OV/include -L$OV/libs \
//       -l:$(basename $(ls $OV/libs/libopenvino.so.2*)) -Wl,-rpath,$OV/libs -o /tmp/fallback_bench
//   /tmp/fallback_bench openvino_ext/cpu/build/*/libnncf_moe3_cpu.so out/bench/moe_moe3.xml
#include <openvino/openvino.hpp>
#include <openvino/op/constant.hpp>
#include <chrono>
#include <cstdio>

namespace {

// one fallback shape inference up to `stage` (0: Constants only, 1: + clone, 2: + validate), seconds
double fallback(const std::shared_ptr<ov::Node>& op, const std::vector<ov::Tensor>& ts, int stage) {
    const auto t0 = std::chrono::steady_clock::now();
    {
        ov::OutputVector in;
        for (const auto& t : ts) in.push_back(std::make_shared<ov::op::v0::Constant>(t));
        if (stage >= 1) {
            auto local = op->clone_with_new_inputs(in);
            if (stage >= 2) local->validate_and_infer_types();
        }
    }  // the clone and the Constants are destroyed inside the timed region, as in the plugin
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

int main(int argc, char** argv) {
    if (argc < 3) {
        std::fprintf(stderr, "usage: %s libnncf_moe3_cpu.so model.xml\n", argv[0]);
        return 2;
    }
    ov::Core core;
    core.add_extension(argv[1]);
    auto model = core.read_model(argv[2]);
    std::vector<char> big(size_t(64) << 20, 1);  // > L2 + L3 of the machine this was written on (32 MB L3)
    volatile long sink = 0;
    for (const char* type : {"MoE3R", "MatMul3"}) {
        std::shared_ptr<ov::Node> op;
        for (auto& n : model->get_ordered_ops())
            if (std::string(n->get_type_name()) == type) {
                op = n;
                break;
            }
        if (!op) continue;
        std::vector<ov::Tensor> ts;
        std::vector<std::vector<char>> bufs;
        for (size_t i = 0; i < op->get_input_size(); ++i) {
            ov::Shape shape;
            for (auto& d : op->get_input_partial_shape(i)) shape.push_back(d.is_static() ? d.get_length() : 1);
            bufs.emplace_back(ov::shape_size(shape) * op->get_input_element_type(i).size() + 64);
            ts.emplace_back(op->get_input_element_type(i), shape, bufs.back().data());
        }
        const char* names[3] = {"Constants", "+ clone", "+ validate"};
        for (int stage = 0; stage < 3; ++stage) {
            double warm = 0, cold = 0;
            const int NW = 20000, NC = 500;
            for (int it = 0; it < NW; ++it) warm += fallback(op, ts, stage);
            for (int it = 0; it < NC; ++it) {
                long s = 0;
                for (size_t j = 0; j < big.size(); j += 64) s += big[j];
                sink = sink + s;
                cold += fallback(op, ts, stage);
            }
            std::printf("%s (%zu inputs) %-10s: %6.2f us warm, %6.2f us cold per fallback shape inference\n", type,
                        op->get_input_size(), names[stage], warm / NW * 1e6, cold / NC * 1e6);
        }
    }
    return 0;
}
