"""Shared pytest fixtures: where the real data samples live, and a fixed torch state."""
import os
from pathlib import Path
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]

@pytest.fixture(scope="session")
def shared_dir() -> Path:
    "The `shared/` folder beside the repo (override with PAT_SHARED); tests needing it are skipped when it is absent."
    path = Path(os.environ.get("PAT_SHARED", REPO.parent / "shared"))
    if not (path / "data").is_dir():
        pytest.skip(f"real data samples not found under {path}/data (set PAT_SHARED)")
    return path

@pytest.fixture(autouse=True)
def _torch_state():
    torch.manual_seed(0)
    torch.set_num_threads(1)
    yield
