"""The ops as torch.library custom ops: schemas, fake implementations (opcheck), the custom op
kernels against the eager ops, and a fullgraph torch.compile of a Wan block with no prior
eager call (a fresh interpreter) and no graph break."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import importlib

import fastdit.ops as ops
from fastdit.ops.examples import example_call

# the op modules (``fastdit.ops.attention`` and ``.linear`` are also names of functions there)
norm, elementwise, rope, attention_ops, linear, norm_fp8, linear_fp8, attention_int8, channel_norm = (
    importlib.import_module(f"fastdit.ops.{name}")
    for name in ("norm", "elementwise", "rope", "attention", "linear", "norm_fp8", "linear_fp8",
                 "attention_int8", "channel_norm"))

ROOT = Path(__file__).resolve().parents[2]

# every custom op with the public op it stands for (and, for rms_norm / linear, the variant)
LIBRARY_OPS = {
    "rms_norm": (norm._LIB_RMS_NORM, {}),
    "rms_norm_residual": (norm._LIB_RMS_NORM_RESIDUAL, {"residual": True}),
    "layer_norm_scale_shift": (norm._LIB_LAYER_NORM_SCALE_SHIFT, {}),
    "layer_norm_scale_shift_numbers": (norm._LIB_LAYER_NORM_SCALE_SHIFT, {"numbers": True}),
    "scale_residual_norm_scale_shift": (norm._LIB_SCALE_RESIDUAL, {}),
    "norm_tanh_mul_add": (norm._LIB_NORM_TANH_MUL_ADD, {}),
    "norm_tanh_mul_add_numbers": (norm._LIB_NORM_TANH_MUL_ADD, {"numbers": True}),
    "mul_add": (elementwise._LIB_MUL_ADD, {}),
    "scale_shift": (elementwise._LIB_SCALE_SHIFT, {}),
    "rope_qk_": (rope._LIB_ROPE_QK, {}),
    "rms_norm_rope_": (rope._LIB_RMS_NORM_ROPE, {}),
    "rope_qk_cache_store": (rope._LIB_CACHE_STORE, {}),
    "attention": (attention_ops._LIB_ATTENTION, {}),
    "linear": (linear._LIB_LINEAR, {}),
    "linear_out": (linear._LIB_LINEAR_OUT, {"out": True}),
    "linear_gelu_tanh": (linear._LIB_LINEAR_GELU_TANH, {}),
    # the fp8 family (issue 10)
    "quantize_fp8": (linear_fp8._LIB_QUANTIZE_FP8, {}),
    "gelu_tanh_fp8": (linear_fp8._LIB_GELU_TANH_FP8, {}),
    "linear_fp8": (linear_fp8._LIB_LINEAR_FP8, {}),
    "linear_fp8_prequantized": (linear_fp8._LIB_LINEAR_FP8, {"prequantized": True}),
    "layer_norm_scale_shift_fp8": (norm_fp8._LIB_LAYER_NORM_FP8, {}),
    "layer_norm_scale_shift_fp8_numbers": (norm_fp8._LIB_LAYER_NORM_FP8, {"numbers": True}),
    "scale_residual_norm_scale_shift_fp8": (norm_fp8._LIB_SCALE_RESIDUAL_FP8, {}),
    "attention_fp8_out": (attention_int8._LIB_ATTENTION_FP8_OUT, {}),
    # the VAE decoder (issue 11's few-step videos spend half their time decoding)
    "channel_rms_norm": (channel_norm._LIB_CHANNEL_RMS_NORM, {}),
}


def _call(name):
    """(library op, public op, args, kwargs) of a small fp32 call."""
    lib, variant = LIBRARY_OPS[name]
    op = lib.public.__name__
    args, kwargs = example_call(op, batch=2, tokens=6, dim=16, heads=2, dtype=torch.float32)
    if variant.get("residual"):
        kwargs["residual"] = torch.randn_like(args[0])
    if variant.get("numbers"):
        kwargs.update(shift=0.25, scale=-0.5)
    if variant.get("out"):
        x, w, b = args
        kwargs["out"] = torch.empty(*x.shape[:-1], w.shape[0])
    if variant.get("prequantized"):  # an e4m3 activation with its per-token scales
        from fastdit.quant.formulas import quantize_fp8_rows

        x_q, x_scale = quantize_fp8_rows(args[0])
        args = (x_q,) + tuple(args[1:])
        kwargs.update(x_scale=x_scale, out_dtype=torch.bfloat16)
    return lib, lib.public, args, kwargs


def _packed(lib, args, kwargs):
    import inspect

    bound = inspect.signature(lib.public).bind(*args, **kwargs)
    bound.apply_defaults()
    return [bound.arguments[n] for n, _ in lib.params]


def _clone(v):
    return v.clone() if isinstance(v, torch.Tensor) else v


def test_every_op_has_a_custom_op():
    from fastdit.ops.registry import op_names

    names = {lib.public.__name__ for lib, _ in LIBRARY_OPS.values()}
    assert names == set(op_names())
    assert all(hasattr(torch.ops.fastdit, lib.name) for lib, _ in LIBRARY_OPS.values())


@pytest.mark.parametrize("name", LIBRARY_OPS)
def test_custom_op_equals_the_eager_op(name):
    lib, public, args, kwargs = _call(name)
    ref_args, ref_kwargs = [_clone(a) for a in args], {k: _clone(v) for k, v in kwargs.items()}
    expected = public(*ref_args, **ref_kwargs)
    out = lib(*_packed(lib, args, kwargs))
    if lib.writes:  # the custom op returns nothing; its arguments were written
        for a, r in zip(list(args) + list(kwargs.values()), ref_args + list(ref_kwargs.values())):
            if isinstance(a, torch.Tensor):
                assert torch.equal(a, r)
        return
    outs = out if isinstance(out, tuple) else (out,)
    refs = expected if isinstance(expected, tuple) else (expected,)
    for o, r in zip(outs, refs):
        assert o.is_contiguous() and torch.equal(o, r)


@pytest.mark.parametrize("name", LIBRARY_OPS)
def test_opcheck(name):
    """Schema (mutations declared), fake implementation (shapes, dtypes, strides) and the
    functionalised trace, by torch.library.opcheck."""
    lib, _, args, kwargs = _call(name)
    packed = tuple(_pack_values(lib, args, kwargs))
    utils = ("test_schema", "test_faketensor", "test_aot_dispatch_dynamic")
    fp8_inputs = [t for t in packed if isinstance(t, torch.Tensor) and t.dtype == torch.float8_e4m3fn]
    if fp8_inputs:
        # opcheck's schema test compares inputs with allclose, which the CPU cannot do for
        # e4m3 tensors: here the inputs are checked unchanged bit for bit instead
        utils = utils[1:]
        before = [t.view(torch.uint8).clone() for t in fp8_inputs]
        lib.op(*packed)
        assert all(torch.equal(t.view(torch.uint8), b) for t, b in zip(fp8_inputs, before))
    torch.library.opcheck(lib.op, packed, test_utils=utils)


def _pack_values(lib, args, kwargs):
    """The schema values the public op's compile path passes."""
    packed = []
    for (_, kind), value in zip(lib.params, _packed(lib, args, kwargs)):
        if kind in ("mod", "mod?"):
            tensor = isinstance(value, torch.Tensor)
            packed += [value if tensor else None,
                       (0.0 if kind == "mod" else None) if tensor else
                       (None if value is None else float(value))]
        elif kind == "float":
            packed.append(float(value))
        else:
            packed.append(value)
    return packed


def test_fake_implementation_checks_the_arguments():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        x = torch.empty(2, 6, 8)
        with pytest.raises(ValueError, match="layer_norm_scale_shift: shift does not broadcast"):
            norm._LIB_LAYER_NORM_SCALE_SHIFT(x, torch.empty(3, 8), 0.0, None, None, 1e-6, "layer")
        out = norm._LIB_LAYER_NORM_SCALE_SHIFT(x, torch.empty(2, 1, 8), 0.5, None, None, 1e-6, "rms")
        assert out.shape == x.shape and out.dtype == x.dtype


def test_compiled_function_with_numbers_and_in_place_ops():
    """A small function over several ops, compiled with aot_eager (fake implementations and
    functionalised in-place ops), equals its eager run."""
    def f(x, q, k, cos, sin, mod):
        h = ops.layer_norm_scale_shift(x, shift=0.0, scale=mod)
        y, r = ops.scale_residual_norm_scale_shift(x, h, shift=mod, scale=0.5, gate=1)
        ops.rope_qk_(q, k, cos, sin)
        return ops.mul_add(y, r, gate=mod, k=2) + q.sum() + k.sum()

    theta = torch.rand(6, 4)
    inputs = (torch.randn(2, 6, 16), torch.randn(6, 2, 8), torch.randn(6, 1, 8), theta.cos(),
              theta.sin(), torch.randn(2, 1, 16))
    ref_inputs = [t.clone() for t in inputs]
    torch._dynamo.reset()
    out = torch.compile(f, fullgraph=True, backend="aot_eager")(*inputs)
    ref = f(*ref_inputs)
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    torch.testing.assert_close(inputs[1], ref_inputs[1], rtol=0, atol=0)  # q rotated in place


BLOCK_SCRIPT = r"""
import json, torch
from fastdit.models.wan import WanTransformer
from fastdit.models.wan.transformer import WanContext
from fastdit.ops import registry
from tests.models.wan_helpers import T2V

results = []
for chunk in (0, 10):  # 10: the chunked FFN, writing slices of its output (linear_out)
    torch.manual_seed(0)
    model = WanTransformer(T2V, ffn_chunk_tokens=chunk)
    model.init_weights()
    model.eval().requires_grad_(False)
    block = model.blocks[0]
    grid, B, D = (2, 3, 4), 2, T2V.dim
    L = 24
    cos, sin = model.rope(*grid, torch.device("cpu"))  # plain torch: no fastdit op runs
    ctx = WanContext(grid=grid, temb=torch.randn(B, D), temb6=torch.randn(B, 6, D),
                     text=torch.randn(B, 7, D), image=None, rope=(cos, sin), tokens=(0, L))
    x = torch.randn(B, L, D)
    loaded_before = registry._loaded  # False: no op has run, no provider module is imported
    graphs = []

    def backend(gm, example_inputs):
        from torch._dynamo.backends.debugging import aot_eager
        graphs.append(gm)
        return aot_eager(gm, example_inputs)

    with torch.no_grad():
        out = torch.compile(block, fullgraph=True, backend=backend)(x.clone(), ctx)
        ref = block(x.clone(), ctx)
    targets = [str(n.target) for n in graphs[0].graph.nodes if n.op == "call_function"]
    results.append({"chunk": chunk, "loaded_before": loaded_before, "graphs": len(graphs),
                    "fastdit": sorted({t.split(".")[1] for t in targets if t.startswith("fastdit.")}),
                    "max_diff": float((out - ref).abs().max())})
print(json.dumps(results))
"""


def test_wan_block_compiles_fullgraph_without_a_prior_eager_call():
    """One WanBlock (with its WanContext) under torch.compile(fullgraph=True) in a fresh
    interpreter: no op has run before, the trace has no graph break (fullgraph raises on one),
    every op is one fastdit custom op, and the result equals the eager block's; then the same
    with the chunked FFN (whose second product writes into slices of its output)."""
    env = {"PYTHONPATH": f"{ROOT / 'src'}:{ROOT}", "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-c", BLOCK_SCRIPT], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    first, chunked = json.loads(done.stdout.strip().splitlines()[-1])
    assert first["loaded_before"] is False
    expected = {"layer_norm_scale_shift", "linear", "rms_norm_rope_", "attention", "rms_norm",
                "scale_residual_norm_scale_shift", "linear_gelu_tanh", "mul_add"}
    assert first["graphs"] == chunked["graphs"] == 1
    assert set(first["fastdit"]) == expected
    assert set(chunked["fastdit"]) == expected | {"linear_out"}
    assert first["max_diff"] == chunked["max_diff"] == 0.0
