"""Run-time helpers of the loop: compiling the model only where a compiler can build it."""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

from unitransformer.engine import runtime


def test_compile_falls_back_to_eager_on_a_cpu_without_a_cxx_compiler(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    model = nn.Linear(4, 2)
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setattr(runtime.shutil, "which", lambda name: None)
    with caplog.at_level(logging.WARNING, logger=runtime.__name__):
        out = runtime.compile_model(model, torch.device("cpu"))
    assert out is model
    assert "no C++ compiler found (tried g++, c++, clang++)" in caplog.text


def test_compile_wraps_the_model_when_a_compiler_is_there(monkeypatch: pytest.MonkeyPatch) -> None:
    model = nn.Linear(4, 2)
    seen: list[str] = []
    monkeypatch.setenv("CXX", "my-c++ -O2")
    monkeypatch.setattr(runtime.shutil, "which", lambda name: seen.append(name) or "/bin/" + name)
    out = runtime.compile_model(model, torch.device("cpu"))
    assert out is not model and out._orig_mod is model  # torch.compile's wrapper, built lazily
    assert seen == ["my-c++"]  # $CXX is honoured, its flags dropped


def test_compile_specializes_each_input_shape(monkeypatch: pytest.MonkeyPatch) -> None:
    # Progressive resizing feeds two image sizes: a static graph per size, not a dynamic one.
    calls: list[dict[str, object]] = []
    monkeypatch.setattr(runtime.shutil, "which", lambda name: "/bin/" + name)
    monkeypatch.setattr(runtime.torch, "compile", lambda model, **kw: calls.append(kw) or model)
    runtime.compile_model(nn.Linear(4, 2), torch.device("cpu"))
    assert calls == [{"dynamic": False}]
