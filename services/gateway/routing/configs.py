"""What each model is (multilingual, languages, what its workers load), for GetConfig and /v1/models.

A worker of the model answers GetConfig; the answer is kept, so a model whose workers are all stopped or
scaled to 0 is still described (with no serving worker), and GetConfig costs one worker call per model
only the first time.
"""

from __future__ import annotations

import asyncio
import contextlib

import grpc

from services.common.errors import RequestError
from services.common.rpclog import REQUEST_ID_HEADER
from services.gateway.routing.models import FleetModels
from services.gateway.routing.registry import Registry
from services.gen import transcription_pb2 as pb


class ModelConfigs:
    def __init__(self, registry: Registry, models: FleetModels) -> None:
        self._registry = registry
        self._models = models
        self._known: dict[str, pb.GetConfigResponse] = {}

    async def _ask(self, model: str, request_id: str) -> pb.GetConfigResponse | None:
        handle = self._registry.pick(model)
        if handle is None:
            return None
        response: pb.GetConfigResponse = await handle.transcription.GetConfig(
            pb.GetConfigRequest(), timeout=5, metadata=((REQUEST_ID_HEADER, request_id),)
        )
        # A worker answers for its model alone.
        self._known[model] = response
        return response

    async def describe(self, model: str, request_id: str) -> pb.GetConfigResponse:
        """GetConfig of one of the model's serving workers (fresh), else the last one known; UNAVAILABLE when
        the model never had a serving worker."""
        answer = await self._ask(model, request_id)
        if answer is None:
            answer = self._known.get(model)
        if answer is None:
            raise RequestError(
                grpc.StatusCode.UNAVAILABLE,
                "MODEL_NOT_SERVING",
                f"no worker of model {model} is serving ({self._registry.summary(model)}), so it cannot be "
                "described yet; start its workers (`scribe scale`)",
            )
        out = pb.GetConfigResponse()
        out.CopyFrom(answer)
        return out

    async def models(self, request_id: str) -> list[pb.ModelInfo]:
        """Every model served, the default first, described by its workers and counted by the registry."""
        names = self._models.names()
        missing = [name for name in names if name not in self._known]
        if missing:
            with contextlib.suppress(grpc.aio.AioRpcError):
                await asyncio.gather(*(self._ask(name, request_id) for name in missing))
        out = []
        for name in names:
            info = pb.ModelInfo(name=name, is_default=name == self._models.default)
            known = self._known.get(name)
            if known is not None:
                info.description = known.model
                info.multilingual = known.multilingual
                info.language_codes.extend(known.language_codes)
            workers = self._registry.of(name)
            info.workers = len(workers)
            info.serving_workers = sum(1 for w in workers if w.serving)
            info.loaded_workers = sum(1 for w in workers if w.serving and w.loaded)
            out.append(info)
        return out
