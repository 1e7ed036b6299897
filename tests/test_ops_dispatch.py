"""The dispatcher: what auto picks, errors for impls that cannot run, check_impl, the op table of `bicycle env`."""
from __future__ import annotations

import re

import pytest
import torch

from conftest_ops import use_triton_interpreter_without_cuda

use_triton_interpreter_without_cuda()

from bicycle import errors, ops  # noqa: E402
from bicycle.commands import env as envinfo  # noqa: E402
from bicycle.kernels import _common  # noqa: E402
from bicycle.kernels import reparam_kl as _reparam  # noqa: E402

_NO_EXT = "the C++ extension bicycle._C is not available (No module named 'bicycle._C')"


def _has_ext() -> bool:
    return ops._ext()[0] is not None


def test_unknown_impl_is_a_value_error():
    with pytest.raises(ValueError, match="unknown impl 'fast'"):
        ops.reparam_kl(torch.zeros(1, 1), torch.zeros(1, 1), torch.zeros(1, 1), impl="fast")


def test_auto_picks_cpp_on_cpu_and_ref_elsewhere():
    assert ops.resolve_impl("auto", "cpu", "lsgan") == ("cpp" if _has_ext() else "ref")
    assert ops.resolve_impl("auto", "mps", "lsgan") == "ref"
    assert ops.resolve_impl("auto", "cuda", "prepare_batch") == "ref"  # no Triton kernel for it
    expected_cuda = "triton" if _common.HAS_TRITON else "ref"
    assert ops.resolve_impl("auto", "cuda", "reparam_kl") == expected_cuda
    assert ops.resolve_impl("ref", "cuda", "lsgan") == "ref"


def test_auto_result_matches_reference_on_cpu():
    mu, lv, eps = torch.randn(3, 4), torch.randn(3, 4), torch.randn(3, 4)
    for a, b in zip(ops.reparam_kl(mu, lv, eps, 0.1), ops.reparam_kl(mu, lv, eps, 0.1, impl="ref")):
        torch.testing.assert_close(a, b)


def test_cpp_on_cuda_tensors_is_unavailable():
    if not _has_ext():
        pytest.skip("bicycle._C did not build")
    with pytest.raises(ops.OpUnavailableError, match="C\\+\\+ ops take CPU tensors, got cuda"):
        ops.resolve_impl("cpp", "cuda", "lsgan")


def test_missing_extension_is_named(monkeypatch):
    monkeypatch.setattr(ops, "_ext", lambda: (None, "the C++ extension bicycle._C is not available (No module)"))
    with pytest.raises(ops.OpUnavailableError, match=r"impl 'cpp' is unavailable: the C\+\+ extension bicycle\._C"):
        ops.lsgan([torch.zeros(2)], 1.0, impl="cpp")
    with pytest.raises(ops.OpUnavailableError, match=r"bicycle\._C"):
        ops.prepare_batch(torch.zeros(1, 2, 2, 3, dtype=torch.uint8), torch.zeros(1), torch.zeros(1),
                          torch.zeros(1, dtype=torch.bool), 2, impl="cpp")
    assert ops.resolve_impl("auto", "cpu", "lsgan") == "ref"
    rec = next(r for r in envinfo.op_impls() if r["op"] == "lsgan" and r["device"] == "cpu")
    assert rec["auto"] == "ref" and "bicycle._C" in rec["reason"]


def test_triton_unavailable_reasons(monkeypatch):
    with pytest.raises(ops.OpUnavailableError, match="prepare_batch has no Triton kernel"):
        ops.resolve_impl("triton", "cuda", "prepare_batch")
    monkeypatch.setattr(_common, "HAS_TRITON", False)
    with pytest.raises(ops.OpUnavailableError, match="triton is not importable"):
        ops.resolve_impl("triton", "cuda", "lsgan")
    assert ops.resolve_impl("auto", "cuda", "lsgan") == "ref"
    rec = next(r for r in envinfo.op_impls() if r["op"] == "lsgan_d" and r["device"] == "cuda")
    assert rec["auto"] == "ref" and "triton is not importable" in rec["reason"]


def test_triton_on_cpu_needs_the_interpreter(monkeypatch):
    if not _common.HAS_TRITON:
        pytest.skip("triton not installed")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ops.OpUnavailableError, match="take CUDA tensors, got cpu tensors"):
        ops.reparam_kl(torch.zeros(1, 1), torch.zeros(1, 1), torch.zeros(1, 1), impl="triton")


def test_op_unavailable_error_is_a_bicycle_error():
    assert ops.OpUnavailableError is errors.OpUnavailableError
    assert issubclass(ops.OpUnavailableError, errors.BicycleError)
    assert issubclass(ops.OpUnavailableError, RuntimeError)  # what callers caught before
    with pytest.raises(errors.BicycleError, match="no Triton kernel"):
        ops.resolve_impl("triton", "cuda", "prepare_batch")


def _raises_one_line(impl: str, device_type: str, message: str) -> None:
    with pytest.raises(ops.OpUnavailableError) as info:
        ops.check_impl(impl, device_type)
    assert str(info.value) == message


def test_check_impl_auto_and_ref_never_raise(monkeypatch):
    monkeypatch.setattr(ops, "_ext", lambda: (None, _NO_EXT))
    monkeypatch.setattr(_common, "HAS_TRITON", False)
    for impl in ("auto", "ref"):
        for device_type in ("cpu", "cuda", "mps"):
            assert ops.check_impl(impl, device_type) is None


def test_check_impl_cpp(monkeypatch):
    monkeypatch.setattr(ops, "_ext", lambda: (None, _NO_EXT))
    _raises_one_line("cpp", "cpu", f"--impl cpp: unavailable on cpu tensors: {_NO_EXT}")
    monkeypatch.setattr(ops, "_ext", lambda: (None, "bicycle._C is not available (undefined symbol:\n  _ZN2at6Tensor)"))
    _raises_one_line("cpp", "cpu", "--impl cpp: unavailable on cpu tensors: bicycle._C is not available "
                     "(undefined symbol: _ZN2at6Tensor)")
    monkeypatch.setattr(ops, "_ext", lambda: (object(), None))
    ops.check_impl("cpp", "cpu")
    _raises_one_line("cpp", "cuda", "--impl cpp: unavailable on cuda tensors: the C++ ops take CPU tensors, "
                     "got cuda tensors")


def test_check_impl_triton(monkeypatch):
    monkeypatch.setattr(_common, "HAS_TRITON", False)
    _raises_one_line("triton", "cuda", "--impl triton: unavailable on cuda tensors: triton is not importable; "
                     "pip install 'bicycle[triton]'")
    monkeypatch.setattr(_common, "HAS_TRITON", True)
    ops.check_impl("triton", "cuda")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ops.OpUnavailableError, match=re.escape(
            "--impl triton: unavailable on cpu tensors: the Triton kernels take CUDA tensors, got cpu tensors")):
        ops.check_impl("triton", "cpu")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setattr(_reparam, "_fwd_kernel", object(), raising=False)  # a kernel not built for the interpreter
    with pytest.raises(ops.OpUnavailableError, match="^--impl triton: unavailable on cpu tensors: "
                       "TRITON_INTERPRET=1 was set after bicycle.kernels was imported"):
        ops.check_impl("triton", "cpu")
    monkeypatch.setattr(_common, "kernels_interpreted", lambda kernel: True)
    ops.check_impl("triton", "cpu")


def test_check_impl_rejects_unknown_impl():
    with pytest.raises(ValueError, match="unknown impl 'fast'"):
        ops.check_impl("fast", "cpu")


def test_argument_errors_name_the_argument():
    with pytest.raises(ValueError, match=r"logvar has shape \[2, 3\], expected mu's \[3, 2\]"):
        ops.reparam_kl(torch.zeros(3, 2), torch.zeros(2, 3), torch.zeros(3, 2), impl="ref")
    with pytest.raises(ValueError, match="preds is an empty list"):
        ops.lsgan([], 1.0)
    with pytest.raises(ValueError, match=r"preds_real\[0\] is empty"):
        ops.lsgan_d([torch.zeros(2)], [torch.zeros(0)], impl="ref")


def test_op_impls_covers_every_op_and_device():
    records = envinfo.op_impls()
    assert {(r["op"], r["device"]) for r in records} == {(o, d) for o in ops.OPS for d in envinfo.DEVICE_TYPES}
    for r in records:
        assert r["auto"] in ("triton", "cpp", "ref") and r["reason"]
        assert r["available"]["ref"] is True
        assert r["auto"] == "ref" or r["available"][r["auto"]] is True
    table = envinfo.format_op_impls(records)
    assert "reparam_kl" in table and "prepare_batch" in table


def test_everything_imports_and_runs_without_triton():
    """A machine without triton: the op modules import, auto uses cpp/ref, explicit triton says why not."""
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['triton'] = None\n"
        "import torch\n"
        "from bicycle import ops\nfrom bicycle.commands import env as envinfo\n"
        "from bicycle.kernels import _common\n"
        "assert not _common.HAS_TRITON\n"
        "z, kl = ops.reparam_kl(torch.zeros(2, 3), torch.zeros(2, 3), torch.ones(2, 3))\n"
        "assert ops.resolve_impl('auto', 'cuda', 'lsgan') == 'ref'\n"
        "try:\n"
        "    ops.lsgan([torch.zeros(2)], 1.0, impl='triton')\n"
        "except ops.OpUnavailableError as e:\n"
        "    print('ERR', e)\n"
        "print(envinfo.format_op_impls(envinfo.op_impls()))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "ERR lsgan: impl 'triton' is unavailable: triton is not importable" in out.stdout
    assert "triton is not importable" in out.stdout.split("ERR", 1)[1].split("\n", 1)[1]
