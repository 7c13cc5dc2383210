"""Building what Triton serves for llama-3.2-nv-rerankqa-1b-v2, one module per stage, in pipeline order:

- the model: ``config`` (the checkpoint's config), ``checkpoint`` (load, or generate random weights of
  the real architecture), ``tokenizer_files``, ``textgen`` (test texts), ``reference`` (the PyTorch
  reference the parity checks hold everything to);
- export: ``export_onnx`` (ONNX, and the build cache of exports), ``quantize`` (the FP8 graph);
- engines: ``engine_plan`` and ``profiles`` (TensorRT profiles and memory, no GPU needed),
  ``engine_build``, ``engine_meta``, ``engine_runner``, ``cudart`` (TensorRT, imported lazily),
  ``onnx_gpu`` (the ONNX Runtime CUDA target), ``cpu_runtime`` (the CPU engine's runtimes);
- the repository: ``repository`` fills the templates (``model_repository/``, shipped as the package
  data ``rerank_build.templates``), ``batch_strategy`` compiles the GPU batching strategy;
- checks: ``parity``, ``full_check``; and ``cli`` (``rerank-build``).

Running what is built is the ``rerank_serving`` package's job (``rerank-serve``; ``rerank-build serve``
is the same command). Heavy imports (torch, onnx, tensorrt) happen inside the stage modules, never here.
"""

__version__ = "0.1.0"
