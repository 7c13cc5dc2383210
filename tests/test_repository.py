"""Repository assembly: templates, validation, self-containment, documentation of every parameter."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from rerank_build.repository import (
    MARKER, TEMPLATES, RepositoryError, RepositorySettings, build_repository, contract_files, fill, instance_groups,
    parse_config, template_parameters,
)

ROOT = Path(__file__).resolve().parents[1]
CLI = str(Path(sys.executable).with_name("rerank-build"))


def test_every_config_parses_and_names_match(tiny_repository):
    names = {}
    for config in tiny_repository.glob("*/config.pbtxt"):
        parsed = parse_config(config.read_text(), str(config))
        names[config.parent.name] = parsed
        assert parsed.name == config.parent.name
        assert "${" not in config.read_text()
    assert set(names) == {"tokenizer", "engine", "postprocess", "nvidia_llama_3_2_nv_rerankqa_1b_v2"}
    ensemble = names["nvidia_llama_3_2_nv_rerankqa_1b_v2"]
    assert [s.model_name for s in ensemble.ensemble_scheduling.step] == ["tokenizer", "engine", "postprocess"]
    engine = names["engine"]
    assert engine.dynamic_batching.max_queue_delay_microseconds == 100
    assert not engine.dynamic_batching.HasField("default_queue_policy"), "no queue policy unless asked for"
    assert [i.name for i in engine.input] == ["input_ids", "attention_mask"]


def test_repository_is_self_contained(tiny_repository):
    for model in ("tokenizer", "engine"):
        shipped = tiny_repository / model / "1" / "rerank_contract"
        assert sorted(p.name for p in shipped.glob("*.py")) == [p.name for p in contract_files()]
        for source in contract_files():
            assert (shipped / source.name).read_bytes() == source.read_bytes(), "one contract, copied verbatim"
    for py in tiny_repository.rglob("*.py"):
        text = py.read_text()
        assert "rerank_build" not in text and "sys.path" not in text and str(ROOT) not in text, py
    assert (tiny_repository / "tokenizer" / "1" / "tokenizer.json").is_file()
    assert (tiny_repository / "engine" / "1" / "model.onnx").is_file()
    assert (tiny_repository / MARKER).is_file()


def test_every_template_parameter_is_documented():
    readme = (ROOT / "docs" / "reference.md").read_text().split("## Template parameters", 1)[1]
    documented = set(re.findall(r"^\| `([a-z_]+)` \|", readme, flags=re.M))
    used = set().union(*template_parameters().values())
    assert used <= documented, f"undocumented template parameters: {sorted(used - documented)}"
    assert documented <= used | {"gpus", "profiles", "max_queue_size", "request_timeouts"}, f"documented but unused: {sorted(documented - used)}"


@pytest.mark.parametrize("overrides,fragment", [
    ({"target": "tpu"}, "target"),
    ({"max_rows": 0}, "max_rows must be at least 1"),
    ({"max_rows": 128, "engine_max_batch_size": 64}, "engine_max_batch_size (64) must be >= max_rows"),
    ({"buckets": (128, 64)}, "increasing"),
    ({"buckets": (64, 128)}, "must hold max_sequence_length"),
    ({"max_tokens_per_request": 100}, "cannot hold one pair"),
    ({"preferred_batch_sizes": (1024,)}, "preferred_batch_sizes"),
    ({"ensemble_name": "bad name!"}, "ensemble name"),
    ({"ensemble_name": "engine"}, "collides"),
    ({"gpus": (0, 0)}, "distinct"),
])
def test_invalid_settings_are_refused(overrides, fragment):
    with pytest.raises(RepositoryError, match=re.escape(fragment)):
        RepositorySettings(**overrides)


def test_admission_budget_follows_the_engine():
    assert RepositorySettings().admission_budget == 4 * 64 * 1, "4 preferred batches per engine instance"
    assert RepositorySettings(target="gpu", gpus=(0, 1), instances_per_gpu=2).admission_budget == 4 * 64 * 4
    assert RepositorySettings(admission_passages=100).admission_budget == 100
    assert RepositorySettings(admission_passages=100).template_values()["admission_passages"] == "100"


def test_fill_refuses_a_missing_value():
    with pytest.raises(RepositoryError, match=r"no value for placeholder \$\{missing\}"):
        fill("max_batch_size: ${missing}", {}, "x")


def test_invalid_config_text_is_refused():
    with pytest.raises(RepositoryError, match="not a valid Triton model config"):
        parse_config("max_batch_size: many", "engine/config.pbtxt")


@pytest.mark.parametrize("gpus,per_gpu", [((0,), 1), ((0, 1), 2), ((0, 1, 2, 3), 1)])
def test_gpu_instance_groups(gpus, per_gpu):
    text = "instance_group [\n" + instance_groups(gpus, per_gpu, (0, 1, 2)) + "\n]"
    config = parse_config(text, "engine")
    assert [list(g.gpus) for g in config.instance_group] == [[g] for g in gpus]
    assert all(g.count == per_gpu and list(g.profile) == ["0", "1", "2"] for g in config.instance_group)


def test_custom_name_and_reuse(tmp_path, tiny_checkpoint, tiny_onnx_fp32):
    settings = RepositorySettings(ensemble_name="my_reranker", max_rows=8, engine_max_batch_size=8,
                                  preferred_batch_sizes=(4, 8))
    out = build_repository(tiny_checkpoint, tmp_path / "r", settings, onnx=tiny_onnx_fp32)
    assert (out / "my_reranker" / "config.pbtxt").is_file()
    stamp = (out / "tokenizer" / "config.pbtxt").stat().st_mtime_ns
    build_repository(tiny_checkpoint, out, settings, onnx=tiny_onnx_fp32, reuse=True)
    assert (out / "tokenizer" / "config.pbtxt").stat().st_mtime_ns == stamp


def test_refuses_to_overwrite_a_foreign_directory(tmp_path, tiny_checkpoint, tiny_onnx_fp32):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "precious.txt").write_text("keep")
    with pytest.raises(RepositoryError, match="not a repository written by rerank-build"):
        build_repository(tiny_checkpoint, foreign, RepositorySettings(), onnx=tiny_onnx_fp32)
    assert (foreign / "precious.txt").exists()


def test_an_interrupted_build_leaves_out_as_it_was(tmp_path, tiny_checkpoint, tiny_onnx_fp32):
    """A build is written beside ``out`` and renamed into place: one that fails half-way (here the ONNX
    file turns out to be missing after the tokenizer step is written) leaves ``out`` absent or the
    previous complete repository, never a half-written, unmarked one that ``make serve`` refuses."""
    out = tmp_path / "r"
    missing = tmp_path / "missing.onnx"
    with pytest.raises(RepositoryError, match="does not exist"):
        build_repository(tiny_checkpoint, out, RepositorySettings(), onnx=missing)
    assert sorted(p.name for p in tmp_path.iterdir()) == [], "nothing half-written, no building directory"
    build_repository(tiny_checkpoint, out, RepositorySettings(), onnx=tiny_onnx_fp32)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    with pytest.raises(RepositoryError, match="does not exist"):
        build_repository(tiny_checkpoint, out, RepositorySettings(max_rows=8, engine_max_batch_size=8,
                                                                  preferred_batch_sizes=(4, 8)), onnx=missing)
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r"]
    # A build killed outright (SIGKILL) leaves its building directory: the next build removes it.
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = tmp_path / f".r.building-{dead.pid}-0badf00d"
    (stale / "tokenizer").mkdir(parents=True)
    build_repository(tiny_checkpoint, out, RepositorySettings(), onnx=tiny_onnx_fp32)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r"] and (out / MARKER).is_file()
    assert out.stat().st_mode & 0o777 == 0o777 & ~_umask(), "the same mode a plain mkdir gives"


def _umask() -> int:
    import os

    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_exports_onnx_when_none_is_given(tmp_path, tiny_checkpoint):
    out = build_repository(tiny_checkpoint, tmp_path / "r", RepositorySettings())
    names = {p.name for p in (out / "engine" / "1").iterdir()}
    assert {"model.onnx", "model.py", "export_meta.json"} <= names and "tokenizer.json" not in names
    # Every module of the template stays (model.py imports openvino_engine.py), only the export's by-products go.
    template = {p.name for p in (TEMPLATES / "engine_cpu" / "1").glob("*.py")}
    assert "openvino_engine.py" in template and template <= names, template - names


def test_cli_errors_are_clear(tmp_path, tiny_checkpoint):
    done = subprocess.run([CLI, "repository", "--checkpoint", str(tiny_checkpoint), "--target", "cpu",
                           "--out", str(tmp_path / "r"), "--max-rows", "1024"], capture_output=True, text=True)
    assert done.returncode == 2 and "engine_max_batch_size (512) must be >= max_rows (1024)" in done.stderr
    done = subprocess.run([CLI, "repository", "--checkpoint", str(tiny_checkpoint), "--target", "gpu",
                           "--out", str(tmp_path / "g")], capture_output=True, text=True)
    assert done.returncode == 2 and "needs --engine" in done.stderr


def test_limit_flags_take_the_published_names_and_the_old_spellings(caplog):
    """--max-rows-per-request / --max-tokens-per-request / --max-bytes-per-request are the names the
    ensemble publishes; the old spellings still parse to the same setting and log a deprecation."""
    import logging

    from rerank_build.cli import build_parser

    new = build_parser().parse_args(["repository", "--checkpoint", "c", "--target", "cpu", "--max-rows-per-request", "8",
                                     "--max-tokens-per-request", "4096", "--max-bytes-per-request", "9"])
    with caplog.at_level(logging.WARNING, logger="rerank_build"):
        old = build_parser().parse_args(["repository", "--checkpoint", "c", "--target", "cpu", "--max-rows", "8",
                                         "--max-request-tokens", "4096", "--max-request-bytes", "9"])
    for args in (new, old):
        assert (args.max_rows, args.max_tokens_per_request, args.max_bytes_per_request) == (8, 4096, 9)
    assert [r.getMessage() for r in caplog.records] == [
        "--max-rows is deprecated: use --max-rows-per-request",
        "--max-request-tokens is deprecated: use --max-tokens-per-request",
        "--max-request-bytes is deprecated: use --max-bytes-per-request"]


def test_the_fingerprint_names_every_served_file(tiny_repository, tmp_path):
    """The ensemble publishes a digest of the composing models' files: one changed byte in any of them
    (weights, tokenizer, configs) is another model identity, for the gateway's score cache."""
    import shutil

    from rerank_build.repository import served_fingerprint

    copy = tmp_path / "repo"
    shutil.copytree(tiny_repository, copy, symlinks=False)
    published = re.search(r'key: "model_fingerprint" value: \{ string_value: "([0-9a-f]{32})" \}',
                          next(p for p in copy.glob("*/config.pbtxt") if "model_fingerprint" in p.read_text()).read_text())
    assert published and published.group(1) == served_fingerprint(copy) == served_fingerprint(tiny_repository)
    for changed in ("tokenizer/1/tokenizer.json", "engine/1/model.onnx", "postprocess/config.pbtxt"):
        path = copy / changed
        original = path.read_bytes()
        path.write_bytes(original + b" ")
        assert served_fingerprint(copy) != published.group(1), changed
        path.write_bytes(original)
    assert served_fingerprint(copy) == published.group(1)
