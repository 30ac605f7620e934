"""Checks of the machine a run is about to train on, made before any worker trains.

torch.compile fails at the first compiled step, deep in a traceback, when the machine cannot build
kernels: on the CPU, inductor compiles C++ (it looks for $CXX, else g++); on a GPU, Triton builds
its kernel launchers with a C compiler ($CC, else gcc or clang). `compile_problem` asks the same
questions the way torch and Triton ask them, so train.compile=true fails before step 1, in one line.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import torch

from ganaug.errors import UserError, one_line


def compile_problem(device: torch.device) -> str | None:
    """Why torch.compile could not build kernels for `device` on this machine; None if nothing is missing."""
    if device.type == "cpu":
        try:
            from torch._inductor.cpp_builder import get_cpp_compiler

            get_cpp_compiler()  # runs `$CXX --version` (or g++), as inductor does before its first build
        except (RuntimeError, OSError, subprocess.SubprocessError) as exc:  # InvalidCxxCompiler is a RuntimeError
            return f"it builds CPU kernels with a C++ compiler and found none that runs ({one_line(exc)})"
        return None
    if device.type == "cuda":
        cc = os.environ.get("CC") or shutil.which("gcc") or shutil.which("clang")
        if cc is None:
            return "Triton builds its GPU kernel launchers with a C compiler: CC is not set and neither gcc nor clang is on PATH"
        try:
            subprocess.run([cc, "--version"], capture_output=True, check=True, timeout=60)
        except (OSError, subprocess.SubprocessError) as exc:
            return f"Triton builds its GPU kernel launchers with the C compiler {cc!r}, which does not run ({one_line(exc)})"
    return None


def check_compile(device: torch.device) -> None:
    """train.compile=true on a machine that cannot compile: one line, before any training."""
    problem = compile_problem(device)
    if problem is not None:
        raise UserError(f"train.compile=true: torch.compile cannot run here: {problem}; install a compiler "
                        "(e.g. apt-get install g++, or point CXX / CC at one) or set train.compile=false")
