"""``rerank-client``: rerank passages from the command line; prints NIM-shaped JSON.

    rerank-client --url localhost:8001 --query "which way?" --passage "left road" --passage "right road"
    rerank-client --query q --passages-file passages.jsonl       # JSONL with a "text" field
    cat passages.txt | rerank-client --query q                     # one passage per line
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Iterable

from .errors import RerankError
from .formats import to_cohere, to_nim
from .sync import RerankClient


def read_passages(lines: Iterable[str]) -> list[str]:
    """JSONL objects with a ``text`` field, or plain lines (one passage each); blank lines skipped."""
    passages = []
    for number, line in enumerate(lines, 1):
        line = line.rstrip("\n")
        if not line.strip():
            continue
        if line.lstrip().startswith("{"):
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise SystemExit(f"line {number}: invalid JSON ({exc})") from None
            if not isinstance(record.get("text"), str):
                raise SystemExit(f"line {number}: JSON object without a string 'text' field")
            passages.append(record["text"])
        else:
            passages.append(line)
    return passages


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rerank-client", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="HOST:PORT (grpcs:// or https:// for TLS); default localhost:8001 for grpc, "
                                      "localhost:8003 (Triton's KServe HTTP) for http")
    parser.add_argument("--protocol", choices=["grpc", "http"], default="grpc")
    parser.add_argument("--model", help="ensemble name (default NIM's)")
    parser.add_argument("--query", required=True)
    parser.add_argument("--passage", action="append", default=[], help="a passage (repeatable)")
    parser.add_argument("--passages-file", help="JSONL with a 'text' field, or one passage per line ('-': stdin)")
    parser.add_argument("--top-n", type=int)
    parser.add_argument("--truncate", choices=["NONE", "END", "CHUNK"], default="NONE",
                        help="CHUNK: score every window of a long passage, keep the best (our extension)")
    parser.add_argument("--chunk-overlap", type=int, help="with CHUNK: tokens shared by consecutive windows")
    parser.add_argument("--errors", choices=["raise", "per_passage"], default="raise",
                        help="per_passage: a passage too long for truncate NONE is reported in its ranking, "
                             "the others are scored (our extension)")
    parser.add_argument("--format", choices=["nim", "cohere"], default="nim")
    parser.add_argument("--return-text", action="store_true", help="include each passage's text")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds for the whole call")
    parser.add_argument("--header", action="append", default=[], metavar="NAME=VALUE", help="extra header")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    passages = list(args.passage)
    if args.passages_file:
        if args.passages_file == "-":
            passages += read_passages(sys.stdin)
        else:
            with open(args.passages_file, encoding="utf-8") as fh:
                passages += read_passages(fh)
    elif not passages and not sys.stdin.isatty():
        passages = read_passages(sys.stdin)
    if not passages:
        print("rerank-client: no passages (use --passage, --passages-file or stdin)", file=sys.stderr)
        return 2
    headers = dict(h.split("=", 1) for h in args.header) if args.header else None
    try:
        with RerankClient(args.url, args.protocol, model=args.model, timeout_s=args.timeout, headers=headers) as client:
            results = client.rerank(args.query, passages, top_n=args.top_n, truncate=args.truncate,
                                    return_text=args.return_text, chunk_overlap=args.chunk_overlap,
                                    errors=args.errors)
    except RerankError as exc:
        print(f"rerank-client: {type(exc).__name__}: {exc.message}", file=sys.stderr)
        return 1
    chunked = args.truncate == "CHUNK"
    print(json.dumps(to_nim(results, chunks=chunked) if args.format == "nim" else to_cohere(results),
                     ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
