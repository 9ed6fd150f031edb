"""ONNX and OpenVINO IR export with a parity check: the exported graph must reproduce PyTorch on real images or
export fails."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from compressor.core.data import Preprocess, Split
from compressor.core.files import atomic_path
from compressor.core.metrics import predict
from compressor.errors import CompressorError
from compressor.runtime.sessions import ort_session

OPSET = 17


@dataclass
class Parity:
    """How closely an ONNX (or OpenVINO IR) artifact reproduces the PyTorch model on real test images."""

    images: int
    max_abs_logit_diff: float
    top1_agreement: float  # percent
    ort_logits: np.ndarray = field(repr=False, default=None)  # what the runtime (ONNX Runtime, OpenVINO) produced

    def as_dict(self) -> dict:
        return {"images": self.images, "max_abs_logit_diff": self.max_abs_logit_diff, "top1_agreement": self.top1_agreement}


def export_onnx(model: nn.Module, path: str | Path, input_shape: tuple[int, ...], opset: int = OPSET) -> Path:
    """Export with a dynamic batch axis, validate with onnx.checker, and write atomically."""
    path = Path(path)
    model = model.eval()
    dummy = torch.zeros(1, *input_shape)
    try:
        with atomic_path(path) as tmp, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model, (dummy,), str(tmp), input_names=["input"], output_names=["logits"], opset_version=opset,
                dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, dynamo=False,
            )
            onnx.checker.check_model(onnx.load(tmp), full_check=True)
    except CompressorError:
        raise
    except Exception as exc:
        raise CompressorError(f"ONNX export failed: {type(exc).__name__}: {str(exc).splitlines()[0]}") from exc
    return path


def ort_predict(session: ort.InferenceSession, split: Split, preprocess: Preprocess, batch_size: int = 500) -> np.ndarray:
    name = session.get_inputs()[0].name
    return np.concatenate(
        [session.run(None, {name: preprocess(split.images[i : i + batch_size]).numpy()})[0] for i in range(0, len(split), batch_size)]
    )


def check_parity(
    path: str | Path, model: nn.Module, split: Split, preprocess: Preprocess,
    atol: float = 1e-3, min_agreement: float = 99.9, reference: np.ndarray | None = None, runtime: str = "onnxruntime",
) -> Parity:
    """Compare ONNX Runtime (or OpenVINO at its f32 hint, ``runtime="openvino"``) against PyTorch on every image of
    ``split``; raise if outside tolerance.

    ``reference`` replaces the PyTorch logits (e.g. for a quantized artifact judged against its float model,
    where callers pass looser tolerances).
    """
    ref = predict(model, split, preprocess) if reference is None else reference
    if runtime == "openvino":
        from compressor.runtime import openvino

        got = openvino.predict(path, split.images, "f32", preprocess=preprocess)
    else:
        got = ort_predict(ort_session(path), split, preprocess)
    parity = Parity(len(split), float(np.abs(got - ref).max()), float((got.argmax(1) == ref.argmax(1)).mean() * 100), got)
    if parity.max_abs_logit_diff > atol or parity.top1_agreement < min_agreement:
        raise CompressorError(
            f"{'OpenVINO' if runtime == 'openvino' else 'ONNX'} parity check failed for {path}: max |Δlogit| "
            f"{parity.max_abs_logit_diff:.2e} (limit {atol:.0e}), "
            f"top-1 agreement {parity.top1_agreement:.2f}% (limit {min_agreement}%); the exported graph does not "
            "reproduce the model, report this with --debug output"
        )
    return parity


def export_openvino(deployed: str | Path, xml_path: str | Path, model: nn.Module, split: Split, preprocess: Preprocess,
                    int8: bool, precision: str = "f32") -> tuple[Path, Parity, np.ndarray]:
    """Write the OpenVINO IR of the deployed ONNX file and check it on every image of ``split`` at the exact f32
    hint: an FP32 model against PyTorch (as the ONNX export), an INT8 QDQ model against the same ONNX file run by
    OpenVINO, since its integer rounding differs from PyTorch's float by design. Returns the IR path, the parity
    and the logits under ``precision``, the hint the IR records (its accuracy is measured, never assumed)."""
    from compressor.runtime import openvino

    xml = openvino.save_ir(deployed, xml_path, precision)
    reference = openvino.predict(deployed, split.images, "f32", preprocess=preprocess) if int8 else None
    parity = check_parity(xml, model, split, preprocess, reference=reference, runtime="openvino")
    logits = parity.ort_logits if precision == "f32" else openvino.predict(xml, split.images, precision, preprocess=preprocess)
    return xml, parity, logits
