"""Build tooling for the llama-3.2-nv-rerankqa-1b-v2 Triton serving stack.

Stages, one module each: ``checkpoint`` (load / generate), ``reference`` (PyTorch model),
``export_onnx``, ``parity``, and later the Triton repository assembly and TensorRT engine build.
Heavy imports (torch, onnx, tensorrt) happen inside the stage modules, never here.
"""

__version__ = "0.1.0"
