"""``save_adapter`` / ``load_adapter``: PEFT-style ``adapter_config.json`` + ``adapter_model.safetensors``.

Keys are ``{layer name}.blkdiag1`` / ``.blkdiag2`` (no adapter name) and, for
``modules_to_save``, ``{module name}.{parameter}``. The config's SHA-256 is stored in the
safetensors metadata so that a config and a weights file from two different saves are
detected on load. Both files are written to temporary files first and renamed into place,
so a crash while saving leaves the previous files intact.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from ..monarch import MonarchShape
from .config import MoReConfig
from .layer import base_shape
from .model import CONFIG_ATTR, _require_adapter, apply_more, more_layers
from .targets import is_linear

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Adapter weights (Monarch factors + modules_to_save), detached, contiguous, on CPU."""
    config: MoReConfig = getattr(model, CONFIG_ATTR)
    state = {}
    for name, layer in more_layers(model).items():
        state[f"{name}.blkdiag1"] = layer.more.blkdiag1
        state[f"{name}.blkdiag2"] = layer.more.blkdiag2
    for mod_name in config.resolved_modules_to_save:
        for pname, p in model.get_submodule(mod_name).named_parameters():
            state[f"{mod_name}.{pname}"] = p
    return {k: v.detach().contiguous().cpu() for k, v in state.items()}


def _atomic_write(path: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def save_adapter(model: nn.Module, path: str | os.PathLike) -> Path:
    """Write ``adapter_config.json`` and ``adapter_model.safetensors`` into directory ``path``."""
    _require_adapter(model)
    config: MoReConfig = getattr(model, CONFIG_ATTR)
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    text = config.to_json()
    digest = hashlib.sha256(text.encode()).hexdigest()
    state = adapter_state_dict(model)
    meta = {"format": "pt", "structmat_config_sha256": digest}
    _atomic_write(out / WEIGHTS_NAME, lambda tmp: save_file(state, tmp, metadata=meta))
    _atomic_write(out / CONFIG_NAME, lambda tmp: Path(tmp).write_text(text))
    return out


def _read_config_text(path: Path) -> str:
    cfg_path = path / CONFIG_NAME
    if not cfg_path.is_file():
        raise FileNotFoundError(f"no {CONFIG_NAME} in {str(path)!r}")
    return cfg_path.read_text()


def read_adapter_config(path: str | os.PathLike) -> MoReConfig:
    """The :class:`MoReConfig` saved in directory ``path`` (unknown keys dropped with a warning)."""
    return MoReConfig.from_dict(json.loads(_read_config_text(Path(path))))


def load_adapter(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Apply a saved adapter to ``model`` (a fresh base model, or one with the same adapter).

    Everything is checked before the model is touched: architecture, every target layer
    present with the saved shape, every tensor present with the right shape. A mismatch
    raises ``ValueError`` and leaves the model as it was.
    """
    path = Path(path)
    cfg_text = _read_config_text(path)
    config = MoReConfig.from_dict(json.loads(cfg_text))
    weights_path = path / WEIGHTS_NAME
    if not weights_path.is_file():
        raise FileNotFoundError(f"no {WEIGHTS_NAME} in {str(path)!r}")
    with safe_open(str(weights_path), framework="pt") as f:  # one read: metadata and tensors
        meta = f.metadata() or {}
        state = {key: f.get_tensor(key) for key in f.keys()}
    if meta.get("structmat_config_sha256") not in (None, hashlib.sha256(cfg_text.encode()).hexdigest()):
        raise ValueError(f"{CONFIG_NAME} and {WEIGHTS_NAME} in {str(path)!r} come from different saves")

    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if config.base_model_type is not None and model_type != config.base_model_type:
        raise ValueError(
            f"adapter in {str(path)!r} was saved for model_type={config.base_model_type!r} "
            f"({config.base_model_class}), but the model is model_type={model_type!r} ({type(model).__name__})"
        )
    already = more_layers(model)
    problems = []
    for name, shape in config.target_shapes.items():
        try:
            mod = model.get_submodule(name)
        except AttributeError:
            problems.append(f"missing layer {name!r}")
            continue
        base = mod.base_layer if name in already else mod
        if not is_linear(base):
            problems.append(f"{name!r} is a {type(base).__name__}, not a linear layer")
        elif list(base_shape(base)) != list(shape):
            problems.append(f"{name!r} has shape (in, out)={base_shape(base)}, adapter expects {tuple(shape)}")
    if already and set(already) != set(config.target_shapes):
        problems.append("model already has a MoRe adapter on other layers")
    if problems:
        raise ValueError(f"cannot load adapter from {str(path)!r}: " + "; ".join(problems))

    expected: dict[str, tuple[int, ...]] = {}
    for name, (in_f, out_f) in config.target_shapes.items():
        st = MonarchShape.for_more(in_f, out_f, config.nblocks, config.rank)
        expected[f"{name}.blkdiag1"] = (st.k, st.q, st.p)
        expected[f"{name}.blkdiag2"] = (st.l, st.s, st.r)
    for mod_name in config.resolved_modules_to_save:
        try:
            mod = model.get_submodule(mod_name)
        except AttributeError:
            raise ValueError(f"cannot load adapter: model has no module {mod_name!r} (modules_to_save)") from None
        for pname, p in mod.named_parameters():
            expected[f"{mod_name}.{pname}"] = tuple(p.shape)
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    wrong = [k for k in expected if k in state and tuple(state[k].shape) != expected[k]]
    if missing or extra or wrong:
        raise ValueError(
            f"cannot load adapter from {str(path)!r}: tensors missing {missing[:5]}, unexpected "
            f"{extra[:5]}, wrong shape {[(k, tuple(state[k].shape), expected[k]) for k in wrong[:5]]}"
        )

    if not already:
        fresh = MoReConfig.from_dict(
            config.to_dict()
            | {"target_modules": list(config.target_shapes), "modules_to_save": list(config.resolved_modules_to_save)}
        )
        apply_more(model, config=fresh)
    with torch.no_grad():
        for key, tensor in state.items():
            target = _lookup_tensor(model, key)
            target.copy_(tensor.to(device=target.device, dtype=target.dtype))
    return model


def _lookup_tensor(model: nn.Module, key: str) -> torch.Tensor:
    layers = more_layers(model)
    owner, _, leaf = key.rpartition(".")
    if owner in layers and leaf in ("blkdiag1", "blkdiag2"):
        return getattr(layers[owner].more, leaf)
    return model.get_parameter(key)
