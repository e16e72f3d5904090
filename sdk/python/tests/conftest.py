"""Async tests run on asyncio through anyio's pytest plugin (anyio comes with httpx)."""

import pytest


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
