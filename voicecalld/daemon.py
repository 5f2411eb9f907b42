"""``voicecalld``: the daemon process.

Threads: the webhook server (one loop thread that accepts connections and
reads requests, and a thread per request once it has arrived; see
``httpserver``), the control server (one per connection), the timer wheel
and its worker pool, the auto-responder's worker pool (LLM requests), and
the main thread, which only waits: for signals (recorded by the handlers
and acted on here), for watchdog deadlines, and for status changes to
report to systemd.
"""

from __future__ import annotations

import argparse
import collections
import logging
import os
import select
import signal
import sys
import threading
import time
from typing import TYPE_CHECKING, Any

from . import __version__, calllog, config, httpserver, logs, metrics, paths, providers, stats
from .config import Config, ConfigError
from .control.server import ControlServer, SocketError, bind_socket
from .errors import InvalidParams, VoiceCallError
from .events import EventBus
from .manager import CallManager
from .probe import Probes
from .recovery import Recovery
from .responder import Responder
from .store import Store
from .systemd import Notifier, listen_fds, under_journald, watchdog_interval
from .timers import TimerService
from .tunnel import TunnelError, Tunnels
from .webhook import WebhookApp
from .workerpool import WorkerPool

if TYPE_CHECKING:  # pragma: no cover
    from .media.stream import StreamHub
    from .metrics_http import MetricsServer

log = logging.getLogger("voicecalld")

EX_OK, EX_FAILURE, EX_USAGE, EX_CONFIG = 0, 1, 2, 78

#: Settings that shape listening sockets or the carrier connection; a reload
#: keeps their old values (and says so) because changing them needs a restart.
RESTART_KEYS = (
    "provider", "store", "publicUrl", "serve.port", "serve.bind", "serve.path", "serve.maxConnections",
    "serve.readTimeoutSec", "control.socket", "control.mode",
    "control.maxConnections", "control.lineTimeoutSec", "streaming.enabled", "streaming.streamPath",
    "tunnel.provider", "tunnel.ngrokAuthToken", "tunnel.ngrokDomain", "tunnel.allowNgrokFreeTier",
    "tailscale.mode", "tailscale.path", "metrics.listen", "metrics.allowRemote",
)

SWITCH_INTERVAL = 0.001
HEALTH_STALE = 5.0  # seconds without a heartbeat before a thread counts as stuck


class StartupError(Exception):
    pass


class Daemon:
    def __init__(self, cfg: Config, formatter: logs.LineFormatter | None = None) -> None:
        self.config = cfg
        self.formatter = formatter
        self.started = time.monotonic()
        self.notifier = Notifier()
        self.stopping = False
        self._signals: collections.deque[int] = collections.deque()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.public_url: str | None = cfg.publicUrl
        self.socket_path = paths.socket_path(cfg.control.socket)
        self.webhook_server: httpserver.WebhookServer | None = None
        self.webhook_port: int | None = None
        self._webhook_thread: threading.Thread | None = None
        self.control: ControlServer | None = None
        self.streams: StreamHub | None = None  # when streaming is on and the carrier streams audio
        self.tunnels: Tunnels | None = None
        self.metrics_server: MetricsServer | None = None
        self.probes = Probes()

    # -- start-up --

    def start(self) -> None:
        cfg = self.config
        # Media threads forward a 20 ms frame at a time: a thread waiting for
        # the interpreter lock should get it within about a millisecond, not
        # the default 5 ms per competing thread.
        sys.setswitchinterval(SWITCH_INTERVAL)
        soft, _ = httpserver.raise_fd_limit()
        log.debug("open file limit: %d", soft)
        store_dir = paths.store_dir(cfg.store)
        try:
            self.store = Store(store_dir, compact_bytes=cfg.storeCompactBytes, keep_calls=cfg.storeKeepCalls)
        except OSError as exc:
            raise StartupError(f"cannot open the call log in {store_dir}: {exc.strerror}") from None
        self.pool = WorkerPool(16, name="timer-worker")
        self.timers = TimerService(self.pool)
        self.timers.start()
        self.bus = EventBus()
        calllog.attach(self.bus)
        try:
            self.provider = providers.create(cfg, self.timers)
        except ValueError as exc:
            raise StartupError(str(exc)) from None
        self.provider.public_url = self.public_url
        self.manager = CallManager(cfg, self.provider, self.store, self.timers, self.bus)
        # Answers caller speech no continue waits for; reads manager.config per turn.
        self.responder = Responder(self.manager, self.bus)
        loaded = self.store.load()
        restored = self.manager.restore(loaded.records)
        log.info("call log %s: %d calls, %d restored as active, %d unreadable lines", self.store.path,
                 len(loaded.records), len(restored), loaded.corrupt)
        if cfg.skipSignatureVerification:
            log.warning("skipSignatureVerification is on: webhook signatures are NOT checked, so anyone who "
                        "can reach %s can forge call events; use this only for local experiments",
                        cfg.serve.path)
        # The control socket first: a second daemon with the same configuration
        # then fails with "already listening on <socket>", not a port clash.
        self._start_control_server()
        self._start_webhook_server()
        self._start_metrics()
        self._start_tunnel()
        self.provider.start()
        self._install_signal_handlers()
        self.notifier.notify("READY=1", self._status_line())
        Recovery(self.manager).start(restored)
        log.info("voicecalld %s ready: provider %s, webhook http://%s:%d%s, control socket %s", __version__,
                 self.provider.name, cfg.serve.bind, self.webhook_port, cfg.serve.path, self.socket_path)

    def _start_webhook_server(self) -> None:
        cfg = self.config
        stream_handler = None
        carrier = self.provider.media() if cfg.streaming.enabled else None
        if carrier is not None:
            from .media.stream import StreamHub

            self.streams = StreamHub(self.manager, carrier)
            self.manager.answered_elsewhere = self.streams.answers_itself
            stream_handler = self.streams.handle
            # A reply on a call that speaks over its stream goes sentence by sentence.
            self.responder.streamed = self.streams.speaks_over_stream
        app = WebhookApp(self.provider, cfg.serve.path, self.healthy, cfg.streaming.streamPath, stream_handler,
                         self.probes)
        try:
            self.webhook_server = httpserver.create(cfg, app)
        except OSError as exc:
            raise StartupError(f"cannot listen on {cfg.serve.bind}:{cfg.serve.port} for webhooks: "
                               f"{exc.strerror or exc}") from None
        self.webhook_port = self.webhook_server.port
        self._webhook_thread = threading.Thread(target=self.webhook_server.serve_forever, kwargs={"poll_interval": 0.5},
                                                name="webhook-server", daemon=True)
        self._webhook_thread.start()

    def _start_metrics(self) -> None:
        """The gauges read the engine when scraped; the listener only with ``metrics.listen``."""
        manager, streams = self.manager, self.streams
        metrics.gauge_source(metrics.CALLS_ACTIVE, lambda: float(manager.active_count))
        metrics.gauge_source(metrics.CALLS_QUEUED, lambda: float(manager.queued_count))
        if streams is not None:
            metrics.gauge_source(metrics.MEDIA_STREAMS, lambda: float(streams.open_streams))
        listen = self.config.metrics.listen
        metrics.enable(bool(listen))
        if not listen:
            return
        from .metrics_http import MetricsServer

        try:
            self.metrics_server = MetricsServer(listen, self.config.metrics.allowRemote)
        except (OSError, ValueError) as exc:
            if self.control is not None:
                self.control.close()
            if self.webhook_server is not None:
                self.webhook_server.shutdown()
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise StartupError(f"cannot serve metrics on {listen}: {why}") from None
        self.metrics_server.start()
        log.info("metrics at http://%s/metrics", self.metrics_server.address)

    def _start_tunnel(self) -> None:
        """Before READY=1 (bounded by tunnel.START_TIMEOUT), so a carrier is
        never given a URL that does not work yet."""
        assert self.webhook_port is not None
        self.tunnels = Tunnels(self.config, self.webhook_port, self._set_public_url)
        if self.tunnels.plan is None:
            self.tunnels.start()  # only logs why no tunnel runs
            return
        provider = self.tunnels.plan.provider
        self.notifier.notify(f"STATUS=starting the {provider} tunnel")
        try:
            self.tunnels.start()
        except TunnelError as exc:
            if self.control is not None:
                self.control.close()
            if self.webhook_server is not None:
                self.webhook_server.shutdown()
            if self.metrics_server is not None:
                self.metrics_server.close()
            raise StartupError(f"tunnel.provider {provider}: {exc}") from None

    def _set_public_url(self, url: str | None) -> None:
        # publicUrl wins over any tunnel; a tunnel's URL (or its absence) applies otherwise.
        self.public_url = self.config.publicUrl or url
        self.provider.public_url = self.public_url

    def _start_control_server(self) -> None:
        import socket as socketmod

        fds = listen_fds()
        if fds:
            sock = socketmod.socket(fileno=fds[0])
            path = None  # systemd owns the socket file
            log.info("control socket passed in by systemd (socket activation)")
        else:
            try:
                sock = bind_socket(self.socket_path, self.config.control.mode)
            except SocketError as exc:
                raise StartupError(str(exc)) from None
            path = self.socket_path
        self.control = ControlServer(self, sock, self.bus, path=path,
                                     max_connections=self.config.control.maxConnections,
                                     line_timeout=float(self.config.control.lineTimeoutSec))
        self.control.start()

    def _install_signal_handlers(self) -> None:
        signal.set_wakeup_fd(self._wake_w)
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, self._record_signal)

    def _record_signal(self, signum: int, frame: object) -> None:
        # Only record: the main loop acts. (Taking locks here could deadlock
        # with the code the signal interrupted.)
        self._signals.append(signum)

    # -- what the control server and the web app ask --

    def daemon_status(self) -> dict[str, Any]:
        problems = self.health_problems()
        webhook: dict[str, Any] = {"bind": self.config.serve.bind, "port": self.webhook_port,
                                   "path": self.config.serve.path}
        if self.public_url:
            webhook["url"] = self.provider.webhook_url
        if self.webhook_server is not None:
            webhook["connections"] = self.webhook_server.stats()
        return {
            "version": __version__, "provider": self.provider.name, "carrier": self.provider.describe(),
            "publicUrl": self.public_url,
            "activeCalls": self.manager.active_count, "queuedCalls": self.manager.queued_count,
            "uptimeSeconds": round(time.monotonic() - self.started, 3),
            "health": {"ok": not problems, "problems": problems},
            "webhook": webhook, "controlSocket": self.socket_path, "pid": os.getpid(), "stopping": self.stopping,
            **({"media": self.streams.stats()} if self.streams is not None else {}),
            "tunnel": self.tunnels.describe() if self.tunnels is not None else None,
            "store": self._store_status(),
            "metrics": {"listen": self.metrics_server.address if self.metrics_server is not None else None},
            "stats": stats.live(metrics.CALLS.values(), metrics.TURN_LATENCY),
        }

    def _store_status(self) -> dict[str, Any]:
        failure = self.store.failure
        return {"ok": failure is None, "error": failure, "path": self.store.path}

    def expose(self, mode: str) -> dict[str, Any]:
        """``daemon.expose``: publish the webhook with Tailscale serve or funnel, or stop."""
        if mode not in ("funnel", "serve", "off"):
            raise InvalidParams(f"daemon.expose: mode must be funnel, serve or off, got {mode!r}")
        if self.tunnels is None or self.stopping:
            raise VoiceCallError("the daemon is starting or stopping; try again")
        try:
            result = self.tunnels.expose(mode)
        except TunnelError as exc:
            raise VoiceCallError(str(exc)) from None
        return {"ok": True, "mode": result["mode"], "publicUrl": self.public_url}

    def probe(self, token: str | None) -> dict[str, Any]:
        """``daemon.probe``: a new reachability token, or whether ``token`` reached /healthz."""
        if token is None:
            return {"token": self.probes.issue(), "path": "/healthz", "query": "probe"}
        return {"token": token, "seen": self.probes.seen(token)}

    def healthy(self) -> bool:
        """What ``GET /healthz`` tells the internet; the detail is in daemon.status."""
        return not self.health_problems()

    def health_problems(self) -> list[str]:
        return (["the daemon is stopping"] if self.stopping else []) + self._health_problems()

    def _health_problems(self) -> list[str]:
        """Everything wrong: /healthz answers 503 while this is not empty."""
        problems = self._stuck_problems()
        failure = self.store.failure
        if failure is not None:
            problems.append(f"call log cannot be written: {failure}")
        return problems

    def _stuck_problems(self) -> list[str]:
        """Stuck threads, which a restart cures (so they withhold the watchdog
        ping). A log that cannot be written is not one of them: a restart
        would not free the disk, and it would drop what only memory holds."""
        now = time.monotonic()
        problems = []
        if now - self.timers.heartbeat > HEALTH_STALE:
            problems.append("timer wheel is not turning")
        if self.control is None or not self.control.alive:
            problems.append("control server is not accepting")
        if self._webhook_thread is None or not self._webhook_thread.is_alive():
            problems.append("webhook server stopped")
        if self.streams is not None and (media := self.streams.health):
            problems.append(media)
        return problems

    def _status_line(self) -> str:
        n = self.manager.active_count
        return f"STATUS={n} active call{'s' if n != 1 else ''} ({self.provider.name})"

    # -- the main loop --

    def run(self) -> int:
        interval = watchdog_interval()
        last_status = ""
        next_ping = time.monotonic()
        while True:
            timeout = 1.0 if interval is None else max(0.0, min(1.0, next_ping - time.monotonic()))
            try:
                select.select([self._wake_r], [], [], timeout)
            except InterruptedError:
                pass
            try:
                os.read(self._wake_r, 4096)
            except BlockingIOError:
                pass
            while self._signals:
                signum = self._signals.popleft()
                if signum == signal.SIGHUP:
                    self.reload()
                else:
                    log.info("received %s; shutting down", signal.Signals(signum).name)
                    return self.shutdown()
            if interval is not None and time.monotonic() >= next_ping:
                problems = self._stuck_problems()
                if problems:
                    # No ping: systemd's watchdog restarts a daemon that is stuck.
                    log.error("unhealthy, withholding the watchdog ping: %s", "; ".join(problems))
                else:
                    self.notifier.notify("WATCHDOG=1")
                next_ping = time.monotonic() + interval
            line = self._status_line()
            if line != last_status:
                self.notifier.notify(line)
                last_status = line

    def reload(self) -> None:
        path = self.config.path
        self.notifier.notify("RELOADING=1", f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")
        try:
            new = config.load(path)
        except ConfigError as exc:
            log.error("reload failed; keeping the old configuration: %s", "; ".join(exc.problems))
            self.notifier.notify("READY=1")
            return
        kept = [k for k in RESTART_KEYS if new[k] != self.config[k]]
        if kept:
            log.warning("reload: %s changed but needs a restart to take effect", ", ".join(kept))
        self.config = new.replace({key: self.config[key] for key in kept})
        self.manager.reconfigure(self.config)
        if self.formatter is not None:
            self.formatter.set_secrets(self.config.secrets)
        log.info("configuration reloaded from %s", path or "defaults")
        self.notifier.notify("READY=1", self._status_line())

    def shutdown(self) -> int:
        self.stopping = True
        self.notifier.notify("STOPPING=1", "STATUS=stopping: ending active calls")
        grace = float(self.config.shutdownGraceSeconds)
        if self.manager.active_count:
            log.info("waiting up to %g s for %d active call(s) to finish", grace, self.manager.active_count)
        self.manager.shutdown(grace)
        self.responder.stop()  # after the calls: it answers callers during the grace period
        if self.streams is not None:
            self.streams.close()
        if self.tunnels is not None:
            self.tunnels.stop()  # after the drain: ending calls still need their webhooks
        if self.control is not None:
            self.control.close()
        self.provider.stop()
        if self.webhook_server is not None:
            self.webhook_server.shutdown()
        if self.metrics_server is not None:
            self.metrics_server.close()
        # Drain the work pools before the log closes, so what they still do
        # is logged; anything later (a worker that outlived the pool's join
        # timeout) gets a clean "log closed" error instead of a write.
        self.timers.stop()
        self.pool.stop()
        self.store.close()
        self.notifier.close()
        log.info("stopped")
        return EX_OK


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="voicecalld", description="Self-hosted phone-call daemon (runs in the "
                                "foreground; see voicecalld(8)).")
    p.add_argument("--config", metavar="PATH",
                   help=f"configuration file, TOML or .json (default: {config.DEFAULT_CONFIG_PATH} if it exists)")
    p.add_argument("--check-config", action="store_true", help="validate the configuration and exit (78 if invalid)")
    p.add_argument("--online", action="store_true", help="with --check-config: also check the credentials, the "
                   "OpenAI key, the public URL and the tunnel, as voicecallctl doctor does (exit 1 if one fails)")
    p.add_argument("--print-config", action="store_true", help="print the effective configuration, secrets redacted")
    p.add_argument("--version", action="version", version=f"voicecalld {__version__}")
    p.add_argument("-v", "--verbose", action="count", default=0, help="debug logging (-vv: also every HTTP request)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        cfg = config.load(args.config)
    except ConfigError as exc:
        where = exc.path or "configuration"
        for problem in exc.problems:
            print(f"voicecalld: {where}: {problem}", file=sys.stderr)
        return EX_CONFIG
    if args.check_config:
        if args.online:
            from . import doctor

            checks = doctor.run(args.config, None)
            print(doctor.lines(checks))
            return EX_OK if all(c.ok for c in checks) else EX_FAILURE
        print(f"{cfg.path or 'defaults'}: configuration OK (provider {cfg.provider})")
        return EX_OK
    if args.print_config:
        sys.stdout.write(config.render_toml(cfg))
        return EX_OK
    formatter = logs.setup(args.verbose, under_journald(), cfg.secrets)
    daemon = Daemon(cfg, formatter)
    try:
        daemon.start()
    except StartupError as exc:
        log.error("cannot start: %s", exc)
        return EX_FAILURE
    return daemon.run()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
