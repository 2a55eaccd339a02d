"""Shared test fixtures: offline hub, deterministic torch, the real WikiWeb2M sample."""
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REALWIKI_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "realwiki"


@pytest.fixture(scope="session")
def realwiki_dir():
    """`../shared/data/realwiki`: real pages in WikiWeb2M format; skip cleanly when absent."""
    if not (REALWIKI_DIR / "wikiweb2m-dev.tfrecord.gz").exists():
        pytest.skip(f"real WikiWeb2M sample not found at {REALWIKI_DIR}")
    return REALWIKI_DIR
