"""The detector and what runs it: devices, PyTorch and ONNX backends, decoding, the batched loop, post-processing,
masks, evaluation, the training adapter. Imports nothing of executor.protocol."""
