"""Assemble a deployable Triton model repository from the templates in ``model_repository/`` (shipped
as the package data ``rerank_build.templates``).

The fill step substitutes ``${name}`` placeholders (every one documented in docs/reference.md's template table),
copies each model's ``1/`` files, the shared ``rerank_contract`` package, the tokenizer files and the
engine artefact (ONNX for ``cpu``, a TensorRT plan for ``gpu``), then parses every generated
``config.pbtxt`` into Triton's ModelConfig protobuf. The result imports nothing from this checkout.
"""

from __future__ import annotations

import importlib.resources
import json
import logging
import os
import re
import secrets
import shutil
import string
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import rerank_contract
from rerank_contract.names import ENSEMBLE_NAME
from rerank_contract.limits import DEFAULTS as LIMITS
from rerank_contract.prompt import EOS_ID

from .config import RerankerConfig
from .tokenizer_files import copy_tokenizer_files

logger = logging.getLogger(__name__)

#: The templates, package data of this package (``model_repository/`` in the checkout, mapped to
#: ``rerank_build.templates`` by pyproject.toml): the same lookup for an editable and a wheel install.
TEMPLATES = Path(str(importlib.resources.files("rerank_build.templates")))
MARKER = ".rerank-repository.json"
TARGETS = ("cpu", "gpu", "gpu-onnx")
CPU_ENGINES = ("onnxruntime", "openvino")
#: auto: bf16 where the serving CPU computes it natively, else f32 (decided when the engine loads).
CPU_PRECISIONS = ("auto", "f32", "bf16")
ENGINE_TEMPLATE = {"cpu": "engine_cpu", "gpu": "engine_tensorrt", "gpu-onnx": "engine_onnxruntime"}
#: deployed model name -> template folder (the engine's depends on the target).
MODELS = ("tokenizer", "engine", "postprocess")
CONTRACT = "rerank_contract"
#: Preferred batches per engine instance in the default admission budget: one executing, one being
#: formed by the batcher, two in the tokenizer or postprocess step.
ADMISSION_DEPTH = 4


#: The engine queue's default timeout under ``request_timeouts``: an hour, past any client deadline
#: (the gateway's is 60 s); a request that sends its own ``timeout`` gets that instead.
QUEUE_TIMEOUT_US = 3600 * 1_000_000


class RepositoryError(ValueError):
    """Settings or artefacts that cannot make a valid repository."""


@dataclass(frozen=True)
class RepositorySettings:
    """Every template parameter; docs/reference.md's template table documents each one."""

    target: str = "cpu"
    ensemble_name: str = ENSEMBLE_NAME
    # The published limits (rerank_contract.limits, their one home), under the template's names.
    max_rows: int = LIMITS.max_rows
    max_sequence_length: int = LIMITS.max_sequence_length
    buckets: tuple[int, ...] = LIMITS.buckets
    max_tokens_per_request: int = LIMITS.max_tokens
    max_bytes_per_request: int = LIMITS.max_bytes
    pad_id: int = EOS_ID
    tokenizer_instances: int = 2
    postprocess_instances: int = 1
    engine_max_batch_size: int = LIMITS.max_rows
    preferred_batch_sizes: tuple[int, ...] = (8, 16, 32, 64)
    max_queue_delay_us: int = 100
    max_queue_size: int = 0  # 0: no queue bound (see queue_policy in template_values)
    request_timeouts: bool = False  # the engine drops requests queued past their own timeout (see queue_policy)
    deadlines: bool = True  # the tokenizer and the CPU engine drop requests that cannot meet their deadline
    admission_passages: int = 0  # 0: ADMISSION_DEPTH full preferred batches per engine instance
    # cpu target
    cpu_engine: str = "openvino"  # or onnxruntime (1.3-1.6x slower on mixed and long pairs; docs/cpu_engine.md)
    cpu_precision: str = "auto"  # OpenVINO: bf16 (linear layers) where the CPU has AVX512-BF16/AMX, else f32
    engine_instances: int = 1
    ort_threads: int = 0
    engine_tokens_per_run: int = 4096
    # OpenVINO keeps prepared kernels per input shape, 5,000 shapes by default; our runs come in thousands
    # of (rows, width) shapes, so its memory rose for the whole 10-minute soak (engine +12 %). A bound of a
    # few hundred keeps the shapes that repeat; on the small preset, 600 random runs of up to 4,096 tokens
    # took the same time with 300 as with 5,000 (docs/cpu_engine.md, "Memory"). The engine model has no
    # default of its own: every engine parameter's default is here.
    openvino_shape_cache: int = 500
    # gpu target
    gpus: tuple[int, ...] = (0,)
    instances_per_gpu: int = 1  # fits an 80 GB GPU with the full model (2 do by estimate; docs/gpu.md, "Memory")

    def __post_init__(self) -> None:
        problems = []
        if self.target not in TARGETS:
            problems.append(f"target must be one of {TARGETS}, got {self.target!r}")
        if self.cpu_engine not in CPU_ENGINES or self.cpu_precision not in CPU_PRECISIONS:
            problems.append(f"cpu_engine must be one of {CPU_ENGINES} and cpu_precision one of {CPU_PRECISIONS}, "
                            f"got {self.cpu_engine!r} and {self.cpu_precision!r}")
        elif self.cpu_precision == "bf16" and self.cpu_engine != "openvino":
            problems.append("cpu_precision bf16 needs cpu_engine openvino (ONNX Runtime has no bf16 CPU kernels)")
        if not re.fullmatch(r"[A-Za-z0-9_.\-]+", self.ensemble_name):
            problems.append(f"ensemble name {self.ensemble_name!r} may hold only letters, digits, '_', '.', '-'")
        if self.ensemble_name in MODELS:
            problems.append(f"ensemble name {self.ensemble_name!r} collides with a composing model")
        for name in ("max_rows", "max_sequence_length", "max_tokens_per_request", "max_bytes_per_request", "tokenizer_instances",
                     "postprocess_instances", "engine_max_batch_size", "engine_instances", "instances_per_gpu",
                     "engine_tokens_per_run", "openvino_shape_cache"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be at least 1, got {getattr(self, name)}")
        if min(self.max_queue_delay_us, self.ort_threads, self.max_queue_size, self.admission_passages) < 0:
            problems.append("max_queue_delay_us, ort_threads, max_queue_size and admission_passages must not be "
                            "negative")
        if not self.buckets or list(self.buckets) != sorted(set(self.buckets)) or self.buckets[0] < 1:
            problems.append(f"buckets must be increasing positive lengths, got {list(self.buckets)}")
        elif self.buckets[-1] < self.max_sequence_length:
            problems.append(f"the longest bucket ({self.buckets[-1]}) must hold max_sequence_length "
                            f"({self.max_sequence_length})")
        if self.engine_max_batch_size < self.max_rows:
            problems.append(f"engine_max_batch_size ({self.engine_max_batch_size}) must be >= max_rows "
                            f"({self.max_rows}): a full request must fit the engine in one batch")
        if any(b < 1 or b > self.engine_max_batch_size for b in self.preferred_batch_sizes):
            problems.append(f"preferred_batch_sizes {list(self.preferred_batch_sizes)} must lie in "
                            f"1..engine_max_batch_size ({self.engine_max_batch_size})")
        if self.buckets and self.max_tokens_per_request < self.served_buckets[-1]:
            problems.append(f"max_tokens_per_request ({self.max_tokens_per_request}) cannot hold one pair of the longest "
                            f"bucket ({self.served_buckets[-1]})")
        if not self.gpus or any(g < 0 for g in self.gpus) or len(set(self.gpus)) != len(self.gpus):
            problems.append(f"gpus must be distinct device ids, got {list(self.gpus)}")
        if problems:
            raise RepositoryError("; ".join(problems))

    @property
    def served_buckets(self) -> tuple[int, ...]:
        """The buckets below ``max_sequence_length``, then that length: no row is ever longer, so a
        small ``--max-sequence-length`` (64 for tests of CHUNK's windows) also bounds the engine's width."""
        return tuple(b for b in self.buckets if b < self.max_sequence_length) + (self.max_sequence_length,)

    @property
    def engine_instance_count(self) -> int:
        return self.engine_instances if self.target == "cpu" else len(self.gpus) * self.instances_per_gpu

    @property
    def admission_budget(self) -> int:
        """Passages in flight before the gateway says 503: the given budget, or enough to keep every
        engine instance busy with a full preferred batch while the next ones are queued, tokenized and
        post-processed (:data:`ADMISSION_DEPTH` batches each). Work past that only waits in a queue."""
        if self.admission_passages:
            return self.admission_passages
        return ADMISSION_DEPTH * max(self.preferred_batch_sizes) * self.engine_instance_count

    def template_values(self, num_profiles: int = 1) -> dict[str, str]:
        """The ``${name}`` substitutions (``num_profiles``: the GPU engine's optimization profiles)."""
        values = {f.name: str(getattr(self, f.name)) for f in fields(self)}
        values["buckets"] = ",".join(map(str, self.served_buckets))
        values["admission_passages"] = str(self.admission_budget)
        values["max_width"] = str(self.served_buckets[-1])
        values["preferred_batch_sizes"] = ", ".join(map(str, self.preferred_batch_sizes))
        values["instance_groups"] = instance_groups(self.gpus, self.instances_per_gpu, tuple(range(num_profiles)))
        # Any queue policy (a max_queue_size, per-request timeouts) turns off Triton's payload
        # prefetching: measured on Triton 2.51, a request that arrives while the engine is busy then
        # waits for the batcher's 500 ms poll (or the next arrival). Opt-in only (docs/operations.md).
        policy = []
        if self.request_timeouts:
            # Triton lets a request only shorten the default timeout, and a default of 0 means none:
            # so a default far past any deadline, which each request's own `timeout` then shortens.
            policy.append(f"default_timeout_microseconds: {QUEUE_TIMEOUT_US} allow_timeout_override: true")
        if self.max_queue_size:
            policy.append(f"max_queue_size: {self.max_queue_size}")
        values["queue_policy"] = f"default_queue_policy {{ {' '.join(policy)} }}" if policy else ""
        values["deadlines"] = "on" if self.deadlines else "off"
        for name in ("gpus", "max_queue_size", "request_timeouts"):
            values.pop(name)
        return values


def gpu_batching_values(meta: dict[str, Any], settings: RepositorySettings) -> dict[str, str]:
    """The GPU engine's batching: the strategy's limits from the engine's profiles, and every batch
    size preferred (with no queue delay, in the template), so that Triton never grows a batch past
    what the strategy admitted (docs/gpu.md, "Batches that fit a profile")."""
    from .profiles import Profile, rows_by_width

    profiles = [Profile.from_dict(p) for p in meta["profiles"]]
    return {
        "engine_batch_sizes": ", ".join(str(n) for n in range(1, settings.engine_max_batch_size + 1)),
        "max_tokens_per_execution": str(meta["max_tokens_per_execution"]),
        "rows_by_width": rows_by_width(profiles),
    }


def _onnx_gpu_values(ckpt_dir: Path, onnx: Path, settings: RepositorySettings) -> dict[str, str]:
    from .onnx_gpu import check_onnx, onnx_gpu_values

    try:
        check_onnx(onnx)
    except ValueError as exc:
        raise RepositoryError(str(exc)) from None
    values, problems = onnx_gpu_values(RerankerConfig.from_file(ckpt_dir), settings)
    if problems:
        raise RepositoryError("the gpu-onnx engine cannot serve these settings: " + "; ".join(problems))
    values["instance_groups"] = instance_groups(settings.gpus, settings.instances_per_gpu, ())
    return values


def instance_groups(gpus: tuple[int, ...], per_gpu: int, profiles: tuple[int, ...]) -> str:
    """One KIND_GPU group per device; every group lists every TensorRT profile (else only profile 0 is
    used); none for ONNX Runtime."""
    listed = " profile: [ " + ", ".join(f'"{p}"' for p in profiles) + " ]" if profiles else ""
    return ",\n".join(f"  {{ count: {per_gpu} kind: KIND_GPU gpus: [ {gpu} ]{listed} }}" for gpu in gpus)


def fill(template: str, values: dict[str, str], source: str = "template") -> str:
    """Substitute every placeholder; a missing value is an error, never an empty string."""
    try:
        return string.Template(template).substitute(values)
    except KeyError as exc:
        raise RepositoryError(f"{source}: no value for placeholder ${{{exc.args[0]}}}") from None


def placeholders(template: str) -> set[str]:
    return {m.group("named") or m.group("braced") for m in string.Template.pattern.finditer(template)
            if m.group("named") or m.group("braced")}


def parse_config(text: str, source: str) -> Any:
    """Parse into Triton's ModelConfig protobuf; raises RepositoryError naming the file."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    try:
        return text_format.Parse(text, model_config_pb2.ModelConfig())
    except text_format.ParseError as exc:
        raise RepositoryError(f"{source} is not a valid Triton model config: {exc}") from None


def _link_or_copy(src: Path, dst: Path) -> None:
    """Hard-link big artefacts when on the same filesystem; copy otherwise."""
    dst.unlink(missing_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _prepare_out(out: Path, force: bool) -> Path:
    """Check that ``out`` may be replaced, and return an empty directory beside it to build in.

    A build is written there and renamed into place (:func:`_move_into_place`), so an interrupted
    build never leaves a half-written ``out`` (which the next ``make serve`` would refuse as unmarked).
    Building directories that dead builds left beside ``out`` are removed here.
    """
    if out.exists() and any(out.iterdir()):
        if not (out / MARKER).is_file() and not force:
            raise RepositoryError(f"{out} exists and is not a repository written by rerank-build; use --force")
    out.parent.mkdir(parents=True, exist_ok=True)
    left_behind = re.compile(rf"\.{re.escape(out.name)}\.(building|replaced)-(\d+)(-\w+)?")
    for stale in out.parent.iterdir():
        match = left_behind.fullmatch(stale.name)
        if match and not _pid_alive(int(match.group(2))):
            shutil.rmtree(stale, ignore_errors=True)
    building = out.with_name(f".{out.name}.building-{os.getpid()}-{secrets.token_hex(4)}")
    building.mkdir()  # mode from the umask, as out itself would get (mkdtemp's would be 0700)
    return building


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _move_into_place(built: Path, out: Path) -> None:
    """Replace ``out`` by the finished ``built`` with renames: at every moment ``out`` is the old
    complete repository, absent, or the new complete one. (``out`` must not itself be a mount point:
    give a directory inside the volume.)"""
    replaced = out.with_name(f".{out.name}.replaced-{os.getpid()}")
    if out.exists():
        out.rename(replaced)
    built.rename(out)
    if replaced.exists():
        shutil.rmtree(replaced)


def _write_model(out: Path, deployed: str, template_dir: str, values: dict[str, str]) -> Path:
    src = TEMPLATES / template_dir
    dst = out / deployed
    (dst / "1").mkdir(parents=True, exist_ok=True)
    text = fill((src / "config.pbtxt").read_text(), values, f"{template_dir}/config.pbtxt")
    parse_config(text, f"{deployed}/config.pbtxt")
    (dst / "config.pbtxt").write_text(text)
    if (src / "1").is_dir():
        for item in (src / "1").iterdir():
            if item.is_file() and item.suffix == ".py":
                shutil.copy2(item, dst / "1" / item.name)
    return dst / "1"


def contract_files() -> list[Path]:
    """The ``rerank_contract`` package's modules, which the python models import."""
    return sorted(Path(rerank_contract.__file__).parent.glob("*.py"))


def copy_contract(model_dir: Path) -> None:
    """A verbatim copy of the contract package beside a ``model.py`` (the repository imports
    nothing from this checkout)."""
    dst = model_dir / CONTRACT
    dst.mkdir(exist_ok=True)
    for path in contract_files():
        shutil.copy2(path, dst / path.name)


def _source_signature(checkpoint: str, onnx: str | None, engine: str | None, settings: RepositorySettings) -> dict:
    def stamp(path: str | None) -> Any:
        if not path:
            return None
        p = Path(path)
        return {"path": str(p.resolve()), "mtime": p.stat().st_mtime} if p.exists() else str(path)

    return {"checkpoint": stamp(checkpoint), "onnx": stamp(onnx), "engine": stamp(engine),
            "settings": asdict(settings), "templates": _templates_digest()}


def _templates_digest() -> str:
    """Changes to any template, model.py or the prompt module invalidate a --reuse."""
    import hashlib

    digest = hashlib.sha256()
    for path in contract_files():
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    for path in sorted(TEMPLATES.rglob("*")):
        if path.is_file() and path.suffix in (".py", ".pbtxt", ".c"):
            digest.update(path.relative_to(TEMPLATES).as_posix().encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


def served_fingerprint(repository: Path) -> str:
    """A digest of every file of the composing models (tokenizer, engine, postprocess), their configs included.

    It names what answers a request: the weights (or the engine plan), the tokenizer files, the template
    and limits (the ``rerank_contract`` copy and the configs) and the runtime settings that change a logit
    (precision, engine). A cache keyed on it (the REST gateway's score cache) can never answer for one
    checkpoint with another's score. The ensemble's own config is written after, carrying it.
    """
    import hashlib

    digest = hashlib.sha256()
    for model in ("tokenizer", "engine", "postprocess"):
        for path in sorted((repository / model).rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts:
                digest.update(path.relative_to(repository).as_posix().encode() + b"\0")
                content = hashlib.sha256()  # per file, so that no two file lists hash the same stream
                with path.open("rb") as f:
                    for block in iter(lambda: f.read(1 << 20), b""):
                        content.update(block)
                digest.update(content.digest())
    return digest.hexdigest()[:32]


def is_current(out: Path, signature: dict) -> bool:
    """True when ``out`` was written from the same sources and settings (``--reuse``)."""
    marker = out / MARKER
    if not marker.is_file():
        return False
    return json.loads(marker.read_text()).get("signature") == json.loads(json.dumps(signature))


def build_repository(
    checkpoint: str | Path,
    out: str | Path,
    settings: RepositorySettings,
    onnx: str | Path | None = None,
    engine: str | Path | None = None,
    force: bool = False,
    reuse: bool = False,
    triton_release: str | None = None,
    serving_tensorrt: str | None = None,
    gpu_memory_gib: float | None = None,
) -> Path:
    """Write a complete repository under ``out``; returns ``out``.

    gpu: ``triton_release`` / ``serving_tensorrt`` name the serving container's TensorRT, which must be
    the one the engine was built with; ``gpu_memory_gib`` overrides the GPU memory the build recorded
    (the deployment must fit it).
    """
    from .checkpoint import resolve_checkpoint

    out = Path(out)
    ckpt_dir = resolve_checkpoint(checkpoint)
    signature = _source_signature(str(ckpt_dir), str(onnx) if onnx else None, str(engine) if engine else None,
                                  settings)
    if reuse and is_current(out, signature):
        logger.info("repository %s is current; reusing it", out)
        return out
    if settings.target == "gpu" and not engine:
        raise RepositoryError("the gpu target needs --engine (a TensorRT plan built by `rerank-build engine`)")
    if settings.target != "gpu" and engine:
        raise RepositoryError(f"--engine is a TensorRT plan, for --target gpu; the {settings.target} target serves ONNX")
    if settings.target == "gpu-onnx" and not onnx:
        raise RepositoryError("the gpu-onnx target needs --onnx (the fp16 export: `rerank-build export-onnx --dtype fp16`)")
    gpu_meta = None
    if settings.target == "gpu":
        from .engine_meta import check_engine_for_repository

        gpu_meta = check_engine_for_repository(Path(engine), settings, triton_release,  # type: ignore[arg-type]
                                               serving_tensorrt, gpu_memory_gib)
    values = settings.template_values(len(gpu_meta["profiles"]) if gpu_meta else 1)
    if gpu_meta:
        values.update(gpu_batching_values(gpu_meta, settings))
    if settings.target == "gpu-onnx":
        values.update(_onnx_gpu_values(ckpt_dir, Path(onnx), settings))  # type: ignore[arg-type]
    values["vocab_size"] = str(RerankerConfig.from_file(ckpt_dir).vocab_size)
    final, out = out, _prepare_out(out, force)  # built beside ``final``, renamed into place
    try:
        tok_dir = _write_model(out, "tokenizer", "tokenizer", values)
        copy_contract(tok_dir)
        copy_tokenizer_files(ckpt_dir, tok_dir)

        engine_dir = _write_model(out, "engine", ENGINE_TEMPLATE[settings.target], values)
        if settings.target == "cpu":
            copy_contract(engine_dir)
            _place_onnx(ckpt_dir, Path(onnx) if onnx else None, engine_dir)
        elif settings.target == "gpu-onnx":
            from .batch_strategy import compile_strategy

            _place_onnx(ckpt_dir, Path(onnx), engine_dir)  # type: ignore[arg-type]
            compile_strategy(engine_dir.parent)
        else:
            from .batch_strategy import compile_strategy

            _link_or_copy(Path(engine), engine_dir / "model.plan")  # type: ignore[arg-type]
            (engine_dir / "engine_meta.json").write_text(json.dumps(gpu_meta, indent=2))
            compile_strategy(engine_dir.parent)

        copy_contract(_write_model(out, "postprocess", "postprocess", values))  # its ranking-order rule
        values["model_fingerprint"] = served_fingerprint(out)
        _write_model(out, settings.ensemble_name, "ensemble", values)
        (out / MARKER).write_text(json.dumps({"signature": signature}, indent=2))
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)
        raise
    _move_into_place(out, final)
    logger.info("wrote %s repository to %s", settings.target, final)
    return final


def _place_onnx(ckpt_dir: Path, onnx: Path | None, engine_dir: Path) -> None:
    """Link (or copy) an ONNX export into the engine folder: the one given, else the fp32 export of the
    checkpoint from the build cache (exported there once; never into the engine folder)."""
    from .export_onnx import EXTERNAL_DATA_FILE, cached_export

    if onnx is None:
        logger.info("no --onnx given: the fp32 ONNX of %s", ckpt_dir)
        onnx = cached_export(ckpt_dir, dtype="fp32")
    if not onnx.is_file():
        raise RepositoryError(f"--onnx {onnx} does not exist")
    _link_or_copy(onnx, engine_dir / "model.onnx")
    data = onnx.with_name(EXTERNAL_DATA_FILE)
    if data.is_file():
        _link_or_copy(data, engine_dir / EXTERNAL_DATA_FILE)
    if onnx.with_name("export_meta.json").is_file():
        shutil.copy2(onnx.with_name("export_meta.json"), engine_dir / "export_meta.json")


def template_parameters() -> dict[str, set[str]]:
    """Placeholders used by each template folder (the docs table must cover them all)."""
    return {d.name: placeholders((d / "config.pbtxt").read_text())
            for d in sorted(TEMPLATES.iterdir()) if (d / "config.pbtxt").is_file()}
