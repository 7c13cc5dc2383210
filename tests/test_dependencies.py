"""What the packages declare: ranges in their metadata, exact pins only in requirements.lock, and every
import declared by the package whose code imports it (not merely pulled in by something else)."""

from __future__ import annotations

import pytest

from imports import ROOT, distributions, imported_modules, lock, normalize, project, requirements

#: (pyproject folder, the code it ships)
PACKAGES = [("contract", ["contract/rerank_contract"]), ("client", ["client/rerank_client"]),
            ("gateway", ["gateway/rerank_gateway"]), ("serving", ["serving/rerank_serving"]),
            (".", ["build_scripts", "loadtests"])]
OURS = {"rerank-contract", "rerank-client", "rerank-gateway", "rerank-serving"}
#: Imported but not installable here, each for a stated reason.
NOT_INSTALLABLE = {"tensorrt": "the GPU build image's (NVIDIA's container); imported lazily, typed against stubs"}


@pytest.mark.parametrize("folder", [folder for folder, _ in PACKAGES])
def test_metadata_takes_ranges(folder):
    """A library installs beside its users' packages: no exact pins, a lower and an upper bound each."""
    for req in requirements(folder):
        operators = {spec.operator for spec in req.specifier}
        assert not operators & {"==", "==="}, f"{folder}: {req} is an exact pin (those live in requirements.lock)"
        assert ">=" in operators and "<" in operators, f"{folder}: {req} needs a lower and an upper bound"


@pytest.mark.parametrize("folder", [folder for folder, _ in PACKAGES])
def test_the_lock_pins_every_declared_dependency_within_its_range(folder):
    pins = lock()
    for req in requirements(folder):
        name = normalize(req.name)
        if name in OURS:
            continue
        assert name in pins, f"{folder}: {req} is not in requirements.lock"
        assert req.specifier.contains(pins[name], prereleases=True), f"{folder}: {req} excludes the lock's {pins[name]}"


@pytest.mark.parametrize("folder,code", PACKAGES, ids=[folder for folder, _ in PACKAGES])
def test_every_import_is_declared_where_it_is_imported(folder, code):
    declared = {normalize(req.name) for req in requirements(folder, groups=False)}
    for module, files in imported_modules([ROOT / c for c in code]).items():
        if module in NOT_INSTALLABLE:
            continue
        assert distributions(module) & declared, (f"{folder}: {sorted(files)} import {module} "
                                                  f"({distributions(module)}), which its pyproject does not declare")


def test_tests_import_only_what_the_dev_setup_declares():
    """Tests may use the root's dependencies, its dependency groups and the light packages' own."""
    declared = {normalize(req.name) for folder, _ in PACKAGES for req in requirements(folder)}
    for module, files in imported_modules([ROOT / "tests"]).items():
        assert distributions(module) & declared, f"{sorted(files)} import {module}, declared nowhere"


def test_the_gateway_takes_the_clients_grpc_extra_only():
    """A gRPC-only service (the gateway) does not pull gevent and aiohttp (the HTTP extra's)."""
    client = project("client")
    assert {normalize(r.split("[")[0].split(">")[0]) for r in client["dependencies"]} >= {"tritonclient"}
    assert all("[" not in r for r in client["dependencies"]), "the base install names no protocol"
    assert any(r.startswith("tritonclient[grpc]") for r in client["optional-dependencies"]["grpc"])
    assert any(r.startswith("tritonclient[http]") for r in client["optional-dependencies"]["http"])
    gateway_client = [r for r in project("gateway")["dependencies"] if r.startswith("rerank-client")]
    assert gateway_client == ["rerank-client[grpc]>=0.1,<0.2"], gateway_client
