"""Which models the fleet serves, and the model a request names.

The models are those of the gateway's settings (WORKER_MODELS, else WHISPER_MODEL), the first being the
default, plus any a worker reports serving (a worker host or a group added live by `scribe scale`). A
request names one in RecognitionOptions.model; empty, `whisper-1` and the catalogue's aliases
(`embedded` for tiny.en) are accepted; anything else is refused with the list of models served.
"""

from __future__ import annotations

import grpc

from services.common.config import Settings
from services.common.errors import RequestError
from services.common.models.catalogue import DEFAULT_ALIASES, served_name
from services.gateway.routing.registry import Registry
from services.gateway.routing.supervisor import group_slug


class FleetModels:
    def __init__(self, settings: Settings, registry: Registry) -> None:
        self._configured = settings.served_models()
        self._registry = registry
        self._seen: list[str] = []  # reported by workers since the gateway started, in order of first report
        # supervisord group slug -> model, for workers that have not reported yet (stopped since we started)
        self.slugs = {group_slug(name): name for name in self._configured}

    @property
    def default(self) -> str:
        return self._configured[0]

    def names(self) -> list[str]:
        """Every model served, the default first."""
        for handle in self._registry.workers.values():
            name = handle.model
            if name and name not in self._configured and name not in self._seen:
                self._seen.append(name)
        return [*self._configured, *self._seen]

    def resolve(self, requested: str) -> str:
        """The served model a request means; INVALID_ARGUMENT (UNKNOWN_MODEL) for a name not served here."""
        text = requested.strip()
        if text in DEFAULT_ALIASES:
            return self.default
        names = self.names()
        name = served_name(text)
        if name in names:
            return name
        listed = ", ".join(f"{n} (default)" if n == self.default else n for n in names)
        shown = text if len(text) <= 40 else text[:40] + "..."
        raise RequestError(
            grpc.StatusCode.INVALID_ARGUMENT,
            "UNKNOWN_MODEL",
            f"model {shown!r} is not served here; the models served are: {listed} (empty or whisper-1 means "
            f"{self.default})",
        )
