"""Workload generator, the Locust run driver (a short smoke run) and the bench harness (quick mode)."""

from __future__ import annotations

import csv
import math
import re

import numpy as np
import pytest

from loadtests import bench, gateway_overhead, overload, run_loadtest, soak
from loadtests.workload import Workload, WorkloadSpec

pytestmark = pytest.mark.server


def tables(text: str) -> list[list[dict[str, str]]]:
    """Every markdown table of a report, each a list of {column header: cell}."""
    found: list[list[dict[str, str]]] = []
    header: list[str] | None = None
    for line in text.splitlines():
        if not line.startswith("|"):
            header = None
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if header is None:
            header = cells
            found.append([])
        elif not set(line) <= set("|-: "):
            found[-1].append(dict(zip(header, cells)))
    return found


def numbers(cell: str) -> list[float]:
    """The numbers in a cell ("1,234.5", "12%", "0.23 / 0.51 s")."""
    return [float(x.replace(",", "")) for x in re.findall(r"-?\d[\d,]*\.?\d*(?:e[-+]?\d+)?", cell)]


def sane(value: float, low: float = 0.0, high: float = math.inf) -> bool:
    """Finite and within (low, high]: a rate, a time, a count that a run actually measured."""
    return math.isfinite(value) and low < value <= high


def test_workload_is_seeded_varied_and_multilingual(encoder):
    a, b = Workload(WorkloadSpec(seed=3)).take(20), Workload(WorkloadSpec(seed=3)).take(20)
    assert a == b
    assert Workload(WorkloadSpec(seed=3), worker=1).take(20) != a
    assert {r.pairs for r in a} <= {10, 50, 100} and len({r.pairs for r in a}) > 1
    assert len({r.query for r in a}) == 20 and len({p for r in a for p in r.passages}) > 0.99 * sum(r.pairs for r in a)
    lengths = np.array([len(ids) for r in a for ids in encoder.encode(r.query, r.passages, "END")])
    assert 0.7 < np.mean((lengths >= 40) & (lengths <= 600)) and lengths.max() > 2000
    scripts = {"Cyrillic": "\u0400", "Arabic": "\u0600", "Thai": "\u0e00", "CJK": "\u4e00"}
    text = " ".join(p for r in a for p in r.passages)
    assert sum(any(ord(lo) <= ord(ch) < ord(lo) + 256 for ch in text) for lo in scripts.values()) >= 3
    assert all(5 <= len(r.query.split()) <= 30 for r in a)


def test_workload_spec_parsing():
    spec = WorkloadSpec.parse(1, "4,8", "0.9:20-200,0.1:200-400")
    assert spec.passage_mix == (4, 8) and spec.length_mix == ((0.9, 20, 200), (0.1, 200, 400))


@pytest.mark.slow
def test_locust_smoke_run_writes_a_report(server, gateway, tmp_path):
    code = run_loadtest.main(["--duration", "12s", "--users", "5", "--spawn-rate", "5",
                              "--grpc-url", server.grpc_url, "--http-url", server.http_url, "--gateway-url", gateway.url,
                              "--reports", str(tmp_path), "--", "--passages", "4,8", "--lengths", "1.0:20-200"])
    assert code == 0
    (report,) = tmp_path.iterdir()
    names = {p.name for p in report.iterdir()}
    assert {"locust_stats.csv", "locust_stats_history.csv", "report.html", "summary.md", "latency.png",
            "throughput.png"} <= names
    with open(report / "locust_stats.csv") as fh:
        rows = {row["Type"]: row for row in csv.DictReader(fh) if row["Name"] == "rerank"}
    assert set(rows) == {"rest-gateway", "grpc-client", "http-client", "grpc-raw", "http-raw"}
    for kind, row in rows.items():  # every kind of user sent requests, none failed, each number is plausible
        assert int(row["Request Count"]) > 0 and int(row["Failure Count"]) == 0, (kind, row)
        assert sane(float(row["Requests/s"])), (kind, row)
        assert 4 <= float(row["Average Content Size"]) <= 8, (kind, row)  # pairs per request: --passages 4,8
        assert sane(float(row["50%"]), high=12_000) and float(row["50%"]) <= float(row["99%"]), (kind, row)
    summary = (report / "summary.md").read_text()
    assert "- none" in summary, summary
    (table,) = tables(summary)
    total = next(r for r in table if r["type"] == "**all**")
    assert int(total["requests"]) == sum(int(r["Request Count"]) for r in rows.values()) and total["failures"] == "0"
    assert sane(float(total["pairs/s"])) and sane(float(total["requests/s"]))
    assert 4 <= float(total["pairs/s"]) / float(total["requests/s"]) <= 8, total


@pytest.mark.slow
def test_locust_run_fails_on_unexpected_failures(server, gateway, tmp_path):
    args = ["--duration", "6s", "--users", "2", "--user-classes", "GrpcRawUser,RestGatewayUser",
            "--grpc-url", server.grpc_url, "--http-url", server.http_url, "--gateway-url", gateway.url,
            "--reports", str(tmp_path)]
    locust_args = ["--", "--passages", "1", "--lengths", "1.0:12000-13000", "--truncate", "NONE"]
    assert run_loadtest.main(args + locust_args) == 1
    summary = next(tmp_path.iterdir()) / "summary.md"
    assert "InputTooLongError" in summary.read_text()
    assert run_loadtest.main(args + ["--allow-failures", "InputTooLongError"] + locust_args) == 0


@pytest.mark.slow
def test_bench_quick_mode(tmp_path):
    from rerank_build.cpu_runtime import bf16_native

    assert bench.main(["--quick", "--no-docs", "--reports", str(tmp_path)]) == 0
    text = next(tmp_path.iterdir()).joinpath("bench.md").read_text()
    for workload in ("### short:", "### mixed:", "### long:"):
        assert workload in text, workload
    default = f"| {bench.DEFAULT_SYSTEM} | {'bf16' if bf16_native() else 'fp32'} |"
    for system in (f"{default} 1 |", f"{default} 2 |", "| ours, OpenVINO | fp32 | 1 |", "| ours, OpenVINO | fp32 | 2 |",
                   "| ours, ONNX Runtime | fp32 |", f"| {bench.CROSS_ENCODER} | fp32 |",
                   f"| {bench.VLLM} | fp32 | 1 | skipped: QUICK mode", "matmul peak, measured in this run"):
        assert system in text, system
    assert "### Overhead: tiny preset, 64 passages" in text and "padding efficiency" in text
    ours = [line for line in text.splitlines() if line.startswith("| ours") and "| 1 |" in line]
    assert ours and all("%" in line.split("|")[8] for line in ours), "padding efficiency from the engine's counters"
    # Accuracy beside speed: every system that ran, against the reference on the same pairs.
    accuracy = text.split("### Accuracy against the fp32 reference")[1].split("###")[0]
    rows = {line.split(" | ")[0][2:] + " " + line.split(" | ")[1]: line for line in accuracy.splitlines()
            if line.startswith("| ") and "---" not in line and "system" not in line}
    assert rows["ours, OpenVINO fp32"].endswith("| yes |") and rows["ours, ONNX Runtime fp32"].endswith("| yes |")
    assert rows[f"{bench.DEFAULT_SYSTEM} {'bf16' if bf16_native() else 'fp32'}"].endswith("| yes |")
    assert rows[f"{bench.CROSS_ENCODER} fp32"].endswith("| **no** |"), "a causal view is not the model"
    assert "skipped: QUICK mode" in rows[f"{bench.VLLM} fp32"]
    equal = text.split("### Pairs/s at equal accuracy")[1].split("###")[0]
    assert "| short | 1 |" in equal and "none meets the bound" in equal and "not run" in equal
    ceiling = text.split("### Host ceiling")[1].split("###")[0]
    for row in ("| short | gRPC, client library |", "| long | REST gateway |"):
        assert row in ceiling, row
    # The server's CPU registers (summed over tritonserver, its stubs and the gateway, over phases long
    # enough for the kernel's 10 ms ticks) and splits by part; the host cores one H100 needs are finite.
    ceiling_rows = [line.split(" | ") for line in ceiling.splitlines() if line.startswith("| ") and "---" not in line
                    and "workload" not in line]
    assert len(ceiling_rows) == 6, ceiling
    for cells in ceiling_rows:
        assert float(cells[3]) > 0 and "tokenizer" in cells[5] and "tritonserver" in cells[5], cells
        assert all(np.isfinite(float(x)) and float(x) > 0 for x in cells[7].rstrip(" |").split(" / ")), cells
    assert "One H100 needs at most" in ceiling and "What to change first" in ceiling
    measured = [row for table in tables(text) for row in table if "pairs/s" in row and "skipped" not in row["pairs/s"]]
    assert len(measured) >= 12, measured
    for row in measured:  # every system that ran: a positive rate, ordered percentiles, a real share
        assert sane(numbers(row["pairs/s"])[0]), row
        assert sane(numbers(row["p50 ms"])[0]) and numbers(row["p50 ms"])[0] <= numbers(row["p99 ms"])[0], row
        if row["padding efficiency"] != "-":
            assert sane(numbers(row["padding efficiency"])[0], high=100), row


@pytest.mark.slow
def test_gateway_overhead_quick_run(tiny_repository, tmp_path):
    assert gateway_overhead.main(["--repository", str(tiny_repository), "--label", "tiny", "--requests-16", "2",
                                  "--requests-200", "1", "--concurrent-requests", "8", "--reports", str(tmp_path)]) == 0
    report = next(tmp_path.iterdir()).joinpath("report.md").read_text()
    for row in ("| tiny | 1 x 16, 1 client |", "| tiny | 1 x 200, 1 client |", "| tiny | 1 x 16, 8 clients |",
                "| tiny | 1 x 200, 8 clients |"):
        assert row in report, row
    assert "of a core" in report
    (table,) = tables(report)
    assert len(table) == 4
    for row in table:  # each path measured: p50 <= p95 (or a rate), positive, and the gateway's CPU share
        for path in ("raw gRPC: p50 / p95 ms, or pairs/s", "client library, gRPC", "REST gateway"):
            values = numbers(row[path])
            assert values and all(sane(v) for v in values) and values == sorted(values)[:len(values)], (path, row)
        cpu = numbers(row["gateway CPU"])[0]  # one request may round to 0.0 ms of CPU
        assert math.isfinite(cpu) and 0 <= cpu <= 200, row


def test_soak_growth_compares_floors():
    assert soak.growth([100, 130, 100, 100, 140, 101]).ratio == pytest.approx(0.0), "peaks are not growth"
    assert soak.growth([100, 100, 100, 110, 110, 112]).ratio == pytest.approx(0.10), "a rising floor is"
    assert soak.growth([100, 100, 100]) is None, "too few samples to tell"


@pytest.mark.slow
@pytest.mark.timeout(600)  # 3 minutes of load after a 60 s warm-up, on top of the stack's start
def test_soak_three_minutes(tiny_repository, tmp_path):
    """The CI version of `make soak DURATION=10m`: real Locust at saturation, RSS sampled, pass criteria.

    Warm-up 60 s: OpenVINO prepares kernels per input shape and caches them (up to 500 shapes here), so
    the engine's RSS climbs while new shapes keep coming and slows after about a minute of this load
    (measured with OpenVINO's own bound of 5,000: 437 MB at 30 s, 474 MB at 70 s, 476 MB at 120 s; a
    3-minute run after 60 s: engine +6.1 %, total +3.0 %)."""
    code = soak.main(["--duration", "3m", "--repository", str(tiny_repository), "--reports", str(tmp_path),
                      "--sample-s", "5", "--warmup-s", "60"])
    report = next(tmp_path.iterdir())
    text = (report / "report.md").read_text()
    print(text)
    assert code == 0, text
    assert "# Soak: PASS" in text and "unexpected failures: 0" in text
    for row in ("| tritonserver |", "| stub engine_0_0 |", "| stub tokenizer_0_1 |", "| gateway |", "| **total** |"):
        assert row in text, row
    assert {"memory.png", "memory.csv", "locust_stats.csv"} <= {p.name for p in report.iterdir()}


@pytest.mark.slow
def test_overload_quick_run(tiny_repository, tmp_path):
    assert overload.main(["--repository", str(tiny_repository), "--label", "tiny", "--factors", "3",
                          "--phase-s", "3", "--capacity-s", "3", "--out", str(tmp_path), "--workload", "mixed",
                          "--modes", "on,passages,off"]) == 0
    report = (tmp_path / "overload-tiny.md").read_text()
    assert "| on | 3x |" in report and "| passages | 3x |" in report and "| off | 3x |" in report
    assert "Sustainable load" in report and "(mixed workload)" in report
    assert sane(numbers(re.search(r"Sustainable load: ([\d.]+) requests/s", report).group(1))[0])
    rows = {row["admission"]: row for table in tables(report) for row in table if "admission" in row}
    for mode, row in rows.items():  # every request accounted for, some answered, nothing else failed
        requests, ok, rejected = int(row["requests"]), int(row["200"]), numbers(row["503 (rejected share)"])[0]
        assert requests > 0 and ok > 0 and ok + rejected + int(row["other failures"]) == requests, row
        assert row["other failures"] == "0" and sane(numbers(row["goodput pairs/s"])[0]), row
        answered, computed = numbers(row["goodput tokens/s"])[0], numbers(row["engine tokens/s"])[0]
        assert 0 < answered <= computed * 1.001, f"the engine computed fewer tokens than were answered: {row}"
    assert numbers(rows["off"]["503 (rejected share)"])[0] == 0, "without admission nothing is refused"


@pytest.mark.slow
def test_chunk_cost_quick_run(tiny_checkpoint, tmp_path):
    from loadtests import chunk_cost

    assert chunk_cost.main(["--checkpoint", str(tiny_checkpoint), "--label", "tiny", "--requests", "2",
                            "--max-sequence-length", "64", "--out", str(tmp_path)]) == 0
    report = (tmp_path / "chunk-cost-tiny.md").read_text()
    assert "| 1 | CHUNK |" in report and "| 4 | END |" in report and "window logits" in report
    rows = [row for table in tables(report) for row in table if "mode" in row]
    assert len(rows) == 4
    for row in rows:
        assert float(row["seconds"]) >= 0 and sane(float(row["pairs/s"])) and int(row["tokens scored"]) > 0, row
    by = {(row["concurrency"], row["mode"]): row for row in rows}
    for c in ("1", "4"):  # CHUNK scores every window: more windows and tokens than END, never fewer
        assert int(by[c, "CHUNK"]["windows"]) > int(by[c, "END"]["windows"]), by
        assert int(by[c, "CHUNK"]["tokens scored"]) > int(by[c, "END"]["tokens scored"]), by


def test_cpu_engines_quick_run(tiny_onnx_fp32, tmp_path):
    from loadtests import cpu_engines

    assert cpu_engines.main(["--onnx", str(tiny_onnx_fp32), "--label", "tiny", "--iters", "1",
                             "--out", str(tmp_path / "cpu.md")]) == 0
    report = (tmp_path / "cpu.md").read_text()
    assert "| 4 x 1024 | OpenVINO f32 |" in report and "| 32 x 128 | ONNX Runtime fp32 |" in report
    (table,) = tables(report)
    for row in table:
        assert sane(float(row["ms per batch"])) and sane(float(row["pairs/s"].replace(",", ""))), row
        if "f32" in row["runtime"] or "fp32" in row["runtime"]:  # the same computation: the same logits
            assert float(row["max abs vs ONNX Runtime fp32"]) < 1e-3, row


def test_gpu_probe_quick_run(tmp_path):
    """The PyTorch probe a first GPU session runs (docs/gpu.md): on a CPU it measures attention for
    every mask and says plainly what it skipped; the seven projections are the decoder layer's."""
    from loadtests import gpu_probe
    from rerank_build.config import preset

    out = tmp_path / "probe.md"
    assert gpu_probe.main(["--preset", "tiny", "--device", "cpu", "--quick", "--out", str(out)]) == 0
    text = out.read_text()
    rows = [line for line in text.splitlines() if re.match(r"\| \d+ x \d+ \| (float|bool|none)", line)]
    assert len(rows) == 6 and all(float(line.split("|")[3]) > 0 for line in rows), rows
    assert "Projections: skipped" in text and "Memory: skipped" in text
    full = preset("full")
    layers = gpu_probe.projections(full)
    assert list(layers) == ["q", "k", "v", "o", "gate", "up", "down"]
    assert layers["k"] == (2048, 512) and layers["down"] == (8192, 2048)
    norms = 2 * full.hidden_size * full.num_hidden_layers + 2 * full.hidden_size  # two per layer, final, head
    assert sum(i * o for i, o in layers.values()) * full.num_hidden_layers == (
        full.num_parameters() - full.vocab_size * full.hidden_size - norms)
