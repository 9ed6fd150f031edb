"""Where models run: ONNX export and parity, ONNX Runtime sessions, the benchmark, GPU backends, TensorRT and the
fused INT8 kernels. Importing this package imports nothing heavy: benchmark children load only numpy and ORT."""
