"""The cross-language tests reuse the Python SDK's test helpers (uvicorn in a thread, free
ports, `agentlog dev` per backend): ../python/tests goes on sys.path."""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "python" / "tests"))
