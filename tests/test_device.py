"""The machine facts every benchmark JSON records (cmt/device.py)."""

from __future__ import annotations

from pathlib import Path

from cmt.device import cpu_name

ZEN4 = """processor	: 0
vendor_id	: AuthenticAMD
cpu family	: 25
model		: 17
model name	: AMD EPYC
flags		: fpu sse2 avx2 avx512f avx512_bf16

processor	: 1
model name	: Another CPU
"""


def test_cpu_name_says_family_model_and_vector_extensions(tmp_path: Path) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text(ZEN4)
    assert cpu_name(info) == "AMD EPYC (family 25, model 17, AVX-512, AVX512-BF16)"
    info.write_text(ZEN4.replace("avx512f avx512_bf16", "").replace("model\t\t: 17\n", ""))
    assert cpu_name(info) == "AMD EPYC (family 25, AVX2)"


def test_cpu_name_without_a_readable_model_is_unknown(tmp_path: Path) -> None:
    assert cpu_name(tmp_path / "missing") == "unknown"
    (tmp_path / "cpuinfo").write_text("processor\t: 0\nflags\t\t: avx2\n")
    assert cpu_name(tmp_path / "cpuinfo") == "unknown"
