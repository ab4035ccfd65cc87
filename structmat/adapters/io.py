"""Saving and loading MoRe adapters: PEFT's folder layout, one-unit saves, verified loads.

A saved adapter is a folder with ``adapter_model.safetensors`` (keys ``{layer}.blkdiag1`` /
``{layer}.blkdiag2`` and ``{module to save}.{parameter}``, no adapter name, as PEFT) and
``adapter_config.json``. As PEFT, the adapter named ``"default"`` goes into the folder itself
and any other adapter into a subfolder named after it.

What makes it trustworthy:

- **One unit.** The weights file carries the whole config in its metadata, with the SHA-256 of
  the config and of the tensors (names, dtypes, shapes and bytes). That file is replaced in one
  rename (:mod:`.storage`), so after a crash at any instant, or with concurrent savers, the folder
  holds one complete adapter, the old or a new one. ``adapter_config.json`` is a readable copy
  written after it; loading trusts the weights file.
- **Read once, verified.** A load reads the file's bytes once and parses them (a load racing a
  save gets one save or the other, never a mix) and checks both hashes, so a mixed or corrupted
  file (a flipped byte) is an error that names the file, not wrong tensors.
- **Checked before touching.** :func:`load_adapter` checks the architecture, every layer's
  shape, the adapter already in the model under that name, and every tensor before it changes
  anything: a failed load leaves the model as it was. :func:`load_adapters` reads every adapter
  once, checks them all, and loads what it checked.
- **The folder's adapters are those of its last save.** ``structmat_adapters.json`` (written
  last, in one rename) lists the adapters of the last :func:`save_adapter` into the folder, and
  every weights file records the save it belongs to (``structmat_save_id``). :func:`load_adapters`
  loads the listed adapters only: adapters of earlier saves under other names, and adapters saved
  into subfolders of their own (``checkpoint-N``), are not loaded. Several adapters are written
  one file at a time: if such a save stops half way (a crash, a full disk), the listed files come
  from two saves, and :func:`load_adapters` says so (``ValueError``) instead of loading the mix.
  A folder holding one adapter always loads (the old or the new one).

Folders written before the config moved into the weights file (``structmat_config_sha256``
only) still load: then the config comes from ``adapter_config.json`` and must match its hash.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import secrets
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import nn

from ..monarch import MonarchShape
from .config import MoReConfig
from .layer import MoReLinear, base_shape, check_adapter_name
from .model import (
    ACTIVE_ATTR,
    CONFIGS_ATTR,
    _add_adapter,
    adapter_configs,
    more_layers,
    require_adapter,
    saved_modules,
    set_adapter,
    unwrap_model,
)
from .saved_modules import ModulesToSaveWrapper
from .sharding import full_tensor, shard_like
from .sharding import is_main_process as main_process
from .storage import locked_folder, write_atomically
from .targets import is_linear

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
MANIFEST_NAME = "structmat_adapters.json"
DEFAULT_ADAPTER = "default"
FORMAT_VERSION = "2"
_MAX_HEADER = 100 * 2**20


@dataclasses.dataclass
class SavedAdapter:
    """One adapter as read from a folder: its config and its tensors (on CPU)."""

    path: Path
    config: MoReConfig
    state: dict[str, torch.Tensor]
    save_id: str | None = None  # the save_adapter call that wrote it (None: written before save ids)


def adapter_state_dict(model: nn.Module, adapter_name: str | None = None) -> dict[str, torch.Tensor]:
    """An adapter's tensors as saved: Monarch factors and its copies of the modules to save,
    detached, whole, contiguous, on CPU. Default: the active adapter. On a model sharded with
    FSDP2 the shards are gathered, so every process must call this."""
    model = unwrap_model(model)
    name = adapter_name if adapter_name is not None else getattr(model, ACTIVE_ATTR, None)
    state = {}
    for layer_name, layer in more_layers(model).items():
        if name in layer.more:
            state[f"{layer_name}.blkdiag1"] = layer.more[name].blkdiag1
            state[f"{layer_name}.blkdiag2"] = layer.more[name].blkdiag2
        if name in layer.more_init:  # a projection-initialised adapter: its M at init
            state[f"{layer_name}.init_blkdiag1"] = layer.more_init[name].blkdiag1
            state[f"{layer_name}.init_blkdiag2"] = layer.more_init[name].blkdiag2
    for mod_name, wrapper in saved_modules(model).items():
        if name in wrapper.modules_to_save:  # parameters and persistent buffers (running statistics)
            for key, t in wrapper.modules_to_save[name].state_dict().items():
                state[f"{mod_name}.{key}"] = t
    return {k: full_tensor(v.detach()).contiguous().cpu() for k, v in state.items()}


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


def _check_path(path: object) -> Path:
    """``path`` as a ``Path``; anything but a str or ``os.PathLike`` raises naming ``path``."""
    if not isinstance(path, (str, os.PathLike)) or isinstance(path, bytes):
        raise TypeError(f"path must be a folder path (str or os.PathLike), got {type(path).__name__}")
    return Path(path)


def adapter_folder(path: str | os.PathLike, adapter_name: str) -> Path:
    """Where ``adapter_name`` lives under ``path``: the folder itself for ``"default"``, else
    the subfolder named after it (PEFT's layout)."""
    return Path(path) if adapter_name == DEFAULT_ADAPTER else Path(path) / adapter_name


def save_adapter(
    model: nn.Module,
    path: str | os.PathLike,
    adapter_name: str | None = None,
    *,
    is_main_process: bool | None = None,
) -> Path:
    """Save the model's adapters (or only ``adapter_name``) under directory ``path``.

    Each adapter is one unit (see the module doc): ``"default"`` in ``path``, any other in
    ``path/<name>``. ``path/structmat_adapters.json`` then lists the adapters of this save (with
    ``adapter_name``: the folder's adapters, this one replaced or added), which is what
    :func:`load_adapters` loads. Returns ``path``. Writers to one folder take turns; leftovers of
    killed saves are removed by the next save.

    Several processes (``torchrun``): ``is_main_process`` (default: rank 0 of the default
    process group) says which one writes. On a model sharded with FSDP2 (``fully_shard``) every
    process must call ``save_adapter``, since gathering the shards is collective; the files are
    the ones the unsharded model would write. There is no barrier: before another process reads
    the folder, synchronise (``torch.distributed.barrier()``).
    """
    model = unwrap_model(model)
    _check_path(path)
    if adapter_name is not None:
        check_adapter_name(adapter_name)
    require_adapter(model)
    configs = adapter_configs(model)
    names = list(configs) if adapter_name is None else [adapter_name]
    for name in names:
        if name not in configs:
            raise ValueError(f"model has no adapter named {name!r}; its adapters: {list(configs)}")
    files = {}
    for name in names:  # everything serialised before the folder is touched
        text = configs[name].to_json()
        state = adapter_state_dict(model, name)
        files[name] = text, state
    if not (main_process() if is_main_process is None else is_main_process):
        return Path(path)
    with locked_folder(path) as root:
        listed, save_id = names, secrets.token_hex(16)
        manifest = _read_manifest(root)
        if adapter_name is not None and manifest is not None:  # one adapter of the folder's save
            listed, save_id = list(dict.fromkeys([*manifest["adapters"], adapter_name])), manifest["save_id"]
        for name, (text, state) in files.items():
            meta = {
                "format": "pt",
                "structmat_format": FORMAT_VERSION,
                "structmat_config": text,
                "structmat_config_sha256": _sha256(text),
                "structmat_tensors_sha256": tensors_sha256(state),
                "structmat_save_id": save_id,
            }
            data = save_safetensors(state, metadata=meta)
            folder = adapter_folder(root, name)
            with locked_folder(folder) if folder != root else contextlib.nullcontext(root):
                write_atomically(folder / WEIGHTS_NAME, data)
                write_atomically(folder / CONFIG_NAME, text.encode())
        manifest = {"adapters": listed, "save_id": save_id}
        write_atomically(root / MANIFEST_NAME, (json.dumps(manifest, indent=2) + "\n").encode())
    return Path(path)


def _read_manifest(path: Path) -> dict | None:
    """``structmat_adapters.json`` of folder ``path`` (``None`` where there is none: a folder
    saved before it existed, or assembled by hand); the names in it are checked."""
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
    return data


def _header_metadata(data: bytes, where: Path) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors file's header (its first 8 bytes give the length)."""
    size = int.from_bytes(data[:8], "little") if len(data) >= 8 else -1
    if not 0 < size <= min(len(data) - 8, _MAX_HEADER):
        raise ValueError(f"{where} is not a safetensors file (truncated or corrupt header)")
    try:
        header = json.loads(data[8 : 8 + size])
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{where} has a corrupt header: {err}") from None
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    return meta if isinstance(meta, dict) else {}


def _foreign_config_error(path: Path) -> None:
    """Raise a plain explanation when ``path`` holds another library's adapter."""
    cfg = path / CONFIG_NAME
    try:
        data = json.loads(cfg.read_text())
    except (OSError, ValueError):
        return
    peft_type = data.get("peft_type") if isinstance(data, dict) else None
    if peft_type not in (None, "MORE"):
        raise ValueError(
            f"{str(path)!r} holds a PEFT {peft_type} adapter, not a MoRe adapter: load it with peft, "
            f"e.g. peft.PeftModel.from_pretrained(base_model, {str(path)!r}) (structmat.adapters "
            f"loads only adapters saved by save_adapter)"
        )


def _read_config_text(cfg: Path) -> str:
    try:
        return cfg.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"the adapter config in {cfg} is not UTF-8 text: {err}") from None


def _parse_config(text: str, where: Path) -> MoReConfig:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"the adapter config in {where} is not valid JSON: {err}") from None
    if not isinstance(data, dict):
        raise ValueError(f"the adapter config in {where} is not a JSON object")
    try:
        return MoReConfig.from_dict(data)
    except (TypeError, ValueError) as err:
        raise ValueError(f"the adapter config in {where} is invalid: {err}") from None


def _missing_weights_error(path: Path) -> FileNotFoundError:
    subfolders = sorted(p.name for p in path.iterdir() if (p / WEIGHTS_NAME).is_file()) if path.is_dir() else []
    hint = f"; it has adapters in the subfolders {subfolders} (load them with adapter_name=...)" if subfolders else ""
    return FileNotFoundError(f"no {WEIGHTS_NAME} in {str(path)!r}{hint}")


def _config_from(meta: dict[str, str], path: Path) -> MoReConfig:
    """The config a weights file was saved with: its own copy, or (older saves) the JSON file,
    which must then be the one that file was saved with."""
    weights = path / WEIGHTS_NAME
    if "structmat_config" in meta:
        text = meta["structmat_config"]
        if meta.get("structmat_config_sha256") != _sha256(text):
            raise ValueError(f"{weights} is corrupt: its config does not match its stored hash")
        return _parse_config(text, weights)
    _foreign_config_error(path)
    cfg_path = path / CONFIG_NAME
    if not cfg_path.is_file():
        raise FileNotFoundError(f"no {CONFIG_NAME} in {str(path)!r}")
    text = _read_config_text(cfg_path)
    if meta.get("structmat_config_sha256") not in (None, _sha256(text)):
        raise ValueError(f"{CONFIG_NAME} and {WEIGHTS_NAME} in {str(path)!r} come from different saves")
    return _parse_config(text, cfg_path)


def read_adapter(path: str | os.PathLike) -> SavedAdapter:
    """Read and verify the adapter saved in folder ``path`` (bytes read once; see the module doc)."""
    path = _check_path(path)
    weights = path / WEIGHTS_NAME
    if not weights.is_file():
        _foreign_config_error(path)
        raise _missing_weights_error(path)
    data = weights.read_bytes()
    meta = _header_metadata(data, weights)
    config = _config_from(meta, path)
    try:
        state = load_safetensors(data)
    except (SafetensorError, ValueError, RuntimeError) as err:
        raise ValueError(f"{weights} is corrupt: {err}") from None
    stored = meta.get("structmat_tensors_sha256")
    if stored is not None and stored != tensors_sha256(state):
        raise ValueError(f"{weights} is corrupt: its tensors do not match their stored hash")
    return SavedAdapter(path, config, state, meta.get("structmat_save_id"))


def read_adapter_config(path: str | os.PathLike) -> MoReConfig:
    """The :class:`MoReConfig` of the adapter saved in folder ``path`` (read from the weights
    file, which is what :func:`load_adapter` uses; unknown keys dropped with a warning).
    Refuses another library's adapter (``peft_type`` other than MoRe's)."""
    path = _check_path(path)
    weights = path / WEIGHTS_NAME
    if not weights.is_file():
        _foreign_config_error(path)
        cfg = path / CONFIG_NAME
        if cfg.is_file():  # the config alone (a folder being assembled by hand, say)
            return _parse_config(_read_config_text(cfg), cfg)
        raise _missing_weights_error(path)
    with open(weights, "rb") as f:  # the header only: the tensors can be large
        head = f.read(8)
        size = int.from_bytes(head, "little") if len(head) == 8 else -1
        data = head + f.read(min(max(size, 0), _MAX_HEADER))
    return _config_from(_header_metadata(data, weights), path)


def _expected_shapes(model: nn.Module, config: MoReConfig, adapter_name: str) -> dict[str, tuple[int, ...]]:
    expected: dict[str, tuple[int, ...]] = {}
    for name, (in_f, out_f) in config.target_shapes.items():
        st = MonarchShape.for_more(in_f, out_f, config.nblocks, config.rank, config.layout)
        for prefix in ("", "init_") if config.init == "projection" else ("",):
            expected[f"{name}.{prefix}blkdiag1"] = (st.k, st.q, st.p)
            expected[f"{name}.{prefix}blkdiag2"] = (st.l, st.s, st.r)
    for mod_name in config.resolved_modules_to_save:
        for key, t in _saved_module(model, mod_name).state_dict().items():
            expected[f"{mod_name}.{key}"] = tuple(t.shape)
    return expected


def _saved_module(model: nn.Module, name: str) -> nn.Module:
    """The module ``name`` as the base model has it (the original inside a wrapper)."""
    module = model.get_submodule(name)
    return module.original_module if isinstance(module, ModulesToSaveWrapper) else module


def _buffer_keys(model: nn.Module, config: MoReConfig) -> set[str]:
    """The saved keys of the modules to save that are buffers: adapters saved before buffers
    were saved lack them, and then the model's own buffers stay."""
    keys = set()
    for mod_name in config.resolved_modules_to_save:
        module = _saved_module(model, mod_name)
        params = {n for n, _ in module.named_parameters()}
        keys |= {f"{mod_name}.{k}" for k in module.state_dict() if k not in params}
    return keys


def _loading_problems(model: nn.Module, saved: SavedAdapter, adapter_name: str) -> list[str]:
    """Everything that stops ``saved`` from loading into ``model`` as ``adapter_name``."""
    config = saved.config
    layers = more_layers(model)
    if any(layer.merged for layer in layers.values()):
        return ["the model has a merged adapter (its weights hold W + ΔW); unmerge() it first"]
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if config.base_model_type is not None and model_type != config.base_model_type:
        return [
            f"it was saved for model_type={config.base_model_type!r} ({config.base_model_class}), "
            f"but the model is model_type={model_type!r} ({type(model).__name__})"
        ]
    problems = []
    for name, shape in config.target_shapes.items():
        try:
            module = model.get_submodule(name)
        except AttributeError:
            problems.append(f"missing layer {name!r}")
            continue
        base = module.base_layer if isinstance(module, MoReLinear) else module
        if not is_linear(base):
            problems.append(f"{name!r} is a {type(base).__name__}, not a linear layer")
        elif list(base_shape(base)) != list(shape):
            problems.append(f"{name!r} has shape (in, out)={base_shape(base)}, the adapter expects {tuple(shape)}")
    for mod_name in config.resolved_modules_to_save:
        try:
            model.get_submodule(mod_name)
        except AttributeError:
            problems.append(f"the model has no module {mod_name!r} (modules_to_save)")
    if problems:
        return problems
    try:
        expected = _expected_shapes(model, config, adapter_name)
    except ValueError as err:
        return [f"its config is inconsistent: {err}"]
    buffers = _buffer_keys(model, config)
    missing = sorted(set(expected) - set(saved.state) - buffers)
    extra = sorted(set(saved.state) - set(expected))
    wrong = [k for k in expected if k in saved.state and tuple(saved.state[k].shape) != expected[k]]
    if missing or extra or wrong:
        problems.append(
            f"tensors missing {missing[:5]}, unexpected {extra[:5]}, wrong shape "
            f"{[(k, tuple(saved.state[k].shape), expected[k]) for k in wrong[:5]]}"
        )
    problems += [
        f"{k} is {t.dtype}, not a floating-point tensor"
        for k, t in saved.state.items()
        if k not in buffers and not t.is_floating_point()
    ]
    if adapter_name in adapter_configs(model):  # replace the values of an adapter of the same shapes
        have = {n for n, layer in layers.items() if adapter_name in layer.more}
        if have != set(config.target_shapes):
            problems.append(
                f"the model's adapter {adapter_name!r} is on other layers ({len(have)} layers, the saved one on "
                f"{len(config.target_shapes)}); load it under another adapter_name, or delete_adapter() first"
            )
        else:
            for name in sorted(have):
                for factor in ("blkdiag1", "blkdiag2"):
                    now = tuple(getattr(layers[name].more[adapter_name], factor).shape)
                    if now != expected[f"{name}.{factor}"]:
                        problems.append(
                            f"layer {name!r}: the saved {factor} is {expected[f'{name}.{factor}']} but the model's "
                            f"adapter {adapter_name!r} has {now}; load it under another adapter_name, or "
                            f"delete_adapter() first"
                        )
        for name in sorted(have):  # a projection adapter's residual W - M must be the one it was saved with
            init = layers[name].more_init[adapter_name] if adapter_name in layers[name].more_init else None
            saved_init = saved.state.get(f"{name}.init_blkdiag1")
            if (init is None) != (saved_init is None) or (
                init is not None
                and not (
                    torch.equal(init.blkdiag1.detach().cpu(), saved_init)
                    and torch.equal(init.blkdiag2.detach().cpu(), saved.state[f"{name}.init_blkdiag2"])
                )
            ):
                problems.append(
                    f"layer {name!r}: the model's adapter {adapter_name!r} and the saved one start from different "
                    f"projections M (init='projection'), so their residuals W - M differ; load it into the base model"
                )
                break
        saved_now = set(adapter_configs(model)[adapter_name].resolved_modules_to_save)
        if saved_now != set(config.resolved_modules_to_save):
            problems.append(
                f"the model's adapter {adapter_name!r} saves the modules {sorted(saved_now)}, the saved one "
                f"{sorted(config.resolved_modules_to_save)}"
            )
    return problems


def load_adapter(model: nn.Module, path: str | os.PathLike, adapter_name: str = DEFAULT_ADAPTER) -> nn.Module:
    """Load the adapter saved in folder ``path`` into ``model`` as ``adapter_name``.

    ``model``: a base model (the adapter is applied to exactly the layers it was saved from), or
    one with adapters: a new name adds one, the name of an adapter of the same shapes replaces its
    values (and its dropout). The loaded adapter becomes active. Everything is checked before the
    model is touched (see the module doc); a problem raises ``ValueError`` naming it and leaves
    the model as it was. Returns ``model``.
    """
    outer, model = model, unwrap_model(model)
    check_adapter_name(adapter_name)
    saved = read_adapter(path)
    problems = _loading_problems(model, saved, adapter_name)
    if problems:
        raise ValueError(f"cannot load the adapter in {str(path)!r}: " + "; ".join(problems))
    _load_checked(model, saved, adapter_name)
    set_adapter(model, adapter_name)
    return outer


def _load_checked(model: nn.Module, saved: SavedAdapter, adapter_name: str) -> None:
    """Put ``saved`` (checked by :func:`_loading_problems`) into ``model`` as ``adapter_name``."""
    config = saved.config
    if adapter_name not in adapter_configs(model):
        init_factors = {
            name: (saved.state[f"{name}.init_blkdiag1"], saved.state[f"{name}.init_blkdiag2"])
            for name in config.target_shapes
            if f"{name}.init_blkdiag1" in saved.state
        }
        _add_adapter(
            model,
            adapter_name,
            config,
            4,
            init_factors,
            targets=list(config.target_shapes),  # exactly the saved layers (names, not patterns)
            modules_to_save=list(config.resolved_modules_to_save),
        )
    configs = dict(adapter_configs(model))
    configs[adapter_name] = dataclasses.replace(config)
    setattr(model, CONFIGS_ATTR, configs)
    layers, wrappers = more_layers(model), saved_modules(model)
    copies = {
        m: w.modules_to_save[adapter_name].state_dict()
        for m, w in wrappers.items()
        if adapter_name in w.modules_to_save
    }
    with torch.no_grad():
        for key, tensor in saved.state.items():
            owner, _, leaf = key.rpartition(".")
            if owner in layers and leaf in ("init_blkdiag1", "init_blkdiag2"):
                continue  # the residual was built from them (or checked equal to them)
            if owner in layers and leaf in ("blkdiag1", "blkdiag2"):
                target = getattr(layers[owner].more[adapter_name], leaf)
            else:
                mod_name = next(m for m in copies if key.startswith(m + "."))
                target = copies[mod_name][key[len(mod_name) + 1 :]]  # shares the copy's storage
            target.copy_(shard_like(tensor.to(device=target.device, dtype=target.dtype), target))
    for layer in layers.values():  # the saved dropout, also where the model's adapter had another
        if adapter_name in layer.more_dropout:
            dropout = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()
            layer.more_dropout[adapter_name] = dropout.train(layer.training)
            layer.dropout_position[adapter_name] = config.dropout_position


def saved_adapter_names(path: str | os.PathLike) -> list[str]:
    """The adapters saved under ``path``: those its ``structmat_adapters.json`` lists (the last
    save into it, see the module doc); for a folder without one (saved before it existed, or
    assembled by hand), ``"default"`` if the folder itself holds an adapter, then every subfolder
    that holds one (PEFT's layout), whose names must then be valid adapter names."""
    path = _check_path(path)
    manifest = _read_manifest(path)
    if manifest is not None:
        return list(manifest["adapters"])
    names = [DEFAULT_ADAPTER] if (path / WEIGHTS_NAME).is_file() else []
    if path.is_dir():
        subfolders = sorted(p.name for p in path.iterdir() if p.is_dir() and (p / WEIGHTS_NAME).is_file())
        for name in subfolders:
            try:
                check_adapter_name(name)
            except ValueError as err:
                raise ValueError(
                    f"{str(path / name)!r} holds an adapter, but its folder name is no adapter name ({err}); "
                    f"move it out of {str(path)!r}, or load the adapters one by one with load_adapter"
                ) from None
        names += subfolders
    return names


def load_adapters(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Load every adapter saved under ``path`` (:func:`saved_adapter_names`), each under its name.

    The adapter active before stays active when it is among them; otherwise ``"default"`` (or
    the first) becomes active. Each adapter is read once; all are checked (and must come from one
    save) before the model changes, and what was checked is what is loaded."""
    outer, model = model, unwrap_model(model)
    path = _check_path(path)
    names = saved_adapter_names(path)
    if not names:
        _foreign_config_error(path)
        raise _missing_weights_error(path)
    saved = {name: read_adapter(adapter_folder(path, name)) for name in names}
    save_ids = {s.save_id for s in saved.values()}
    if len(save_ids) > 1:
        raise ValueError(
            f"the adapters in {str(path)!r} come from different saves ("
            + ", ".join(f"{n}: {s.save_id or 'unknown'}" for n, s in saved.items())
            + "): a save into it stopped half way, or is running now; save again, or load_adapter one of them"
        )
    for name, one in saved.items():  # check every one first: a problem with the second must not leave the first loaded
        problems = _loading_problems(model, one, name)
        if problems:
            raise ValueError(f"cannot load the adapter in {str(one.path)!r}: " + "; ".join(problems))
    before = getattr(model, ACTIVE_ATTR, None)
    for name, one in saved.items():
        _load_checked(model, one, name)
    set_adapter(model, before if before in names else (DEFAULT_ADAPTER if DEFAULT_ADAPTER in names else names[0]))
    return outer


def from_pretrained(path: str | os.PathLike, **model_kwargs) -> nn.Module:
    """Base model + saved adapters in one call, as PEFT's ``AutoPeftModel...from_pretrained``.

    The base model is the transformers class recorded at save time (``base_model_class``), loaded
    with ``from_pretrained(config.base_model_name_or_path, **model_kwargs)`` (plus the number of
    labels of a classifier); then every adapter saved under ``path`` is loaded
    (:func:`load_adapters`). Returns the model in eval mode.
    """
    names = saved_adapter_names(path)
    if not names:
        _foreign_config_error(Path(path))
        raise _missing_weights_error(Path(path))
    config = read_adapter_config(adapter_folder(path, names[0]))
    if not config.base_model_name_or_path:
        raise ValueError(
            f"the adapter in {str(path)!r} does not record where its base model loads from "
            f"(base_model_name_or_path); load the base model yourself and call load_adapter(model, path)"
        )
    import transformers

    cls = getattr(transformers, config.base_model_class or "", None)
    if cls is None or not hasattr(cls, "from_pretrained"):
        raise ValueError(
            f"the adapter in {str(path)!r} was saved for {config.base_model_class!r}, which this transformers "
            f"version does not have; load the base model yourself and call load_adapter(model, path)"
        )
    kwargs = ({"num_labels": config.num_labels} if config.num_labels else {}) | model_kwargs
    model = cls.from_pretrained(config.base_model_name_or_path, **kwargs)
    load_adapters(model, path)
    return model.eval()


__all__ = [
    "CONFIG_NAME",
    "MANIFEST_NAME",
    "WEIGHTS_NAME",
    "SavedAdapter",
    "adapter_state_dict",
    "from_pretrained",
    "load_adapter",
    "load_adapters",
    "read_adapter",
    "read_adapter_config",
    "save_adapter",
    "saved_adapter_names",
]
