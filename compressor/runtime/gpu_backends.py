"""GPU timing backends for ``bench``: eager torch (FP32/FP16, channels_last) with optional CUDA-graph replay.

Each runner is a zero-argument function that runs one synchronous inference on a fixed random batch and returns
the elapsed GPU milliseconds measured with CUDA events, the contract shared with
``compressor.runtime.kernels.make_torch_int8_runner``. CUDA graphs follow the PyTorch "CUDA Graphs" capture recipe
(warm up on a side stream, capture once, replay with static input/output buffers).
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import nn

from compressor.errors import CompressorError


def require_cuda() -> torch.device:
    """The current CUDA device, or CompressorError when torch has no CUDA or no GPU is visible."""
    if not torch.cuda.is_available():
        build = "a CPU-only torch build" if torch.version.cuda is None else "no visible NVIDIA GPU"
        raise CompressorError(
            f"GPU backends need CUDA, but this is {build}; run on a machine with an NVIDIA GPU and a CUDA build of "
            "torch (see https://pytorch.org/get-started/locally/)"
        )
    return torch.device("cuda", torch.cuda.current_device())


def make_torch_cuda_runner(
    model: nn.Module, batch: int, fp16: bool, cuda_graph: bool, input_shape: tuple[int, ...] = (3, 32, 32), warmup: int = 3
) -> Callable[[], float]:
    """Eager torch on the GPU in channels_last (FP16 when ``fp16``), optionally replayed as one CUDA graph."""
    device = require_cuda()
    dtype = torch.float16 if fp16 else torch.float32
    net = copy.deepcopy(model).eval().to(device=device, dtype=dtype, memory_format=torch.channels_last)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn((batch, *input_shape), generator=gen).to(device=device, dtype=dtype)
    x = x.contiguous(memory_format=torch.channels_last)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

    with torch.inference_mode():
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(warmup):
                net(x)
        torch.cuda.current_stream().wait_stream(side)
        graph = None
        if cuda_graph:
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                net(x)
        torch.cuda.synchronize()

    def run() -> float:
        with torch.inference_mode():
            start.record()
            if graph is not None:
                graph.replay()
            else:
                net(x)
            end.record()
        end.synchronize()
        return start.elapsed_time(end)

    return run


def make_tensorrt_runner(engine_path: str, batch: int, input_shape: tuple[int, ...] = (3, 32, 32)) -> Callable[[], float]:
    """Run a serialized TensorRT engine (TensorRT 10 name-based I/O API) on torch-allocated CUDA buffers.

    Written against TensorRT's documented Python API (Runtime.deserialize_cuda_engine, set_input_shape,
    set_tensor_address, execute_async_v3); TensorRT cannot be installed on our development machines, so this
    path has not been executed here.
    """
    return TensorRTRunner(engine_path, batch, input_shape)


class TensorRTRunner:
    """A TensorRT engine, its execution context and the I/O buffers whose addresses the context was given.

    TensorRT keeps raw device pointers (set_tensor_address), not references, so the buffers must live as long as
    the context: otherwise torch's caching allocator can hand their memory to other tensors while TensorRT still
    reads and writes it. This object holds runtime, engine, context, buffers and stream together; calling it runs one
    synchronous inference and returns the GPU milliseconds (the runner contract above). Every TensorRT call that
    reports failure by returning False raises CompressorError.
    """

    def __init__(self, engine_path: str, batch: int, input_shape: tuple[int, ...] = (3, 32, 32)):
        from compressor.runtime.tensorrt import _import_tensorrt

        trt = _import_tensorrt()
        device = require_cuda()
        self.runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        with open(engine_path, "rb") as f:
            self.engine = self.runtime.deserialize_cuda_engine(f.read())
        if self.engine is None:
            raise CompressorError(f"{engine_path} is not a TensorRT engine for this TensorRT version and GPU")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        for name in names:
            if self.engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                shape = (batch, *input_shape)
                if not self.context.set_input_shape(name, shape):
                    raise CompressorError(
                        f"TensorRT rejected input shape {shape} for '{name}' of {engine_path}; build the engine with "
                        "an optimization profile that covers this batch size"
                    )
        dtypes = {trt.float32: torch.float32, trt.float16: torch.float16, trt.int8: torch.int8}
        self.buffers: dict[str, torch.Tensor] = {}
        for name in names:
            trt_dtype = self.engine.get_tensor_dtype(name)
            if trt_dtype not in dtypes:
                raise CompressorError(f"TensorRT tensor '{name}' of {engine_path} has unsupported dtype {trt_dtype}")
            shape = tuple(self.context.get_tensor_shape(name))
            self.buffers[name] = torch.randn(shape, device=device).to(dtypes[trt_dtype])
            if not self.context.set_tensor_address(name, self.buffers[name].data_ptr()):
                raise CompressorError(f"TensorRT rejected the buffer address of '{name}' (shape {shape}) of {engine_path}")
        self.stream = torch.cuda.Stream()
        self.start, self.end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

    def __call__(self) -> float:
        self.start.record(self.stream)
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise CompressorError("TensorRT execute_async_v3 failed; see the TensorRT log above for the reason")
        self.end.record(self.stream)
        self.end.synchronize()
        return self.start.elapsed_time(self.end)
