"""``voicecallctl``: drive voicecalld from a shell (voicecallctl(1)).

Start-up time matters (scripts and agents run it per action), so this
imports only the standard library and the control client: no werkzeug,
requests or websocket code, and not even the daemon's config module.

Output is JSON with a 2-space indent on stdout (``tail`` prints one record
per line, like the log); errors are one line on stderr. On a terminal,
``tail``, ``list``, ``status``, ``stats``, ``call --follow`` and ``watch``
print lines for people instead (``ctl_format``; ``--json`` keeps JSON).
Exit status: 0 success, 1 the daemon answered with an error, 2 usage
error, 69 the daemon cannot be reached.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from typing import Any

from . import __version__, ctl_format, ctl_watch, jsonsafe, paths, tool
from .control.client import Client, RpcError, Unreachable
from .errors import CALL_NOT_FOUND

EX_OK, EX_ERROR, EX_USAGE, EX_UNAVAILABLE = 0, 1, 2, 69
DEFAULT_CONFIG = "/etc/voicecalld/voicecalld.toml"
#: ``continue`` waits for the callee; the daemon's own transcriptTimeoutMs ends
#: the wait, so the client only guards against a daemon that never answers.
CONTINUE_TIMEOUT = 3600.0


class Usage(Exception):
    pass


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # exit 2 with one line, as promised
        raise Usage(f"{self.prog}: {message}")


def _configured(path: str | None) -> dict[str, Any]:
    """The few settings the CLI needs from the daemon's config file."""
    explicit = path is not None
    path = path or DEFAULT_CONFIG
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except OSError as exc:
        if explicit:
            raise Usage(f"voicecallctl: cannot read {path}: {exc.strerror}") from None
        return {}
    try:
        if path.endswith(".json"):
            data = jsonsafe.loads(raw)
        else:
            import tomllib

            data = tomllib.loads(raw.decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise Usage(f"voicecallctl: {path}: {exc}") from None
    return data if isinstance(data, dict) else {}


def _parser() -> Parser:
    p = Parser(prog="voicecallctl", description="Control voicecalld over its Unix socket.")
    p.add_argument("--socket", metavar="PATH", help="control socket (default: as the daemon resolves it)")
    p.add_argument("--config", metavar="PATH", help="read control.socket from this configuration file")
    p.add_argument("--timeout", type=float, metavar="S", help="seconds to wait for the daemon (default 30)")
    p.add_argument("--json", action="store_true", help="print JSON even on a terminal")
    p.add_argument("--version", action="version", version=f"voicecallctl {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True

    c = sub.add_parser("call", help="place a call")
    c.add_argument("--to", metavar="E164", help="number to dial (default: toNumber)")
    c.add_argument("--message", required=True, metavar="TEXT")
    c.add_argument("--mode", choices=("notify", "conversation"), help="default: outbound.defaultMode")
    c.add_argument("--follow", action="store_true", help="print the call live until it ends; exit 0 if it ended "
                   "completed, hangup-user, hangup-bot or transferred, else 1")
    c.add_argument("--dtmf", metavar="DIGITS", help="press these keys once answered, before the message")
    c.add_argument("--record", action=argparse.BooleanOptionalAction, help="default: recording.enabled")
    for name, helptext in (("continue", "speak, then wait for and print the callee's reply"),
                           ("speak", "speak without waiting")):
        c = sub.add_parser(name, help=helptext)
        c.add_argument("--call-id", required=True, metavar="ID")
        c.add_argument("--message", required=True, metavar="TEXT")
    for name, helptext in (("end", "hang up a call"), ("status", "print a call record")):
        sub.add_parser(name, help=helptext).add_argument("--call-id", required=True, metavar="ID")
    sub.add_parser("list", help="list active calls")
    c = sub.add_parser("dtmf", help="press keys on a call (0-9 * # A-D; w waits 0.5 s)")
    c.add_argument("--call-id", required=True, metavar="ID")
    c.add_argument("--digits", required=True, metavar="D")
    c = sub.add_parser("transfer", help="hand a call to a number in transfer.allowTo; waits for the outcome")
    c.add_argument("--call-id", required=True, metavar="ID")
    c.add_argument("--to", required=True, metavar="E164")
    c.add_argument("--message", metavar="TEXT", help="said before the transfer")
    t = sub.add_parser("tail", help="print the latest call records; -f follows live events")
    t.add_argument("-n", type=int, default=10, metavar="N", help="records to print (default 10)")
    t.add_argument("-f", "--follow", action="store_true", help="then print events as they happen")
    sub.add_parser("watch", help="print a call live until it ends (exit status as call --follow)").add_argument(
        "--call-id", required=True, metavar="ID")
    st = sub.add_parser("stats", help="call counts, answer rate, duration and turn latency from the call log")
    st.add_argument("--since", metavar="DURATION", help="only calls started within this time: 1h, 24h, 7d ...")
    st.add_argument("--store", metavar="PATH", help="the store directory or call log to read (default: the "
                    "configuration's store, else the running daemon's)")
    sub.add_parser("doctor", help="check the configuration, credentials, public URL and tunnel; never calls")
    e = sub.add_parser("expose", help="publish the webhook through Tailscale (serve or funnel) or stop")
    e.add_argument("--mode", required=True, choices=("funnel", "serve", "off"))
    sub.add_parser("tool", help="run one voice_call tool call read as JSON from stdin; prints the result "
                                "(exit 1 if it is an {\"error\": ...} result)")
    ts = sub.add_parser("tool-schema", help="print the voice_call tool definition")
    ts.add_argument("--format", choices=("openai", "anthropic", "mcp"), default="openai")
    sub.add_parser("mcp", help="run a Model Context Protocol server on stdin/stdout")
    for name in ("call", "status", "list", "tail", "watch", "stats", "doctor"):
        sub.choices[name].add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                                       help="print JSON even on a terminal")
    m = sub.add_parser("mock", help="act as the callee (mock carrier only)")
    msub = m.add_subparsers(dest="mock_command", metavar="ACTION", parser_class=Parser)
    msub.required = True
    ms = msub.add_parser("say", help="the callee says TEXT")
    ms.add_argument("--call-id", required=True, metavar="ID")
    ms.add_argument("--text", required=True)
    msub.add_parser("hangup", help="the callee hangs up").add_argument("--call-id", required=True, metavar="ID")
    mi = msub.add_parser("inbound", help="a simulated call arrives")
    mi.add_argument("--from", dest="from_", required=True, metavar="E164")
    mi.add_argument("--to", metavar="E164")
    return p


def _print(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=2, ensure_ascii=False) + "\n")
    sys.stdout.flush()


def _read_tool_call() -> dict[str, Any]:
    text = sys.stdin.read()
    try:
        data = jsonsafe.loads(text)
    except ValueError as exc:
        raise Usage(f"voicecallctl tool: stdin is not JSON: {exc}") from None
    try:
        return tool.arguments_of(data)
    except ValueError as exc:
        raise Usage(f"voicecallctl tool: {exc}") from None


def _tool(args: argparse.Namespace, path: str) -> int:
    """``voicecallctl tool``: stdout always carries a result object, the
    ``{"error": ...}`` kind included, because agents read stdout; the exit
    status says whether it is an error (1), or the daemon is unreachable (69)."""
    arguments = _read_tool_call()  # before connecting: bad input is a usage error either way
    timeout = args.timeout if args.timeout is not None else CONTINUE_TIMEOUT
    try:
        with Client(path, timeout=timeout) as client:
            result = client.call("tool.call", {"name": tool.NAME, "arguments": arguments})
    except Unreachable as exc:
        _print({"error": str(exc)})
        raise
    except RpcError as exc:
        _print({"error": exc.message})
        raise
    _print(result)
    return EX_ERROR if isinstance(result, dict) and "error" in result else EX_OK


def _human(args: argparse.Namespace) -> bool:
    """Lines for people: stdout is a terminal and --json was not given."""
    return not args.json and sys.stdout.isatty()


def _show(args: argparse.Namespace, value: Any, for_people: Callable[[Any], str]) -> None:
    if _human(args):
        sys.stdout.write(for_people(value) + "\n")
        sys.stdout.flush()
    else:
        _print(value)


def _run(args: argparse.Namespace, client: Client, path: str) -> int:
    cmd = args.command
    if cmd == "call":
        params = {"message": args.message, "to": args.to, "mode": args.mode, "dtmf": args.dtmf, "record": args.record}
        params = {k: v for k, v in params.items() if v is not None}
        if args.follow:
            with Client(path, timeout=client.timeout) as events:
                return ctl_watch.call_follow(client, events, params, _human(args))
        _print(client.call("voicecall.initiate", params))
    elif cmd == "continue":
        timeout = args.timeout if args.timeout is not None else CONTINUE_TIMEOUT
        _print(client.call("voicecall.continue", {"callId": args.call_id, "message": args.message}, timeout))
    elif cmd == "speak":
        _print(client.call("voicecall.speak", {"callId": args.call_id, "message": args.message}))
    elif cmd == "end":
        _print(client.call("voicecall.end", {"callId": args.call_id}))
    elif cmd == "status":
        try:
            record = client.call("voicecall.status", {"callId": args.call_id})
            _show(args, record, ctl_format.status_block)
        except RpcError as exc:
            if exc.code != CALL_NOT_FOUND:
                raise
            _print({"found": False})
            return EX_ERROR
    elif cmd == "list":
        _show(args, client.call("voicecall.list"), lambda found: ctl_format.list_table(found["calls"]))
    elif cmd == "dtmf":
        _print(client.call("voicecall.dtmf", {"callId": args.call_id, "digits": args.digits}))
    elif cmd == "transfer":
        params = {"callId": args.call_id, "to": args.to, "message": args.message}
        timeout = args.timeout if args.timeout is not None else CONTINUE_TIMEOUT
        _print(client.call("voicecall.transfer", {k: v for k, v in params.items() if v is not None}, timeout))
    elif cmd == "tail":
        return _tail(args, client, path)
    elif cmd == "watch":
        with Client(path, timeout=client.timeout) as events:
            return ctl_watch.watch(client, events, args.call_id, _human(args))
    elif cmd == "expose":
        _print(client.call("daemon.expose", {"mode": args.mode}, timeout=args.timeout or 60))
    elif cmd == "mock":
        if args.mock_command == "say":
            _print(client.call("mock.say", {"callId": args.call_id, "text": args.text}))
        elif args.mock_command == "hangup":
            _print(client.call("mock.hangup", {"callId": args.call_id}))
        else:
            params = {"from": args.from_, **({"to": args.to} if args.to else {})}
            _print(client.call("mock.inbound", params))
    return EX_OK


def _tail(args: argparse.Namespace, client: Client, path: str) -> int:
    if args.n < 0:
        raise Usage("voicecallctl tail: -n must be 0 or more")
    if not args.follow:
        return ctl_watch.tail(client, None, args.n, _human(args))
    # Subscribed first, on a connection of its own, so nothing falls between history and events.
    with Client(path, timeout=client.timeout) as events:
        events.call("events.subscribe")
        return ctl_watch.tail(client, events, args.n, _human(args))


def _stats(args: argparse.Namespace, path: str) -> int:
    from . import ctl_stats

    configured = _configured(args.config).get("store") if not args.store else None
    try:
        figures = ctl_stats.figures(args.since, args.store, configured if isinstance(configured, str) else None,
                                    path, args.timeout or 10.0)
    except ValueError as exc:
        raise Usage(f"voicecallctl stats: --since: {exc}") from None
    except ctl_stats.StatsError as exc:
        print(f"voicecallctl stats: {exc}", file=sys.stderr)
        return EX_ERROR
    _show(args, figures, lambda f: ctl_format.stats_block(f, args.since))
    return EX_OK


def main(argv: list[str] | None = None) -> int:
    try:
        args = _parser().parse_args(argv)
        if args.timeout is not None and args.timeout <= 0:
            raise Usage("voicecallctl: --timeout must be positive")
        if args.command == "tool-schema":
            # The definition ships with this package (the daemon's tool.schema
            # returns the same), so printing it needs no running daemon.
            _print(tool.schema(args.format))
            return EX_OK
        explicit = args.socket or os.environ.get("VOICECALLD_SOCKET")
        configured = None if explicit else (_configured(args.config).get("control") or {}).get("socket")
        path = paths.client_socket_path(configured, explicit=args.socket)
        if args.command == "mcp":
            from .mcp import serve

            return serve(path, args.timeout)
        if args.command == "tool":
            return _tool(args, path)
        if args.command == "stats":
            return _stats(args, path)
        if args.command == "doctor":
            from .doctor import run_cli

            return run_cli(args.config, path, args.timeout, _human(args))
        with Client(path, timeout=args.timeout if args.timeout is not None else 30.0) as client:
            return _run(args, client, path)
    except Usage as exc:
        print(exc, file=sys.stderr)
        return EX_USAGE
    except Unreachable as exc:
        print(f"voicecallctl: {exc}", file=sys.stderr)
        return EX_UNAVAILABLE
    except RpcError as exc:
        print(f"voicecallctl: {exc.message} (error {exc.code})", file=sys.stderr)
        return EX_ERROR
    except BrokenPipeError:
        return EX_OK
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
