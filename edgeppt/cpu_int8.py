"""Which 8-bit dot-product instructions this CPU reports. int8 kernels beat float32 mainly through them (x86's
VNNI multiplies and accumulates four 8-bit pairs into 32 bits in one instruction; without it AVX2 needs a
16-bit intermediate step), so the export names them when it explains why int8 is or is not the default."""

from __future__ import annotations

from pathlib import Path

# /proc/cpuinfo flag -> name; x86 lists them under "flags", aarch64 under "Features"
INSTRUCTIONS = {"avx512_vnni": "AVX512-VNNI", "avx_vnni": "AVX-VNNI", "amx_int8": "AMX-INT8",
                "asimddp": "ARM dot product (SDOT)", "i8mm": "ARM I8MM"}


def int8_instructions(cpuinfo: str | None = None) -> list[str] | None:
    """Names of the 8-bit dot-product instruction sets the CPU reports; None where the CPU's flags cannot be read
    (no /proc/cpuinfo: not Linux)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return None
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            flags.update(value.split())
    if not flags:
        return None
    return [name for flag, name in INSTRUCTIONS.items() if flag in flags]


def describe(instructions: list[str] | None) -> str:
    """One clause for the export's reasoning."""
    if instructions is None:
        return "this CPU's instruction flags could not be read"
    if not instructions:
        return ("this CPU has no 8-bit dot-product instructions (VNNI on x86, SDOT on ARM), without which int8 "
                "kernels rarely beat float32")
    return f"this CPU has {', '.join(instructions)}"
