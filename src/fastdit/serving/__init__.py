"""``fastdit serve``: an OpenAI-style video generation server with a durable job queue.

    fastdit serve --model Wan2.1-T2V-1.3B-Diffusers        # http://127.0.0.1:8000/

    from fastdit.serving import Client
    client = Client("http://127.0.0.1:8000")
    job = client.create("a red fox running through snow", size="832x480", seconds=5)
    client.download(client.wait(job["id"])["id"], "fox.mp4")

Modules: :mod:`~fastdit.serving.app` (HTTP routes), :mod:`~fastdit.serving.fields` (the request
field table and its validation), :mod:`~fastdit.serving.store` (SQLite jobs),
:mod:`~fastdit.serving.supervisor` and :mod:`~fastdit.serving.worker` (worker processes),
:mod:`~fastdit.serving.generation` (the one pipeline call), :mod:`~fastdit.serving.client`.
Nothing heavy is imported until it is used.
"""

from __future__ import annotations


def __getattr__(name):
    if name in ("Client", "APIError"):
        from fastdit.serving import client

        return getattr(client, name)
    if name == "ServeConfig":
        from fastdit.serving.options import ServeConfig

        return ServeConfig
    raise AttributeError(f"module 'fastdit.serving' has no attribute {name!r}")


__all__ = ["APIError", "Client", "ServeConfig"]
