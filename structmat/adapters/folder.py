"""The folder format of saved MoRe adapters: PEFT's layout, written as one unit, read verified.

A saved adapter is PEFT's folder: ``adapter_config.json`` and ``adapter_model.safetensors`` with
PEFT's keys (``base_model.model.<layer>.more_update.blkdiag1``, ``base_model.model.<head>.weight``),
the adapter named ``"default"`` in the folder itself and any other in a subfolder named after it.
``PeftModel.from_pretrained(base, folder)`` loads it. What this module adds:

- **One unit, also for several adapters.** Every save writes all its files into a fresh folder
  ``.structmat-saves/<save id>/`` (one subfolder per adapter), then replaces the manifest
  ``structmat_adapters.json`` in one rename: the manifest names the complete set, so a crash
  at any instant leaves the folder with the old set or the new one. PEFT's layout is then made
  to point at the new files (hard links, each replaced in one rename). The previous save's
  files are kept until the next save, so a reader that read the manifest a moment earlier still
  finds them; :func:`read_adapters` also re-reads the manifest if they are gone.
- **Read once, verified.** Each weights file carries its config and the SHA-256 of the config and
  of the tensors in its metadata; a read takes the bytes once and checks both hashes.

Folders written by earlier structmat versions (without PEFT's keys, :mod:`.compat`) and by
``PeftModel.save_pretrained`` read too.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import secrets
import shutil
import time
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from .compat import PEFT_PREFIX, config_dict_from_any, is_legacy_config, state_from_legacy
from .config import MoReConfig
from .layer import check_adapter_name
from .storage import TMP_PREFIX, TMP_SUFFIX, write_atomically

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
MANIFEST_NAME = "structmat_adapters.json"
SAVES_DIR = ".structmat-saves"
DEFAULT_ADAPTER = "default"
FORMAT_VERSION = "3"
KEEP_SAVES = 2  # the current save and the one before (for readers in flight)
_MAX_HEADER = 100 * 2**20


@dataclasses.dataclass
class SavedAdapter:
    """One adapter as read from a folder: its config and its tensors (CPU, PEFT's keys)."""

    path: Path
    config: MoReConfig
    state: dict[str, torch.Tensor]
    save_id: str | None = None  # the save_adapter call that wrote it (None: not written by save_adapter)

    @property
    def layers(self) -> list[str]:
        """The adapted layers' names (relative to the model that carries them)."""
        out = []
        for key in self.state:
            owner, sep, _ = key.removeprefix(PEFT_PREFIX).partition(".more_update.")
            if sep and owner not in out:
                out.append(owner)
        return out


# -- state -----------------------------------------------------------------------------------------


def tensors_sha256(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 over every tensor's name, dtype, shape and bytes, in name order."""
    digest = hashlib.sha256()
    for key in sorted(state):
        t = state[key].detach().contiguous().cpu()
        digest.update(f"{key}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def check_path(path: object) -> Path:
    if not isinstance(path, (str, os.PathLike)) or isinstance(path, bytes):
        raise TypeError(f"path must be a folder path (str or os.PathLike), got {type(path).__name__}")
    return Path(path)


def adapter_folder(path: str | os.PathLike, adapter_name: str) -> Path:
    """Where PEFT puts ``adapter_name`` under ``path``: the folder itself for ``"default"``,
    else the subfolder named after it."""
    return Path(path) if adapter_name == DEFAULT_ADAPTER else Path(path) / adapter_name


# -- saving ----------------------------------------------------------------------------------------


def weights_bytes(text: str, state: dict[str, torch.Tensor], save_id: str) -> bytes:
    meta = {
        "format": "pt",
        "structmat_format": FORMAT_VERSION,
        "structmat_config": text,
        "structmat_config_sha256": _sha256(text),
        "structmat_tensors_sha256": tensors_sha256(state),
        "structmat_save_id": save_id,
    }
    return save_safetensors(state, metadata=meta)


def write_save(root: Path, files: dict[str, tuple[str, dict]], replace_one: bool) -> None:
    """Write one save into ``root`` (held locked): version folder, manifest, PEFT layout, sweep."""
    save_id = f"{time.time_ns():020d}-{secrets.token_hex(4)}"
    version = root / SAVES_DIR / save_id
    listed = list(files)
    previous = read_manifest(root)
    if replace_one and previous is not None and previous.get("folder"):
        listed = list(dict.fromkeys([*previous["adapters"], *files]))
        old = root / previous["folder"]
        for name in previous["adapters"]:  # the folder's other adapters move into this save as they are
            if name not in files:
                text, state = _reread(old / name)
                files = {**files, name: (text, state)}
    try:
        for name in listed:
            text, state = files[name]
            folder = version / name
            folder.mkdir(parents=True, exist_ok=True)
            write_atomically(folder / WEIGHTS_NAME, weights_bytes(text, state, save_id))
            write_atomically(folder / CONFIG_NAME, text.encode())
        manifest = {
            "adapters": listed,
            "save_id": save_id,
            "folder": f"{SAVES_DIR}/{save_id}",
            "format": FORMAT_VERSION,
        }
        write_atomically(root / MANIFEST_NAME, (json.dumps(manifest, indent=2) + "\n").encode())  # the switch
    except BaseException:  # the folder keeps its last save, and nothing of this one
        shutil.rmtree(version, ignore_errors=True)
        with contextlib.suppress(OSError):
            (root / SAVES_DIR).rmdir()  # only if empty: the first save into this folder
        raise
    for name in listed:  # PEFT's layout, for PEFT's loaders
        target = adapter_folder(root, name)
        target.mkdir(parents=True, exist_ok=True)
        for file in (WEIGHTS_NAME, CONFIG_NAME):
            _link_atomically(version / name / file, target / file)
    saves = sorted(p for p in (root / SAVES_DIR).iterdir() if p.is_dir())
    for stale in saves[: max(0, len(saves) - KEEP_SAVES)]:
        shutil.rmtree(stale, ignore_errors=True)


def _reread(folder: Path) -> tuple[str, dict[str, torch.Tensor]]:
    data = (folder / WEIGHTS_NAME).read_bytes()
    meta = header_metadata(data, folder / WEIGHTS_NAME)
    return meta["structmat_config"], load_safetensors(data)


def _link_atomically(src: Path, dst: Path) -> None:
    """``dst`` becomes the file ``src`` (a hard link, or a copy where links are not possible),
    replaced in one rename."""
    tmp = dst.parent / f"{TMP_PREFIX}{dst.name}-{secrets.token_hex(8)}{TMP_SUFFIX}"
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    try:
        os.replace(tmp, dst)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


# -- reading ---------------------------------------------------------------------------------------


def read_manifest(path: Path) -> dict | None:
    """``structmat_adapters.json`` of folder ``path`` (``None`` where there is none)."""
    file = Path(path) / MANIFEST_NAME
    try:
        data = json.loads(file.read_text())
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{file} is corrupt: {err}") from None
    names = data.get("adapters") if isinstance(data, dict) else None
    if not isinstance(names, list) or not isinstance(data.get("save_id"), str):
        raise ValueError(f"{file} is corrupt: no list of adapters and save id")
    for name in names:
        try:
            check_adapter_name(name)
        except ValueError as err:
            raise ValueError(f"{file} lists an invalid adapter name: {err}") from None
    folder = data.get("folder")
    if folder is not None and (not isinstance(folder, str) or not folder.startswith(f"{SAVES_DIR}/") or ".." in folder):
        raise ValueError(f"{file} is corrupt: its folder {folder!r} is not one of {SAVES_DIR}")
    return data


def header_metadata(data: bytes, where: Path) -> dict[str, str]:
    size = int.from_bytes(data[:8], "little") if len(data) >= 8 else -1
    if not 0 < size <= min(len(data) - 8, _MAX_HEADER):
        raise ValueError(f"{where} is not a safetensors file (truncated or corrupt header)")
    try:
        header = json.loads(data[8 : 8 + size])
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{where} has a corrupt header: {err}") from None
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    return meta if isinstance(meta, dict) else {}


def foreign_config_error(path: Path) -> None:
    """Raise a plain explanation when ``path`` holds another PEFT method's adapter."""
    try:
        data = json.loads((path / CONFIG_NAME).read_text())
    except (OSError, ValueError):
        return
    peft_type = data.get("peft_type") if isinstance(data, dict) else None
    if peft_type not in (None, "MORE"):
        raise ValueError(
            f"{str(path)!r} holds a PEFT {peft_type} adapter, not a MoRe adapter: load it with peft, e.g. "
            f"peft.PeftModel.from_pretrained(base_model, {str(path)!r})"
        )


def _parse_config(text: str, where: Path) -> tuple[MoReConfig, dict]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"the adapter config in {where} is not valid JSON: {err}") from None
    if not isinstance(data, dict):
        raise ValueError(f"the adapter config in {where} is not a JSON object")
    try:
        return MoReConfig.from_peft_type(**config_dict_from_any(data, set(MoReConfig.__dataclass_fields__))), data
    except (TypeError, ValueError) as err:
        raise ValueError(f"the adapter config in {where} is invalid: {err}") from None


def config_from_file(file: Path) -> MoReConfig:
    """The config in an ``adapter_config.json`` (errors name the file)."""
    foreign_config_error(file.parent)
    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"the adapter config in {file} is not UTF-8 text: {err}") from None
    return _parse_config(text, file)[0]


def missing_weights_error(path: Path) -> FileNotFoundError:
    subfolders = sorted(p.name for p in path.iterdir() if (p / WEIGHTS_NAME).is_file()) if path.is_dir() else []
    hint = f"; it has adapters in the subfolders {subfolders} (load them with adapter_name=...)" if subfolders else ""
    return FileNotFoundError(f"no {WEIGHTS_NAME} in {str(path)!r}{hint}")


def read_adapter(path: str | os.PathLike) -> SavedAdapter:
    """Read and verify the adapter saved in folder ``path`` (bytes read once; see the module doc).
    A folder written by :func:`save_adapter` is read from the files its manifest names."""
    path = check_path(path)
    manifest = read_manifest(path)
    if manifest is not None and manifest.get("folder") and DEFAULT_ADAPTER in manifest["adapters"]:
        with contextlib.suppress(FileNotFoundError):  # swept by a newer save: PEFT's layout then has its files
            return _read_one(path / manifest["folder"] / DEFAULT_ADAPTER, shown=path)
    return _read_one(path, shown=path)


def _read_one(folder: Path, shown: Path) -> SavedAdapter:
    weights = folder / WEIGHTS_NAME
    if not weights.is_file():
        foreign_config_error(folder)
        raise missing_weights_error(shown)
    data = weights.read_bytes()
    meta = header_metadata(data, weights)
    source = weights  # the file the config text comes from (named in its errors)
    if "structmat_config" in meta:
        text = meta["structmat_config"]
        if meta.get("structmat_config_sha256") != _sha256(text):
            raise ValueError(f"{weights} is corrupt: its config does not match its stored hash")
    else:  # PEFT's own save, or the first structmat format (config only in the JSON file)
        foreign_config_error(folder)
        cfg = source = folder / CONFIG_NAME
        if not cfg.is_file():
            raise FileNotFoundError(f"no {CONFIG_NAME} in {str(shown)!r}")
        try:
            text = cfg.read_text(encoding="utf-8")
        except UnicodeDecodeError as err:
            raise ValueError(f"the adapter config in {cfg} is not UTF-8 text: {err}") from None
        if meta.get("structmat_config_sha256") not in (None, _sha256(text)):
            raise ValueError(f"{CONFIG_NAME} and {WEIGHTS_NAME} in {str(shown)!r} come from different saves")
    config, raw = _parse_config(text, source)
    try:
        state = load_safetensors(data)
    except (SafetensorError, ValueError, RuntimeError) as err:
        raise ValueError(f"{weights} is corrupt: {err}") from None
    stored = meta.get("structmat_tensors_sha256")
    if stored is not None and stored != tensors_sha256(state):
        raise ValueError(f"{weights} is corrupt: its tensors do not match their stored hash")
    if is_legacy_config(raw):
        state = state_from_legacy(state, list(raw.get("resolved_targets") or raw.get("target_shapes") or []))
    elif not all(k.startswith(PEFT_PREFIX) for k in state):  # saved from a model adapted in place by PEFT
        state = {k if k.startswith(PEFT_PREFIX) else PEFT_PREFIX + k: v for k, v in state.items()}
    return SavedAdapter(shown, config, state, meta.get("structmat_save_id"))


def saved_adapter_names(path: str | os.PathLike) -> list[str]:
    """The adapters saved under ``path``: those its manifest lists (the last save into it); for a
    folder without one, ``"default"`` if the folder itself holds an adapter, then every subfolder
    that holds one (PEFT's layout), whose names must then be valid adapter names."""
    path = check_path(path)
    manifest = read_manifest(path)
    if manifest is not None:
        return list(manifest["adapters"])
    names = [DEFAULT_ADAPTER] if (path / WEIGHTS_NAME).is_file() else []
    if path.is_dir():
        subfolders = sorted(
            p.name for p in path.iterdir() if p.is_dir() and not p.name.startswith(".") and (p / WEIGHTS_NAME).is_file()
        )
        for name in subfolders:
            try:
                check_adapter_name(name)
            except ValueError as err:
                raise ValueError(
                    f"{str(path / name)!r} holds an adapter, but its folder name is no adapter name ({err}); move it "
                    f"out of {str(path)!r}, or load the adapters one by one with load_adapter"
                ) from None
        names += subfolders
    return names


def read_adapters(path: str | os.PathLike, attempts: int = 5) -> dict[str, SavedAdapter]:
    """Every adapter saved under ``path``, one complete set (see the module doc)."""
    path = check_path(path)
    for _ in range(attempts):
        manifest = read_manifest(path)
        if manifest is None or not manifest.get("folder"):
            names = saved_adapter_names(path)
            if not names:
                foreign_config_error(path)
                raise missing_weights_error(path)
            saved = {n: read_adapter(adapter_folder(path, n)) for n in names}
            ids = {s.save_id for s in saved.values()}
            if len(ids) > 1:
                raise ValueError(
                    f"the adapters in {str(path)!r} come from different saves ("
                    + ", ".join(f"{n}: {s.save_id or 'unknown'}" for n, s in saved.items())
                    + "): a save into it stopped half way; save again, or load_adapter one of them"
                )
            return saved
        version = path / manifest["folder"]
        try:
            saved = {n: _read_one(version / n, shown=adapter_folder(path, n)) for n in manifest["adapters"]}
        except FileNotFoundError:
            continue  # a newer save swept this one meanwhile: read the manifest again
        if {s.save_id for s in saved.values()} != {manifest["save_id"]}:
            raise ValueError(f"{path / MANIFEST_NAME} and the files it names disagree: the folder was edited by hand")
        return saved
    raise RuntimeError(f"{str(path)!r} kept changing while it was read ({attempts} attempts); a saver is looping?")
