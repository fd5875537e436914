"""Command line for the offline mirror.

    python -m offline_mirror build ROOT [--images N] [--sources a,b] [--seed S]
    python -m offline_mirror build ROOT --scale full|0.1|0.01|F [--instances F] [--seed S]   (the rehearsal mirror)
    python -m offline_mirror serve ROOT [--host H] [--port P] [--catalog-out PATH] [--pidfile PATH] [--ready-file PATH]

``serve`` builds the mirror first when ROOT has no replicas.json, starts the server, writes the catalog for the
server's real base URL (``--port 0`` picks a free port), then writes the ready file (the base URL) and blocks until
SIGTERM or SIGINT. A Makefile waits for the ready file, reads the URL from it, and points MGDATA_CATALOG at the
catalog.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from pathlib import Path

from offline_mirror import rehearsal
from offline_mirror.build import (
    REPLICAS_JSON,
    REPLICATED_SOURCES,
    ReplicaFile,
    build_mirror,
    load_replicas,
    stand_in_routes,
    write_catalog,
)
from offline_mirror.media import write_text_atomic


def _sources(value: str) -> list[str]:
    names = [n.strip() for n in value.split(",") if n.strip()]
    unknown = [n for n in names if n not in REPLICATED_SOURCES]
    if not names or unknown:
        raise argparse.ArgumentTypeError(f"choose from {','.join(REPLICATED_SOURCES)} (got {value!r})")
    return names


def _scale(value: str) -> float:
    try:
        return rehearsal.parse_scale(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _table(replicas: list[ReplicaFile]) -> str:
    rows = [("source", "file", "bytes", "images", "broken", "normalized", "sha256", "path")]
    for r in replicas:
        rows.append(
            (
                r.source,
                r.name,
                f"{r.size:,}",
                str(r.images),
                str(r.broken),
                str(r.normalized),
                r.sha256[:12],
                r.relpath,
            )
        )
    total = sum(r.size for r in replicas)
    rows.append(("total", "", f"{total:,}", str(sum(r.images for r in replicas)), "", "", "", ""))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    numeric = {2, 3, 4, 5}
    lines = []
    for row in rows:
        cells = [
            c.rjust(w) if i in numeric else c.ljust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def _build(args: argparse.Namespace) -> list[ReplicaFile]:
    began = time.perf_counter()
    if args.scale is not None:
        replicas = rehearsal.build_rehearsal(args.root, args.scale, seed=args.seed, instances=args.instances)
    else:
        replicas = build_mirror(
            args.root, images_per_source=args.images, sources=args.sources, seed=args.seed
        )
    print(_table(replicas))
    print(
        f"built {len(replicas)} replica(s) under {args.root} in {time.perf_counter() - began:.1f} s",
        flush=True,
    )
    if args.scale is not None:
        record = rehearsal.load_record(args.root)
        print(
            f"rehearsal at scale {args.scale}: {record['files']:,} files, {record['bytes']:,} bytes, "
            f"{record['files_per_second']:,} files/s, shard_bytes {record['shard_bytes']:,}",
            flush=True,
        )
    return replicas


def _serve(args: argparse.Namespace) -> int:
    from offline_mirror.server import MirrorServer

    root: Path = args.root
    if (root / REPLICAS_JSON).is_file():
        replicas = load_replicas(root)
    else:
        print(f"{root / REPLICAS_JSON} not found: building the mirror first", flush=True)
        replicas = _build(args)

    stop = threading.Event()

    def _on_signal(signum: int, _frame: object) -> None:
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, _on_signal)

    server = MirrorServer(root, host=args.host, port=args.port, routes=stand_in_routes(root))
    server.start()
    written: list[Path] = []
    try:
        base_url = server.base_url
        write = rehearsal.write_catalog if rehearsal.is_rehearsal(root) else write_catalog
        catalog = write(root, base_url, replicas, out=args.catalog_out)
        if args.pidfile:
            write_text_atomic(args.pidfile, f"{os.getpid()}\n")
            written.append(args.pidfile)
        if args.ready_file:  # last: whoever waits on it may use the catalog and the server right away
            write_text_atomic(args.ready_file, base_url + "\n")
            written.append(args.ready_file)
        print(f"serving {root} at {base_url}", flush=True)
        print(f"catalog: {catalog}", flush=True)
        while not stop.wait(0.5):
            pass
        print("stopping", flush=True)
    finally:
        server.stop()
        for path in written:
            path.unlink(missing_ok=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m offline_mirror", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    def build_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("root", type=Path, help="the mirror root (replicas land at <root>/<host>/<path>)")
        p.add_argument("--images", type=int, default=200, help="valid images per source (default 200)")
        p.add_argument(
            "--sources", type=_sources, default=None, help="comma-separated (default: all replicable)"
        )
        p.add_argument("--seed", type=int, default=0, help="the same seed gives byte-identical archives")
        p.add_argument(
            "--scale",
            type=_scale,
            default=None,
            help="the rehearsal mirror: every source at its real file count x SCALE (full, 0.1, 0.01, ...)",
        )
        p.add_argument(
            "--instances",
            type=float,
            default=1.0,
            help="rehearsal: fraction of the real run's extract instances (bigger shards below 1; default 1)",
        )

    build = commands.add_parser("build", help="generate the replicas and replicas.json")
    build_options(build)

    serve = commands.add_parser("serve", help="serve ROOT on loopback and write a catalog pointing at it")
    build_options(serve)  # used only when ROOT has no replicas.json yet
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=0, help="0 picks a free port (default)")
    serve.add_argument("--catalog-out", type=Path, default=None, help="default: ROOT/catalog.yaml")
    serve.add_argument("--pidfile", type=Path, default=None)
    serve.add_argument(
        "--ready-file", type=Path, default=None, help="gets the base URL once the server listens"
    )

    args = parser.parse_args(argv)
    if args.images < 2:
        parser.error("--images must be at least 2")
    if args.scale is not None and args.sources is not None:
        parser.error("--scale builds every source; leave out --sources")
    if not 0 < args.instances <= 1:
        parser.error("--instances must be a fraction in (0, 1]")
    if args.command == "build":
        _build(args)
        return 0
    return _serve(args)


if __name__ == "__main__":
    sys.exit(main())
