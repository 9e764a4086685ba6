from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

from retrieval import EmbeddingModel, load_model  # noqa: E402
from tests.imagegen import write_images  # noqa: E402


@pytest.fixture(scope="session")
def tiny_model() -> EmbeddingModel:
    return load_model("test-tiny", device="cpu")


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory) -> Path:
    """40 distinct images in six formats, some in a sub-folder (read-only for tests)."""
    folder = tmp_path_factory.mktemp("collection")
    write_images(folder, 40)
    return folder


@pytest.fixture
def fresh_folder(tmp_path) -> Path:
    """A collection a test may change."""
    folder = tmp_path / "photos"
    write_images(folder, 24)
    return folder
