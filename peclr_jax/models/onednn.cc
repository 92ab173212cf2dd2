// oneDNN convolutions as XLA CPU custom calls (jax.ffi): forward, gradient with respect to the input and with
// respect to the weights, for channels-last activations and HWIO kernels, float32 or bfloat16.
//
// Operands: x [N, H, W, C], w [KH, KW, C, O], y [N, OH, OW, O]; forward (x, w) -> y, backward data (dy, w) -> dx,
// backward weights (x, dy) -> dw. Attributes: strides (2 values) and pads (4 values: top, bottom, left, right),
// exact (models/onednn.py trims what no output reads). The primitives are created once per (kind, dtype, shapes,
// strides, pads) and cached; their scratchpad is this thread's, so concurrent calls from XLA's threads never share
// one. Sharding is the caller's: under a mesh each device calls this on its own images (custom_partitioning).

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <tuple>
#include <vector>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using dnnl::memory;
using tag = dnnl::memory::format_tag;

namespace {

dnnl::engine& Engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

enum Kind { kForward = 0, kBackwardData = 1, kBackwardWeights = 2 };

// One convolution: sizes in oneDNN's logical order (N, C, H, W) and (O, I, KH, KW).
struct Problem {
  int kind;
  int dtype;  // 0 float32, 1 bfloat16
  int64_t n, c, h, w, o, kh, kw, oh, ow, sh, sw, pt, pb, pl, pr;

  auto Key() const { return std::make_tuple(kind, dtype, n, c, h, w, o, kh, kw, oh, ow, sh, sw, pt, pb, pl, pr); }
  bool operator<(const Problem& other) const { return Key() < other.Key(); }

  memory::data_type Type() const { return dtype ? memory::data_type::bf16 : memory::data_type::f32; }
  memory::desc Src() const { return memory::desc({n, c, h, w}, Type(), tag::nhwc); }
  memory::desc Dst() const { return memory::desc({n, o, oh, ow}, Type(), tag::nhwc); }
  memory::desc UserWeights() const { return memory::desc({o, c, kh, kw}, Type(), tag::hwio); }
  memory::desc AnyWeights() const { return memory::desc({o, c, kh, kw}, Type(), tag::any); }
};

// A cached primitive with the weights layout it wants and the reorder to or from the user's HWIO kernel.
struct Compiled {
  dnnl::primitive primitive;
  memory::desc weights;  // the primitive's (diff) weights layout
  bool reorder;          // weights != the user's HWIO layout
  dnnl::reorder to_or_from_user;
  size_t scratchpad;
};

Compiled Compile(const Problem& p) {
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  memory::dims strides{p.sh, p.sw}, pad_l{p.pt, p.pl}, pad_r{p.pb, p.pr};
  auto& engine = Engine();
  dnnl::convolution_forward::primitive_desc fwd(engine, dnnl::prop_kind::forward_training,
                                                dnnl::algorithm::convolution_direct, p.Src(), p.AnyWeights(),
                                                p.Dst(), strides, pad_l, pad_r, attr);
  Compiled out;
  if (p.kind == kForward) {
    out.primitive = dnnl::convolution_forward(fwd);
    out.weights = fwd.weights_desc();
    out.scratchpad = fwd.scratchpad_desc().get_size();
  } else if (p.kind == kBackwardData) {
    dnnl::convolution_backward_data::primitive_desc bwd(engine, dnnl::algorithm::convolution_direct, p.Src(),
                                                        p.AnyWeights(), p.Dst(), strides, pad_l, pad_r, fwd, attr);
    out.primitive = dnnl::convolution_backward_data(bwd);
    out.weights = bwd.weights_desc();
    out.scratchpad = bwd.scratchpad_desc().get_size();
  } else {
    dnnl::convolution_backward_weights::primitive_desc bwd(engine, dnnl::algorithm::convolution_direct, p.Src(),
                                                           p.AnyWeights(), p.Dst(), strides, pad_l, pad_r, fwd,
                                                           attr);
    out.primitive = dnnl::convolution_backward_weights(bwd);
    out.weights = bwd.diff_weights_desc();
    out.scratchpad = bwd.scratchpad_desc().get_size();
  }
  out.reorder = out.weights != p.UserWeights();
  if (out.reorder) {
    out.to_or_from_user = p.kind == kBackwardWeights
                              ? dnnl::reorder(dnnl::reorder::primitive_desc(engine, out.weights, engine,
                                                                            p.UserWeights()))
                              : dnnl::reorder(dnnl::reorder::primitive_desc(engine, p.UserWeights(), engine,
                                                                            out.weights));
  }
  return out;
}

const Compiled& Lookup(const Problem& p) {
  static std::mutex mutex;
  static std::map<Problem, std::unique_ptr<Compiled>> cache;
  std::lock_guard<std::mutex> lock(mutex);
  auto it = cache.find(p);
  if (it == cache.end()) {
    it = cache.emplace(p, std::make_unique<Compiled>(Compile(p))).first;
  }
  return *it->second;
}

uint8_t* Scratch(std::vector<uint8_t>& buffer, size_t size) {
  if (buffer.size() < size) buffer.resize(size);
  return buffer.data();
}

// `act` is x (forward, backward weights) or dy (backward data), `other` is w (forward, backward data) or dy
// (backward weights), `out` the result.
void Run(const Problem& p, void* act, void* other, void* out) {
  const Compiled& c = Lookup(p);
  auto& engine = Engine();
  thread_local std::vector<uint8_t> scratch_buffer, weights_buffer;
  dnnl::stream stream(engine);
  memory scratch(memory::desc({static_cast<int64_t>(c.scratchpad)}, memory::data_type::u8, tag::a), engine,
                 Scratch(scratch_buffer, c.scratchpad));
  if (p.kind == kForward || p.kind == kBackwardData) {
    memory user_w(p.UserWeights(), engine, other);
    memory w = user_w;
    if (c.reorder) {
      w = memory(c.weights, engine, Scratch(weights_buffer, c.weights.get_size()));
      c.to_or_from_user.execute(stream, user_w, w);
    }
    if (p.kind == kForward) {
      memory src(p.Src(), engine, act), dst(p.Dst(), engine, out);
      c.primitive.execute(stream, {{DNNL_ARG_SRC, src}, {DNNL_ARG_WEIGHTS, w}, {DNNL_ARG_DST, dst},
                                   {DNNL_ARG_SCRATCHPAD, scratch}});
    } else {
      memory diff_dst(p.Dst(), engine, act), diff_src(p.Src(), engine, out);
      c.primitive.execute(stream, {{DNNL_ARG_DIFF_DST, diff_dst}, {DNNL_ARG_WEIGHTS, w},
                                   {DNNL_ARG_DIFF_SRC, diff_src}, {DNNL_ARG_SCRATCHPAD, scratch}});
    }
  } else {
    memory src(p.Src(), engine, act), diff_dst(p.Dst(), engine, other), user_dw(p.UserWeights(), engine, out);
    memory dw = c.reorder ? memory(c.weights, engine, Scratch(weights_buffer, c.weights.get_size())) : user_dw;
    c.primitive.execute(stream, {{DNNL_ARG_SRC, src}, {DNNL_ARG_DIFF_DST, diff_dst}, {DNNL_ARG_DIFF_WEIGHTS, dw},
                                 {DNNL_ARG_SCRATCHPAD, scratch}});
    if (c.reorder) c.to_or_from_user.execute(stream, dw, user_dw);
  }
  stream.wait();
}

ffi::Error Convolution(int kind, ffi::AnyBuffer a, ffi::AnyBuffer b, ffi::Result<ffi::AnyBuffer> out,
                       ffi::Span<const int64_t> strides, ffi::Span<const int64_t> pads) {
  if (strides.size() != 2 || pads.size() != 4) {
    return ffi::Error::InvalidArgument("peclr_onednn: expected 2 strides and 4 pads");
  }
  ffi::DataType type = a.element_type();
  if ((type != ffi::DataType::F32 && type != ffi::DataType::BF16) || b.element_type() != type ||
      out->element_type() != type) {
    return ffi::Error::InvalidArgument("peclr_onednn: expected float32 or bfloat16 operands of one type");
  }
  // x [N, H, W, C], w [KH, KW, C, O], y [N, OH, OW, O]: which buffer holds which depends on the kind.
  auto x = kind == kBackwardData ? out->dimensions() : a.dimensions();
  auto y = kind == kForward ? out->dimensions() : (kind == kBackwardData ? a.dimensions() : b.dimensions());
  auto w = kind == kBackwardWeights ? out->dimensions() : b.dimensions();
  if (x.size() != 4 || y.size() != 4 || w.size() != 4 || x[0] != y[0] || x[3] != w[2] || y[3] != w[3]) {
    return ffi::Error::InvalidArgument("peclr_onednn: operand shapes do not make a convolution");
  }
  Problem p{kind,  type == ffi::DataType::BF16,
            x[0],  x[3], x[1], x[2], w[3], w[0], w[1], y[1], y[2], strides[0], strides[1], pads[0], pads[1],
            pads[2], pads[3]};
  try {
    Run(p, a.untyped_data(), b.untyped_data(), out->untyped_data());
  } catch (const dnnl::error& e) {
    return ffi::Error::Internal(std::string("peclr_onednn: ") + e.what());
  }
  return ffi::Error::Success();
}

ffi::Error Forward(ffi::AnyBuffer x, ffi::AnyBuffer w, ffi::Result<ffi::AnyBuffer> y,
                   ffi::Span<const int64_t> strides, ffi::Span<const int64_t> pads) {
  return Convolution(kForward, x, w, y, strides, pads);
}

ffi::Error BackwardData(ffi::AnyBuffer dy, ffi::AnyBuffer w, ffi::Result<ffi::AnyBuffer> dx,
                        ffi::Span<const int64_t> strides, ffi::Span<const int64_t> pads) {
  return Convolution(kBackwardData, dy, w, dx, strides, pads);
}

ffi::Error BackwardWeights(ffi::AnyBuffer x, ffi::AnyBuffer dy, ffi::Result<ffi::AnyBuffer> dw,
                           ffi::Span<const int64_t> strides, ffi::Span<const int64_t> pads) {
  return Convolution(kBackwardWeights, x, dy, dw, strides, pads);
}

}  // namespace

#define PECLR_BIND                                                                                  \
  ffi::Ffi::Bind()                                                                                  \
      .Arg<ffi::AnyBuffer>()                                                                        \
      .Arg<ffi::AnyBuffer>()                                                                        \
      .Ret<ffi::AnyBuffer>()                                                                        \
      .Attr<ffi::Span<const int64_t>>("strides")                                                    \
      .Attr<ffi::Span<const int64_t>>("pads")

XLA_FFI_DEFINE_HANDLER_SYMBOL(PeclrOnednnConvForward, Forward, PECLR_BIND);
XLA_FFI_DEFINE_HANDLER_SYMBOL(PeclrOnednnConvBackwardData, BackwardData, PECLR_BIND);
XLA_FFI_DEFINE_HANDLER_SYMBOL(PeclrOnednnConvBackwardWeights, BackwardWeights, PECLR_BIND);

// Whether this machine's oneDNN has a non-reference convolution for the dtype (0 float32, 1 bfloat16): a
// reference implementation is correct but far slower than XLA's, so the caller keeps its own path then.
extern "C" int peclr_onednn_fast(int dtype) {
  try {
    Problem p{kForward, dtype, 8, 16, 8, 8, 16, 3, 3, 8, 8, 1, 1, 1, 1, 1, 1};
    dnnl::primitive_attr attr;
    dnnl::convolution_forward::primitive_desc pd(Engine(), dnnl::prop_kind::forward_training,
                                                 dnnl::algorithm::convolution_direct, p.Src(), p.AnyWeights(),
                                                 p.Dst(), {1, 1}, {1, 1}, {1, 1}, attr);
    return std::string(pd.impl_info_str()).find("ref") == std::string::npos;
  } catch (const dnnl::error&) {
    return 0;
  }
}
