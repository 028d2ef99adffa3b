"""The ``hf`` format: a :class:`datasets.Dataset` already in (or mappable onto) the schema.

Sources: a ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk`` folder (e.g. written by
:func:`~pluralign.data.export.export_preferences`; ``split`` picks a DatasetDict's split, default
``train``), an in-memory ``Dataset`` (passed through as it is), or any Hub id that no other
format claims. It takes the generic options (:class:`~.generic.GenericOptions`).
"""

from __future__ import annotations

from pathlib import Path

import datasets

from pluralign.data.formats.base import Format
from pluralign.data.formats.generic import GenericOptions, load_hub_dataset
from pluralign.data.schema import schema_error
from pluralign.errors import ConfigError


def is_saved_dataset(folder: Path) -> bool:
    """A ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk`` folder."""
    return folder.is_dir() and (
        ((folder / "state.json").is_file() and (folder / "dataset_info.json").is_file())
        or (folder / "dataset_dict.json").is_file())


def load_from_disk(path: Path, options: GenericOptions) -> datasets.Dataset:
    """The dataset of a ``save_to_disk`` folder (a DatasetDict's ``split``, default train)."""
    try:
        loaded = datasets.load_from_disk(str(path))
    except (OSError, ValueError) as exc:
        raise schema_error(str(path), None, None, f"unreadable save_to_disk folder ({exc})") \
            from exc
    if isinstance(loaded, datasets.DatasetDict):
        name = options.split or "train"
        if name not in loaded:
            raise ConfigError(f"{path}: no split {name!r}; splits: {list(loaded)}")
        return loaded[name]
    if options.split not in (None, "train"):
        raise ConfigError(f"split={options.split!r}: {path} holds a single Dataset")
    return loaded


FORMAT = Format("hf", GenericOptions,
                "a Dataset.save_to_disk folder (or an in-memory Dataset; any other Hub id)",
                is_saved_dataset, load_from_disk, load_hub_dataset)
