"""build.inference_model: eval mode, the same network, and a compiled forward whose inductor
cache lands in the folder the caller passes (a run's cache/)."""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn

from iddpm.build import inference_model


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1)
        self.drop = nn.Dropout(0.5)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.drop(self.conv(x)) * t[:, None, None, None]


def test_eager_inference_model_is_the_model_in_eval_mode() -> None:
    model = Tiny().train()
    assert inference_model(model) is model and not model.training


@pytest.mark.slow
def test_compiled_inference_model_matches_and_caches_in_the_given_folder(
    tmp_path, monkeypatch
) -> None:
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    torch.manual_seed(0)
    model = Tiny()
    x, t = torch.randn(3, 1, 8, 8), torch.rand(3)
    compiled = inference_model(model, compile=True, cache_dir=tmp_path / "cache")
    with torch.no_grad():
        torch.testing.assert_close(compiled(x, t), model(x, t), rtol=1e-5, atol=1e-6)
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str((tmp_path / "cache").resolve())
    assert any((tmp_path / "cache").iterdir())
