"""``rerank-serve``: tritonserver and the REST gateway in the foreground, on an assembled repository.

    rerank-serve --repository build/model_repository --host 0.0.0.0

``rerank-build serve`` is the same command (``make serve`` calls it): the build CLI adds these
arguments with :func:`add_arguments` and runs :func:`run`.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from rerank_contract.ports import DEFAULT, Ports


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--repository", default="build/model_repository", help="an assembled model repository")
    p.add_argument("--host", default="127.0.0.1", help="the address every part binds (0.0.0.0: all interfaces)")
    p.add_argument("--http-port", type=int, default=DEFAULT.rest, help="the REST API (gateway)")
    p.add_argument("--grpc-port", type=int, default=DEFAULT.grpc, help="Triton gRPC")
    p.add_argument("--metrics-port", type=int, default=DEFAULT.metrics, help="Triton metrics")
    p.add_argument("--triton-http-port", type=int, default=DEFAULT.triton_http, help="Triton's KServe v2 HTTP")
    p.add_argument("--gateway-workers", type=int, default=1, help="gateway worker processes")
    p.add_argument("--replicas", type=int, default=1,
                   help="tritonserver replicas; replica k listens on each Triton port + 10 k, and the gateway "
                        "spreads requests over all of them and retries a failed one on another")
    p.add_argument("--no-access-log", action="store_true", help="no per-request log lines from the gateway")
    p.add_argument("--no-gateway", action="store_true", help="Triton only (its KServe HTTP on --triton-http-port)")
    p.add_argument("--no-watchdog", action="store_true",
                   help="exit when a part dies instead of restarting it (and tritonserver when a python stub dies)")
    p.add_argument("--log-verbose", type=int, default=0, help="Triton's --log-verbose")


def run(args: argparse.Namespace) -> int:
    from .stack import serve

    ports = Ports(rest=args.http_port, grpc=args.grpc_port, metrics=args.metrics_port,
                  triton_http=args.triton_http_port)
    gateway_args = ["--workers", str(args.gateway_workers)] + (["--no-access-log"] if args.no_access_log else [])
    return serve(Path(args.repository), ports, args.host, gateway=not args.no_gateway, log_verbose=args.log_verbose,
                 gateway_args=gateway_args, watchdog=not args.no_watchdog, replicas=args.replicas)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rerank-serve", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    add_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return run(args)
    except (FileNotFoundError, RuntimeError, ValueError) as exc:  # ServerError: a clear line, no traceback
        logging.getLogger("rerank_serving").error("%s", exc)
        return 2


if __name__ == "__main__":
    sys.exit(main())
