"""memstore: out-of-core audio feature stores and shuffled training batches.

Build one HDF5 feature store from a folder of audio, on every core, then
stream shuffled fixed-size time blocks from it under a memory budget.

Example
-------
>>> import memstore as ms                                  # doctest: +SKIP
>>> report = ms.build_store("IRMAS/Training", "irmas.h5")  # doctest: +SKIP
>>> with ms.open_store("irmas.h5") as store:               # doctest: +SKIP
...     for x, y in ms.BatchStream(store, batch_size=32):
...         pass

Public names are imported lazily: ``import memstore`` stays fast (numba and
h5py load only when a name that needs them is first used).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS = {
    # errors
    "MemstoreError": "errors",
    "ParameterError": "errors",
    "AudioDecodeError": "errors",
    "StoreFormatError": "errors",
    "BuildError": "errors",
    "MissingDependencyError": "errors",
    # audio
    "read_audio": "audio",
    "audio_info": "audio",
    "AudioInfo": "audio",
    # features
    "stft": "features",
    "mel_filterbank": "features",
    "MelSpectrogram": "features",
    "Spectrogram": "features",
    "transform_from_json": "features",
    # store
    "build_store": "build",
    "LabelTable": "labeltable",
    "BuildReport": "build",
    "open_store": "store",
    "Store": "store",
    # batches
    "block_table": "blocks",
    "BatchStream": "batches",
    "parse_memory": "pager",
    # evaluation
    "aggregate_by_file": "evaluate",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'memstore' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"memstore.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__


if TYPE_CHECKING:  # pragma: no cover
    from .audio import AudioInfo, audio_info, read_audio
    from .batches import BatchStream
    from .blocks import block_table
    from .build import BuildReport, build_store
    from .errors import (
        AudioDecodeError,
        BuildError,
        MemstoreError,
        MissingDependencyError,
        ParameterError,
        StoreFormatError,
    )
    from .evaluate import aggregate_by_file
    from .features import MelSpectrogram, Spectrogram, mel_filterbank, stft, transform_from_json
    from .labeltable import LabelTable
    from .pager import parse_memory
    from .store import Store, open_store
