"""CLI: run the Salesforce stand-in in the foreground (``python -m conversion_sync_dev.salesforce_standin``)."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from types import FrameType

from .org import DEFAULT_PASSWORD, DEFAULT_SECURITY_TOKEN, DEFAULT_USERNAME, Org, seed_demo
from .server import INFO_FILE, StandinServer


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m conversion_sync_dev.salesforce_standin",
        description="Serve a local Salesforce stand-in over HTTPS on 127.0.0.1 until interrupted.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="loopback address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8443, help="port (0 picks a free one; default 8443)")
    parser.add_argument(
        "--state-dir",
        default=".data/salesforce",
        help="where ca.pem, standin.json and state.json live (default .data/salesforce)",
    )
    parser.add_argument("--seed-demo", action="store_true", help="add demo records when the org is empty")
    parser.add_argument("--fresh", action="store_true", help="ignore a saved state.json and start empty")
    parser.add_argument("--username", default=DEFAULT_USERNAME)
    parser.add_argument("--password", default=DEFAULT_PASSWORD)
    parser.add_argument("--security-token", default=DEFAULT_SECURITY_TOKEN)
    parser.add_argument(
        "--autosave-seconds", type=float, default=5.0, help="save state this often when changed"
    )
    parser.add_argument(
        "--log-level", default="warning", choices=["critical", "error", "warning", "info", "debug"]
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    org = Org(username=args.username, password=args.password, security_token=args.security_token)
    server = StandinServer(
        org,
        host=args.host,
        port=args.port,
        state_dir=args.state_dir,
        autosave_seconds=args.autosave_seconds,
        log_level=args.log_level,
    )
    if args.fresh and server.state_path is not None and server.state_path.exists():
        server.state_path.unlink()
    try:
        server.start()
    except OSError as exc:
        print(f"cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    if args.seed_demo and org.count("SELECT COUNT() FROM Account") == 0:
        summary = seed_demo(org)
        server.save()
        print(
            f"seeded demo data: {summary['accounts']} accounts, {summary['contacts']} contacts, "
            f"{summary['leads']} leads, {summary['campaigns']} campaigns"
        )
    assert server.state_dir is not None
    print(f"Salesforce stand-in listening on {server.url}")
    print(f"  CA bundle:  {server.ca_path}")
    print(f"  login:      {server.username} / password + security token (see {server.state_dir / INFO_FILE})")
    sys.stdout.flush()

    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    while not stop.wait(1.0):
        pass
    server.stop()
    print("Salesforce stand-in stopped; state saved to", server.state_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
