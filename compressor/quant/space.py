"""The post-training quantization configuration space and what each deployment target allows.

Follows Quantune (Lee et al., arXiv 2202.05048, 2022), whose five knobs come from the NEST-C/Glow quantizer:
calibration size (1 / 1,000 / 10,000 images), clipping (max, KL entropy; we add percentile), scheme (asymmetric,
symmetric, symmetric with uint8, power-of-two scales), granularity (per-tensor or per-channel weights) and
precision (all-int8 or mixed, the most sensitive layers kept in float). We add the standard CNN toolbox as three
more on/off knobs and one more clipping: cross-layer equalization and bias correction (Nagel et al., *Data-Free
Quantization*, ICCV 2019), AdaRound weight rounding (Nagel et al., ICML 2020) and MSE range setting.

How a scheme maps onto ONNX Runtime tensors (weights are always symmetric int8 with zero point 0, which the
MLAS kernels need for their fast paths and TensorRT requires):

- ``asymmetric``: uint8 activations with a zero point fitted to the range.
- ``symmetric``: int8 activations, zero point 0 (the TensorRT scheme).
- ``symmetric_uint8``: non-negative tensors (after ReLU) as uint8 with zero point 0, signed ones as uint8
  symmetric around 128 (Glow's "symmetric with unsigned").
- ``power_of_two``: ``symmetric_uint8`` with every activation, weight and bias scale rounded up to 2^k.
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass
from enum import Enum


class Clipping(str, Enum):
    """How a tensor's range is cut from its statistics (values are what configs and the database store)."""

    MAX = "max"
    ENTROPY = "entropy"
    PERCENTILE = "percentile"
    MSE = "mse"


CALIBRATION_SIZES = (1, 1000, 10000)
CLIPPINGS = tuple(c.value for c in Clipping)
SCHEMES = ("asymmetric", "symmetric", "symmetric_uint8", "power_of_two")
GRANULARITIES = ("per_tensor", "per_channel")
PRECISION_MODES = ("int8", "mixed")
SWITCHES = (False, True)
# The toolbox knobs; a measurement that predates them (an old database record) had them all off.
TECHNIQUES = ("cle", "bias_correction", "adaround")
KNOBS = {
    "calibration": CALIBRATION_SIZES,
    "clipping": CLIPPINGS,
    "scheme": SCHEMES,
    "granularity": GRANULARITIES,
    "precision": PRECISION_MODES,
    **{t: SWITCHES for t in TECHNIQUES},
}
TARGETS = ("ort-cpu", "openvino-cpu", "tensorrt")


@dataclass(frozen=True, order=True)
class QuantConfig:
    """One point of the space. ``calibration`` is the nominal image count (capped by the calibration split)."""

    calibration: int = 1000
    clipping: str = "entropy"
    scheme: str = "asymmetric"
    granularity: str = "per_channel"
    precision: str = "int8"
    cle: bool = False
    bias_correction: bool = False
    adaround: bool = False

    def __post_init__(self) -> None:
        for knob, values in KNOBS.items():
            if getattr(self, knob) not in values:
                raise ValueError(f"QuantConfig.{knob}={getattr(self, knob)!r}; choose one of {list(values)}")

    def as_dict(self) -> dict:
        return asdict(self)

    def key(self) -> str:
        """A readable unique name; the toolbox knobs that are on come before the precision (``...-cle-ar-int8``)."""
        tags = "".join(f"-{t}" for t, on in zip(("cle", "bc", "ar"), self.techniques()) if on)
        return f"c{self.calibration}-{self.clipping}-{self.scheme}-{self.granularity}{tags}-{self.precision}"

    def techniques(self) -> tuple[bool, ...]:
        return tuple(getattr(self, t) for t in TECHNIQUES)

    def one_hot(self) -> list[float]:
        """Quantune's feature encoding: one indicator per value of every knob."""
        return [float(getattr(self, k) == v) for k, values in KNOBS.items() for v in values]


def one_hot_names() -> list[str]:
    return [f"{k}={v}" for k, values in KNOBS.items() for v in values]


def allowed(config: QuantConfig, target: str) -> bool:
    """TensorRT accepts only symmetric int8 with zero point 0 and per-output-channel weight scales.

    OpenVINO runs every scheme and both granularities in INT8 (checked on its execution graph), so only
    ``power_of_two`` is left out there: it exists for integer-only hardware that rescales by shifts, while
    OpenVINO rescales in float whatever the scale, so it cannot gain speed there, and on the three CIFAR teachers
    its best configuration was no more accurate than the best without it beyond validation noise
    (docs/lab-notes/openvino.md)."""
    if target not in TARGETS:
        raise ValueError(f"unknown quantization target {target!r}; choose one of {list(TARGETS)}")
    if target == "tensorrt":
        return config.scheme == "symmetric" and config.granularity == "per_channel"
    if target == "openvino-cpu":
        return config.scheme != "power_of_two"
    return True


def config_space(target: str = "ort-cpu", max_calibration: int | None = None,
                 restrict: dict[str, tuple] | None = None) -> list[QuantConfig]:
    """Every allowed configuration, in a fixed order. Calibration sizes above ``max_calibration`` (the size of the
    calibration split) collapse onto the cap, so only the smallest nominal size that reaches it is kept.
    ``restrict`` narrows knobs to the given values (e.g. ``{"adaround": (False,)}``)."""
    sizes = list(CALIBRATION_SIZES)
    if max_calibration is not None:
        kept, seen = [], set()
        for s in sizes:
            eff = min(s, max_calibration)
            if eff not in seen:
                seen.add(eff)
                kept.append(s)
        sizes = kept
    knobs = {**KNOBS, "calibration": tuple(sizes), **(restrict or {})}
    out = [QuantConfig(*values) for values in itertools.product(*knobs.values())]
    return [c for c in out if allowed(c, target)]
