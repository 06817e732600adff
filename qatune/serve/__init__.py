"""Serving a trained run over HTTP: ``create_app(pipeline)`` (FastAPI) with an async micro-batcher.

Needs the ``serve`` extra (fastapi, uvicorn). See docs/serving.md.
"""

from qatune.serve.app import ApiError, ServeSettings, create_app
from qatune.serve.batcher import BatcherClosed, MicroBatcher

__all__ = ["ApiError", "BatcherClosed", "MicroBatcher", "ServeSettings", "create_app"]
