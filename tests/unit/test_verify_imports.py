import subprocess
import sys


def test_verify_imports_neither_grpc_nor_tvm():
    code = (
        "import sys, pkgutil, importlib, hyperinfer.verify as v\n"
        "for m in pkgutil.iter_modules(v.__path__):\n"
        "    importlib.import_module('hyperinfer.verify.' + m.name)\n"
        "bad = sorted(n for n in sys.modules if n.split('.')[0] in ('grpc', 'tvm', 'tvm_ffi', 'onnxruntime'))\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"hyperinfer.verify pulled in: {out.stdout.strip()}"
