"""``rerank-build``: one CLI for every build stage (each stage's module does the work)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Callable

logger = logging.getLogger("rerank_build")


#: One precision vocabulary for every command (checkpoint, export-onnx, engine, quantize, parity,
#: repository, full-check): the dtype names. Old spellings still parse and log a deprecation.
PRECISIONS = ("fp32", "fp16", "bf16", "fp8")
OLD_PRECISIONS = {"f32": "fp32"}  # OpenVINO's name, which parity and repository took before
#: OpenVINO's inference-precision hint for ours: what the CPU engine's ``precision`` parameter holds.
OPENVINO_HINT = {"fp32": "f32"}


def precision_type(*allowed: str, openvino: bool = False) -> Callable[[str], str]:
    """An argparse ``type`` for a precision among ``allowed`` (``openvino``: returned as OpenVINO's hint)."""

    def precision(text: str) -> str:
        word = text.strip().lower()
        if word in OLD_PRECISIONS:
            logger.warning("precision %r is deprecated: use %r", text, OLD_PRECISIONS[word])
            word = OLD_PRECISIONS[word]
        if word not in allowed:
            raise argparse.ArgumentTypeError(f"invalid precision {text!r} (choose from {', '.join(allowed)})")
        return OPENVINO_HINT.get(word, word) if openvino else word

    return precision


class OldSpelling(argparse.Action):
    """Stores the value like ``store``; an old spelling of the flag (``old=[...]``, listed after the
    current one) still works and logs that it is deprecated, naming the current spelling."""

    def __init__(self, option_strings: list[str], dest: str, old: tuple[str, ...] = (), **kwargs: object) -> None:
        super().__init__(option_strings, dest, **kwargs)  # type: ignore[arg-type]
        self.old = old

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: object,
                 option_string: str | None = None) -> None:
        if option_string in self.old:
            logger.warning("%s is deprecated: use %s", option_string, self.option_strings[0])
        setattr(namespace, self.dest, values)


def add_renamed(p: argparse.ArgumentParser, flag: str, *old: str, **kwargs: object) -> None:
    """A flag under its current (published) name that still accepts its ``old`` spellings."""
    p.add_argument(flag, *old, action=OldSpelling, old=old, **kwargs)  # type: ignore[arg-type]


def _cmd_checkpoint(args: argparse.Namespace) -> int:
    from .checkpoint import write_random_checkpoint

    out = args.out or Path("build/checkpoints") / args.preset
    write_random_checkpoint(args.preset, out, seed=args.seed, dtype=args.dtype)
    print(out)
    return 0


def _cmd_export_onnx(args: argparse.Namespace) -> int:
    from .export_onnx import export_onnx

    print(export_onnx(args.checkpoint, args.out, dtype=args.dtype, gqa=args.gqa))
    return 0


def _cmd_parity(args: argparse.Namespace) -> int:
    from .parity import main_parity

    return main_parity(args.checkpoint, args.onnx, args.endpoint, args.protocol, args.model,
                       args.tolerance, args.random_queries, args.seed, args.batch_size, args.engine,
                       args.runtime, args.precision)


def _int_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _cmd_repository(args: argparse.Namespace) -> int:
    from .repository import RepositorySettings, build_repository

    overrides = {k: v for k, v in vars(args).items() if k in RepositorySettings.__dataclass_fields__ and v is not None}
    if args.target == "gpu" and args.engine:
        from .engine_meta import gpu_defaults

        overrides = {**gpu_defaults(args.engine), **overrides}  # the engine's shapes unless set explicitly
    if args.target == "gpu-onnx":
        overrides = {**_onnx_gpu_defaults(args.checkpoint, overrides), **overrides}
    settings = RepositorySettings(**overrides)
    print(build_repository(args.checkpoint, args.out, settings, onnx=args.onnx, engine=args.engine,
                           force=args.force, reuse=args.reuse, triton_release=args.triton_release,
                           serving_tensorrt=args.serving_tensorrt, gpu_memory_gib=args.gpu_memory_gib))
    return 0


def _onnx_gpu_defaults(checkpoint: str, overrides: dict) -> dict:
    """gpu-onnx: 64 rows per request and execution, and as many tokens per request as one execution
    of the longest bucket holds (every accepted request then fits one execution)."""
    from .checkpoint import resolve_checkpoint
    from .config import RerankerConfig
    from .onnx_gpu import onnx_gpu_defaults, plan_batches, request_tokens
    from .repository import RepositorySettings

    defaults = onnx_gpu_defaults()
    shaped = RepositorySettings(**{**defaults, **overrides, "target": "gpu-onnx", "max_tokens_per_request": 1 << 30})
    batches = plan_batches(RerankerConfig.from_file(resolve_checkpoint(checkpoint)), shaped.served_buckets,
                           shaped.engine_max_batch_size)
    return {**defaults, "max_tokens_per_request": request_tokens(batches, shaped.max_rows)}


def _cmd_engine(args: argparse.Namespace) -> int:
    from rerank_contract.prompt import DEFAULT_BUCKETS

    buckets = args.buckets or DEFAULT_BUCKETS
    if args.plan_only:
        import json

        from .engine_plan import engine_plan, model_config

        if args.onnx and args.preset:
            raise ValueError("--plan-only takes --onnx or --preset, not both")
        config, source = model_config(args.onnx, args.preset)
        print(json.dumps(engine_plan(config, source, args.precision, buckets, args.max_batch,
                                     args.max_tokens_per_execution, args.opt_tokens, args.buckets_per_profile,
                                     args.workspace_gib, args.instances_per_gpu), indent=2))
        return 0
    if not args.onnx or not args.out or args.preset:
        raise ValueError("building an engine needs --onnx and --out (--preset is for --plan-only)")
    from .engine_build import build_engine

    print(build_engine(args.onnx, args.out, precision=args.precision, buckets=buckets,
                       max_batch=args.max_batch, opt_tokens=args.opt_tokens,
                       buckets_per_profile=args.buckets_per_profile, workspace_gib=args.workspace_gib,
                       timing_cache=args.timing_cache, seed=args.seed, max_tokens=args.max_tokens_per_execution))
    return 0


def _cmd_engine_key(args: argparse.Namespace) -> int:
    from .engine_meta import engine_key, gpu_description

    version = args.tensorrt
    if not version:
        import tensorrt

        version = tensorrt.__version__
    gpu = args.gpu_name or gpu_description()["name"]
    if gpu == "unknown":
        raise ValueError("no GPU visible (nvidia-smi): pass --gpu-name")
    print(engine_key(gpu, version, args.precision))
    return 0


def _cmd_quantize(args: argparse.Namespace) -> int:
    from .quantize import LONG_ROW_TOKENS, calibration_feeds, quantize_fp8

    onnx_path = Path(args.onnx)
    long_rows = LONG_ROW_TOKENS if args.calibration_long_rows is None else args.calibration_long_rows
    feeds = calibration_feeds(onnx_path.parent, n_pairs=args.calibration_pairs, seed=args.seed, long_rows=long_rows)
    print(quantize_fp8(onnx_path, args.out, feeds, per_channel=args.weight_scales == "channel"))
    return 0


def _cmd_check_engine(args: argparse.Namespace) -> int:
    from .engine_meta import EngineMetaError, check_engine_for_node

    version = args.tensorrt
    if not version:
        try:
            import tensorrt

            version = tensorrt.__version__
        except ImportError:
            print("rerank-build check-engine: give --tensorrt X.Y.Z (no TensorRT here to ask)", file=sys.stderr)
            return 2
    try:
        print(check_engine_for_node(args.repository, version))
    except EngineMetaError as exc:
        print(f"rerank-build check-engine: {exc}", file=sys.stderr)
        return 1
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from rerank_serving.cli import run

    return run(args)


def _cmd_full_check(args: argparse.Namespace) -> int:
    from .full_check import run_full_check

    return run_full_check(Path(args.workdir), seed=args.seed, dtype=args.dtype)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rerank-build", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("checkpoint", help="write a random-weight checkpoint of the real architecture")
    p.add_argument("--preset", choices=["tiny", "small", "full"], required=True)
    p.add_argument("--seed", type=int, default=0)
    add_renamed(p, "--precision", "--dtype", dest="dtype", type=precision_type("bf16", "fp16", "fp32"), default="bf16", metavar="{bf16,fp16,fp32}",
                   help="storage dtype of the safetensors (the real checkpoint is bf16)")
    p.add_argument("--out", type=Path, help="output directory (default build/checkpoints/<preset>)")
    p.set_defaults(func=_cmd_checkpoint)

    p = sub.add_parser("export-onnx", help="export a checkpoint to DIR/model.onnx plus tokenizer files")
    p.add_argument("--checkpoint", required=True, help="checkpoint directory or HF hub id")
    add_renamed(p, "--precision", "--dtype", dest="dtype", type=precision_type("fp32", "fp16", "bf16"), default="fp32", metavar="{fp32,fp16,bf16}",
                   help="fp32: ONNX Runtime (CPU); fp16/bf16: strongly typed TensorRT builds")
    p.add_argument("--gqa", choices=["stack", "repeat"], default="stack",
                   help="fp16/bf16 attention: grouped query heads stacked along the rows (default), or K/V repeated "
                        "per query head, the fallback if a GPU build shows the stacked attention unfused")
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(func=_cmd_export_onnx)

    p = sub.add_parser("parity", help="compare the reference with ONNX Runtime or a served endpoint")
    p.add_argument("--checkpoint", required=True, help="checkpoint directory or HF hub id (the reference)")
    p.add_argument("--onnx", help="candidate: an exported model.onnx")
    p.add_argument("--endpoint", help="candidate: a served ensemble, HOST:PORT")
    p.add_argument("--engine", help="candidate: a TensorRT plan run directly on the GPU")
    p.add_argument("--protocol", choices=["grpc", "http"], default="grpc")
    p.add_argument("--model", help="ensemble name of the endpoint (default NIM's)")
    p.add_argument("--tolerance", type=float, help="max abs difference (default by dtype: fp32 1e-4, fp16 5e-2, bf16 0.1, fp8 1.0)")
    p.add_argument("--random-queries", type=int, default=12, help="seeded random queries besides the fixed ones")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=0, help="rows per ONNX batch (0: one batch per query)")
    p.add_argument("--runtime", choices=["auto", "onnxruntime", "openvino"], default="auto",
                   help="for --onnx: auto = OpenVINO for a bf16 export (ONNX Runtime has no bf16 CPU kernels), "
                        "else ONNX Runtime")
    p.add_argument("--precision", type=precision_type("fp32", "bf16", openvino=True), metavar="{fp32,bf16}", default="fp32",
                   help="OpenVINO's precision as the CPU engine runs it (bf16: the linear layers in bf16, the rest "
                        "in fp32; AVX512-BF16/AMX CPUs)")
    p.set_defaults(func=_cmd_parity)

    p = sub.add_parser("repository", help="assemble a deployable Triton model repository")
    p.add_argument("--checkpoint", required=True, help="checkpoint directory or HF hub id")
    p.add_argument("--target", choices=["cpu", "gpu", "gpu-onnx"], required=True,
                   help="cpu: ONNX on OpenVINO/ONNX Runtime; gpu: a TensorRT engine; gpu-onnx: the fp16 ONNX in "
                        "Triton's ONNX Runtime backend on CUDA (no engine build)")
    p.add_argument("--out", type=Path, default=Path("build/model_repository"))
    p.add_argument("--onnx", help="cpu: an exported model.onnx (default: export fp32 from the checkpoint); gpu-onnx: "
                                  "the fp16 export")
    p.add_argument("--engine", help="gpu: a TensorRT plan built by `rerank-build engine`")
    p.add_argument("--force", action="store_true", help="replace OUT even if rerank-build did not write it")
    p.add_argument("--reuse", action="store_true", help="keep OUT when built from the same sources and settings")
    p.add_argument("--ensemble-name", dest="ensemble_name")
    # The limits' flags carry the names the ensemble publishes them under (rerank_contract.names).
    add_renamed(p, "--max-rows-per-request", "--max-rows", dest="max_rows", type=int,
                help="passages per request (ensemble max_batch_size; old spelling --max-rows)")
    p.add_argument("--max-sequence-length", dest="max_sequence_length", type=int)
    p.add_argument("--buckets", type=_int_list, help="padded lengths, e.g. 64,128,256,512")
    add_renamed(p, "--max-tokens-per-request", "--max-request-tokens", dest="max_tokens_per_request", type=int,
                help="padded tokens per request (old spelling --max-request-tokens)")
    add_renamed(p, "--max-bytes-per-request", "--max-request-bytes", dest="max_bytes_per_request", type=int,
                help="text bytes per request, refused before tokenizing (old spelling --max-request-bytes)")
    p.add_argument("--tokenizer-instances", dest="tokenizer_instances", type=int)
    p.add_argument("--postprocess-instances", dest="postprocess_instances", type=int)
    p.add_argument("--engine-max-batch-size", dest="engine_max_batch_size", type=int)
    p.add_argument("--preferred-batch-sizes", dest="preferred_batch_sizes", type=_int_list)
    p.add_argument("--max-queue-delay-us", dest="max_queue_delay_us", type=int)
    p.add_argument("--max-queue-size", dest="max_queue_size", type=int)
    p.add_argument("--request-timeouts", dest="request_timeouts", action="store_const", const=True,
                   help="the engine drops requests still queued past their own timeout (a client's deadline), "
                        "at the cost of Triton's payload prefetching (docs/operations.md, Deadlines)")
    p.add_argument("--no-deadlines", dest="deadlines", action="store_const", const=False,
                   help="the tokenizer and the CPU engine compute requests whose deadline has passed, or cannot be "
                        "met, instead of dropping them (for measuring what the drops buy; docs/operations.md, Deadlines)")
    p.add_argument("--admission-passages", dest="admission_passages", type=int,
                   help="passages in flight before the gateway answers 503 (default: 4 x largest preferred "
                        "batch x engine instances)")
    p.add_argument("--engine-instances", dest="engine_instances", type=int, help="cpu: engine instances")
    p.add_argument("--cpu-engine", dest="cpu_engine", choices=["onnxruntime", "openvino"],
                   help="cpu: the runtime of the engine step (default openvino)")
    p.add_argument("--precision", dest="cpu_precision", type=precision_type("auto", "fp32", "bf16", openvino=True),
                   metavar="{auto,fp32,bf16}",
                   help="cpu: OpenVINO's precision: bf16 runs the linear layers in bf16, the rest in fp32; auto "
                        "(default) = bf16 where the serving CPU has AVX512-BF16/AMX, else fp32")
    p.add_argument("--ort-threads", dest="ort_threads", type=int, help="cpu: intra-op threads (0: all cores)")
    p.add_argument("--engine-tokens-per-run", dest="engine_tokens_per_run", type=int)
    p.add_argument("--openvino-shape-cache", dest="openvino_shape_cache", type=int,
                   help="cpu: input shapes whose prepared kernels OpenVINO keeps (bounds its memory; default 500)")
    p.add_argument("--gpus", type=_int_list, help="gpu: device ids, e.g. 0,1")
    p.add_argument("--instances-per-gpu", dest="instances_per_gpu", type=int)
    p.add_argument("--gpu-memory-gib", dest="gpu_memory_gib", type=float,
                   help="gpu: the serving GPU's memory (default: what the engine build recorded); the deployment "
                        "must fit it")
    p.add_argument("--triton-release", help="gpu: serving Triton release, e.g. 25.06 (its TensorRT must match)")
    p.add_argument("--serving-tensorrt", help="gpu: TensorRT version of the serving container, e.g. 10.11.0")
    p.set_defaults(func=_cmd_repository)

    p = sub.add_parser("engine", help="build a TensorRT engine (inside NVIDIA's TensorRT container, on a GPU); "
                                      "--plan-only: print its profiles and memory plan (no TensorRT needed)")
    p.add_argument("--onnx", help="model.onnx exported with the dtype the precision needs")
    p.add_argument("--precision", choices=["fp16", "bf16", "fp8"], default="fp16")
    p.add_argument("--out", type=Path)
    p.add_argument("--plan-only", action="store_true",
                   help="print the profiles, token budget and device memory of the default deployment as JSON; "
                        "needs neither TensorRT nor weights (dimensions from --onnx's config.json or --preset)")
    p.add_argument("--preset", choices=["tiny", "small", "full"], help="--plan-only: the model's size (default full)")
    p.add_argument("--instances-per-gpu", type=int, default=1, help="--plan-only: engine instances per GPU")
    p.add_argument("--buckets", type=_int_list, default=None, help="tokenizer length buckets (default 64..8192)")
    p.add_argument("--max-batch", type=int, default=64, help="rows per execution (Triton max_batch_size)")
    p.add_argument("--max-tokens-per-execution", type=int, default=131072,
                   help="token budget of one execution (rows x padded width): caps each profile")
    p.add_argument("--opt-tokens", type=int, default=16384, help="tokens per execution TensorRT tunes for")
    p.add_argument("--buckets-per-profile", type=int, default=2)
    p.add_argument("--workspace-gib", type=float, default=1.0,
                   help="tactic scratch limit; every execution context may use up to this much")
    p.add_argument("--timing-cache", help="persistent timing cache (default OUT/timing.cache)")
    p.add_argument("--seed", type=int, default=0, help="fp8 calibration text seed")
    p.set_defaults(func=_cmd_engine)

    p = sub.add_parser("quantize", help="FP8 Q/DQ ONNX from the fp16 export (runs on CPU; engine --precision fp8 "
                                        "uses it)")
    p.add_argument("--onnx", required=True, help="the fp16 model.onnx (export-onnx --precision fp16)")
    p.add_argument("--precision", choices=["fp8"], default="fp8")
    p.add_argument("--out", type=Path, required=True, help="writes OUT/model.onnx and OUT/quantize_meta.json")
    p.add_argument("--calibration-pairs", type=int, default=64, help="short calibration pairs (<= 256 tokens)")
    p.add_argument("--calibration-long-rows", type=_int_list,
                   help="lengths of the long calibration rows, one row each (default 2048,4096,8192; '' for none)")
    p.add_argument("--weight-scales", choices=["channel", "tensor"], default="channel",
                   help="FP8 weight scales per output channel (TensorRT >= 10.6 on Hopper, 10.7 on Ada) or per tensor")
    p.add_argument("--seed", type=int, default=0, help="calibration text seed")
    p.set_defaults(func=_cmd_quantize)

    p = sub.add_parser("check-engine", help="refuse a GPU repository whose engine was built for another GPU or "
                                            "TensorRT than this node's (a Triton pod's init container)")
    p.add_argument("--repository", default="/models/repository")
    p.add_argument("--tensorrt", help="the serving TensorRT version (default: this Python's tensorrt)")
    p.set_defaults(func=_cmd_check_engine)

    p = sub.add_parser("engine-key", help="print the engine volume's key for this node: <GPU product>/trt-X.Y.Z/"
                                          "<precision> (the engine Job writes there, the Triton pods mount it)")
    p.add_argument("--precision", choices=["fp16", "bf16", "fp8"], required=True)
    p.add_argument("--tensorrt", help="TensorRT version (default: this Python's tensorrt); 4 fields are cut to X.Y.Z")
    p.add_argument("--gpu-name", help="GPU product name (default: GPU 0 from nvidia-smi)")
    p.set_defaults(func=_cmd_engine_key)

    p = sub.add_parser("serve", help="run tritonserver and the REST gateway (foreground) on an assembled repository "
                                     "(the same command as rerank-serve, from the rerank_serving package)")
    from rerank_serving.cli import add_arguments as add_serve_arguments

    add_serve_arguments(p)
    p.set_defaults(func=_cmd_serve)

    p = sub.add_parser("full-check", help="full-size preset: checkpoint -> ONNX (external data) -> parity")
    p.add_argument("--workdir", default="build/full-check")
    p.add_argument("--seed", type=int, default=0)
    add_renamed(p, "--precision", "--dtype", dest="dtype", type=precision_type("fp32", "fp16"), default="fp32", metavar="{fp32,fp16}")
    p.set_defaults(func=_cmd_full_check)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.func(args) or 0)
    except (FileNotFoundError, NotADirectoryError, ValueError, NotImplementedError, RuntimeError) as exc:
        logger.error("%s", exc)
        return 2


if __name__ == "__main__":
    sys.exit(main())
