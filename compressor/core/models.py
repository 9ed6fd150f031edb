"""Turning the user's ``--model`` / ``--weights`` into a checked ``nn.Module``.

``--model`` is a zoo name, ``package.module:callable`` or ``path/to/file.py:callable``; ``--weights`` a
state_dict loaded with ``weights_only=True``, or a model file written by this tool. A pickled whole module is
only loaded with ``allow_pickle=True``, because unpickling runs arbitrary code.
"""

from __future__ import annotations

import importlib
import importlib.util
import pickle
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from compressor.core.serialize import DEFAULT_ALLOWED, FORMAT, Factory, load_model
from compressor.core.zoo import ZOO
from compressor.errors import CompressorError


@dataclass
class LoadedModel:
    model: nn.Module
    allowed_modules: tuple[str, ...]  # module prefixes whose classes saved stages may instantiate
    outputs: int | None = None  # logits per image (the number of classes), when the input shape was checked
    factory: Factory | None = None  # the user's model factory, which saved stages may rebuild attributes from


def _exited(what: str, exc: SystemExit) -> CompressorError:
    """A user's module or factory called sys.exit(): its code must not become ours (3 means "gate missed")."""
    return CompressorError(f"{what} exited (SystemExit {exc.code}) instead of returning a model; remove the exit call")


def _import_callable(spec: str) -> tuple[object, str]:
    target, _, attr = spec.rpartition(":")
    if not target or not attr:
        raise CompressorError(
            f"unknown model {spec!r}: use a zoo name ({', '.join(ZOO)}), package.module:callable or file.py:callable"
        )
    try:
        if target.endswith(".py"):
            path = Path(target)
            if not path.is_file():
                raise CompressorError(f"model file {path} does not exist")
            name = f"compressor_user_{path.stem}"
            module_spec = importlib.util.spec_from_file_location(name, path)
            module = importlib.util.module_from_spec(module_spec)
            sys.modules[name] = module
            module_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(target)
    except CompressorError:
        raise
    except SystemExit as exc:
        raise _exited(f"importing {target} for --model", exc) from None
    except Exception as exc:
        raise CompressorError(f"cannot import {target} for --model: {type(exc).__name__}: {exc}") from None
    if not hasattr(module, attr):
        raise CompressorError(f"{target} has no attribute {attr!r} for --model")
    return getattr(module, attr), module.__name__


def _factory_spec(spec: str) -> str:
    """``spec`` with a file path made absolute, so a resumed run from another folder names the same factory."""
    target, _, attr = spec.rpartition(":")
    return f"{Path(target).resolve()}:{attr}" if target.endswith(".py") else spec


def _check_state_dict(model: nn.Module, state: dict, source: str) -> None:
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} vs model {tuple(own[k].shape)}" for k in own
              if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    problems = []
    if missing:
        problems.append(f"missing keys {missing[:4]}{' …' if len(missing) > 4 else ''}")
    if unexpected:
        problems.append(f"unexpected keys {unexpected[:4]}{' …' if len(unexpected) > 4 else ''}")
    if shapes:
        problems.append(f"shape mismatch {shapes[:3]}")
    if problems:
        raise CompressorError(f"weights {source} do not match the model: {'; '.join(problems)}; check --model")


def check_finite(model: nn.Module, source: str) -> None:
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise CompressorError(f"{source}: tensor {name} contains NaN or Inf; the checkpoint is broken")


def check_input_shape(model: nn.Module, input_shape: tuple[int, ...], source: str) -> int:
    """Run the model on zeros of ``input_shape``; returns its number of logits per image."""
    model.eval()
    try:
        with torch.no_grad():
            out = model(torch.zeros(2, *input_shape))
    except Exception as exc:
        raise CompressorError(
            f"model {source} rejects input shape {tuple(input_shape)}: {type(exc).__name__}: "
            f"{str(exc).splitlines()[0]}; set model.input_shape in the recipe or --input-shape"
        ) from None
    if not isinstance(out, torch.Tensor) or out.dim() != 2:
        raise CompressorError(f"model {source} must return (batch, classes) logits, got {getattr(out, 'shape', type(out))}")
    return int(out.shape[1])


_LEGACY_MAGIC = pickle.dumps(torch.serialization.MAGIC_NUMBER, protocol=2)  # how torch.save's old format opens


def _is_torch_file(path: Path) -> bool:
    """Written by ``torch.save`` (the zip format, or the legacy one): only then can a failed weights-only load
    mean "a pickled object"; anything else is not a checkpoint at all."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            return any(name.endswith("data.pkl") for name in z.namelist())
    with open(path, "rb") as f:
        return f.read(len(_LEGACY_MAGIC)) == _LEGACY_MAGIC


def _load_checkpoint(path: Path, allow_pickle: bool) -> object:
    """``torch.load`` with ``weights_only``; a pickled object only with ``allow_pickle``; one-line errors."""
    not_torch = (f"checkpoint {path} is not a PyTorch file: give a state_dict saved with torch.save or a model file "
                 "written by compressor")
    try:
        if not _is_torch_file(path):
            raise CompressorError(not_torch)
        return torch.load(path, map_location="cpu", weights_only=True)
    except CompressorError:
        raise
    except pickle.UnpicklingError:
        if not allow_pickle:
            raise CompressorError(
                f"{path} is a pickled object, not a state_dict; unpickling runs code from the file, so it is only "
                "loaded with --allow-pickle (use it only for files you trust)"
            ) from None
    except Exception as exc:
        raise CompressorError(f"checkpoint {path} is corrupt or unreadable ({type(exc).__name__})") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise CompressorError(f"checkpoint {path} could not be unpickled ({type(exc).__name__}: "
                              f"{str(exc).splitlines()[0][:120] if str(exc) else ''}); it is corrupt or needs code "
                              "that is not importable here") from None


def load_user_model(
    model: str | None, weights: str | None = None, allow_pickle: bool = False,
    input_shape: tuple[int, ...] | None = None,
) -> LoadedModel:
    """Build and check the model named on the command line or in the recipe."""
    allowed = DEFAULT_ALLOWED
    net: nn.Module | None = None
    factory: Factory | None = None
    if model:
        if model in ZOO:
            net = ZOO[model]()
        else:
            factory_fn, module_name = _import_callable(model)
            try:
                net = factory_fn()
            except SystemExit as exc:
                raise _exited(f"model factory {model}", exc) from None
            except Exception as exc:
                raise CompressorError(f"calling {model} failed: {type(exc).__name__}: {exc}") from None
            if not isinstance(net, nn.Module):
                raise CompressorError(f"{model} returned {type(net).__name__}, not an nn.Module")
            allowed = allowed + (module_name + ".", module_name)
            factory = Factory(_factory_spec(model), factory_fn)
            factory.remember(net)
    if weights:
        path = Path(weights)
        if path.is_dir():
            raise CompressorError(f"checkpoint {path} is a folder; give the weights file with --weights")
        if not path.is_file():
            raise CompressorError(f"checkpoint {path} does not exist")
        state = _load_checkpoint(path, allow_pickle)
        if isinstance(state, nn.Module):
            net = state
        elif isinstance(state, dict) and state.get("format") == FORMAT:
            net, _ = load_model(path, allowed, factory)
        elif isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
            state = state["state_dict"]
        if not isinstance(state, nn.Module) and not (isinstance(state, dict) and state.get("format") == FORMAT):
            if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
                raise CompressorError(f"{path} holds no state_dict (a dict of tensors)")
            if net is None:
                raise CompressorError(f"{path} is a state_dict; name the architecture with --model")
            _check_state_dict(net, state, str(path))
            net.load_state_dict(state)
    if net is None:
        raise CompressorError("no model given: pass --model (zoo name or module:callable) and/or --weights")
    check_finite(net, weights or model or "model")
    outputs = None if input_shape is None else check_input_shape(net, input_shape, model or weights)
    return LoadedModel(net.eval(), allowed, outputs, factory)
