"""``python -m bench``: the service on loopback against a bare FastAPI hello, one table.

See ``bench/README.md`` for what each row measures and how to read it.
"""

from __future__ import annotations

import argparse
import asyncio
import compileall
import hashlib
import importlib.util
import os
import platform
import shlex
import subprocess
import sys
import sysconfig
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlencode

import uvloop
from cryptography.fernet import Fernet

from bench import common, procs, report, rounds, wrk
from bench.browser import Result, RouteRequest, pkce_pair, run_browsers, run_route
from bench.common import SCALES, HotUser, Scale
from bench.seed import DEFAULT_POSTGRES_URL, Database, create_database, drop_database, seed

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
BIN = Path(sys.executable).parent
REDIS_URL = "redis://127.0.0.1:6379/0"
HUGE = "1000000000"
NOISY_PCT = 10  # background CPU (not the bench's) above which a row is flagged
T = TypeVar("T")

ROWS_OFF = ("initiate", "signin", "me", "providers", "refresh")
# With the limiter on only the limited routes change: /sso/* and /api/v1/auth/token.
ROWS_LIMITED = ("initiate", "signin", "refresh")


def run_async(work: Callable[[], Awaitable[T]]) -> T:
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(work())  # type: ignore[arg-type]


def _csv(choices: tuple[str, ...]) -> Callable[[str], list[str]]:
    def parse(value: str) -> list[str]:
        items = [item.strip() for item in value.split(",") if item.strip()]
        bad = [item for item in items if item not in choices]
        if bad or not items:
            raise argparse.ArgumentTypeError(f"choose from {','.join(choices)}")
        return items

    return parse


def _ints(value: str) -> list[int]:
    try:
        items = [int(item) for item in value.split(",") if item.strip()]
    except ValueError as e:
        raise argparse.ArgumentTypeError("a comma-separated list of numbers") from e
    if not items or any(item < 1 for item in items):
        raise argparse.ArgumentTypeError("a comma-separated list of positive numbers")
    return items


def _count(value: str) -> int:
    counts = _ints(value)
    if len(counts) != 1:
        raise argparse.ArgumentTypeError("one positive number")
    return counts[0]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--db", type=_csv(("sqlite", "postgres")), default=["sqlite", "postgres"])
    parser.add_argument("--workers", type=_ints, default=[1, 2], help="e.g. 1,2")
    parser.add_argument(
        "--limiter", type=_csv(("off", "db", "redis")), default=["off", "db", "redis"]
    )
    parser.add_argument("--scale", type=_csv(tuple(SCALES)), default=["small"])
    parser.add_argument(
        "--rows", type=_csv(ROWS_OFF), default=list(ROWS_OFF), help="e.g. signin (to iterate fast)"
    )
    parser.add_argument("--duration", type=float, default=5.0, help="measured seconds per row")
    parser.add_argument("--warmup", type=float, default=2.0, help="warm-up seconds per row")
    parser.add_argument("--concurrency", type=int, default=10, help="browsers / connections")
    parser.add_argument("--idp-workers", type=int, default=2, help="fake IdP processes")
    parser.add_argument(
        "--repeat",
        type=_count,
        default=1,
        metavar="N",
        help="N rounds, each measuring every configuration once; a row is their median",
    )
    parser.add_argument("--rng-seed", type=int, default=1, help="picks the hot providers/users")
    parser.add_argument(
        "--smoke", action="store_true", help="SQLite, 1 worker, small, limiter off, ~1 s a row"
    )
    parser.add_argument("--no-wrk", action="store_true", help="drive single routes from Python")
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="sample each row's service worker with py-spy into DIR (collapsed stacks)",
    )
    parser.add_argument("--profile-native", action="store_true", help="with --profile: C frames")
    parser.add_argument("--json", type=Path, default=RESULTS / "latest.json")
    parser.add_argument("--markdown", type=Path, help="default: the JSON path with .md")
    args = parser.parse_args(argv)
    if args.smoke:
        args.db, args.workers, args.limiter, args.scale = ["sqlite"], [1], ["off"], ["small"]
        args.duration, args.warmup = 1.0, 0.5
    args.markdown = args.markdown or args.json.with_suffix(".md")
    args.postgres_url = os.environ.get("SSO_BROKER_BENCH_POSTGRES_URL", DEFAULT_POSTGRES_URL)
    return args


@dataclass(frozen=True, slots=True)
class Config:
    db: str
    workers: int
    limiter: str

    @property
    def rows(self) -> tuple[str, ...]:
        return ROWS_OFF if self.limiter == "off" else ROWS_LIMITED


def configurations(args: argparse.Namespace, db: str) -> list[Config]:
    configs = [Config(db, w, "off") for w in args.workers if "off" in args.limiter]
    if 1 in args.workers and "db" in args.limiter:
        configs.append(Config(db, 1, "db"))
    if 1 in args.workers and "redis" in args.limiter and db == "postgres":
        configs.append(Config(db, 1, "redis"))
    return configs


@dataclass
class Run:
    """Everything one run shares: its servers, its key, its collected results."""

    args: argparse.Namespace
    logs: Path
    encryption_key: str = field(default_factory=lambda: Fernet.generate_key().decode())
    idp_port: int = 0
    # One port for every configuration: the public URL (the session JWTs' issuer) stays the
    # same, so the administrator's token is issued once per database.
    service_port: int = field(default_factory=common.free_port)
    idp: procs.Server | None = None
    rows: list[dict[str, Any]] = field(default_factory=list)
    configs: list[dict[str, Any]] = field(default_factory=list)
    seeds: list[dict[str, Any]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    hello_rate: float | None = None
    use_wrk: bool = True

    def watch(self, service: int) -> dict[str, int]:
        """The trees whose CPU a window reads: the measured server's, and the IdP's."""
        assert self.idp is not None  # noqa: S101
        return {"service": service, "idp": self.idp.pid}

    @property
    def idp_url(self) -> str:
        return f"http://127.0.0.1:{self.idp_port}"

    def env(self, database: Database, limiter: str) -> dict[str, str]:
        port = self.service_port
        env = {k: v for k, v in os.environ.items() if not k.startswith("SSO_BROKER_")}
        env.update(
            SSO_BROKER_DATABASE_URL=database.url,
            SSO_BROKER_PUBLIC_URL=f"http://127.0.0.1:{port}",
            SSO_BROKER_FRONTEND_URL=common.FRONTEND_URL,
            SSO_BROKER_ENCRYPTION_KEYS=self.encryption_key,
            SSO_BROKER_ENTRA_AUTHORITY=self.idp_url,
            SSO_BROKER_RATE_LIMIT_ENABLED="false" if limiter == "off" else "true",
            # As the image runs it (Dockerfile): code objects without column tables.
            PYTHONNODEBUGRANGES="1",
        )
        if limiter != "off":
            env.update(
                SSO_BROKER_RATE_LIMIT_SIGN_IN_PER_IP=HUGE,
                SSO_BROKER_RATE_LIMIT_SIGN_IN_PER_PROVIDER=HUGE,
                SSO_BROKER_RATE_LIMIT_TOKEN_PER_IP=HUGE,
            )
        if limiter == "redis":
            env["SSO_BROKER_REDIS_URL"] = REDIS_URL
        return env


# --- measuring one row -------------------------------------------------------------------


def measure_route(
    run: Run,
    base: str,
    requests: list[RouteRequest],
    *,
    expect_status: int,
    expect_location: str | None = None,
    expect_body: str | None = None,
    watch: dict[str, int],
) -> dict[str, Any]:
    """A single route under wrk (or the Python driver without wrk): warm-up, then measure."""
    args = run.args
    if run.use_wrk:
        lua = wrk.script(
            requests,
            expect_status=expect_status,
            expect_location=expect_location,
            expect_body=expect_body,
        )
        warm = wrk.run(base, lua, duration=args.warmup, connections=args.concurrency)
        meter = procs.Meter(watch)
        meter.start()
        measured = wrk.run(base, lua, duration=args.duration, connections=args.concurrency)
        cpu = meter.stop()
        kinds = dict(measured.error_kinds)
        for kind, count in warm.error_kinds.items():
            kinds[f"warm-up: {kind}"] = count
        return {
            "tool": "wrk",
            "requests": measured.requests,
            "window_s": measured.duration_s,
            "rate": measured.rate,
            "p50_ms": measured.p50_ms,
            "p99_ms": measured.p99_ms,
            "cpu_ms": _per_op(cpu["service"], measured.requests),
            "errors": sum(kinds.values()),
            "error_kinds": kinds,
            "generator_cpu_ms": _per_op(cpu["generator"], measured.requests),
            "other_cpu_pct": cpu["other_pct"],
        }
    result = run_async(
        lambda: run_route(
            base,
            requests,
            expect_status=expect_status,
            expect_location=expect_location,
            concurrency=args.concurrency,
            warmup=args.warmup,
            duration=args.duration,
            watch=watch,
        )
    )
    return {"tool": "python", **_result_fields(result, "service")}


def _per_op(ticks: float, operations: int) -> float | None:
    """CPU milliseconds per operation from clock ticks."""
    return ticks / procs.CLOCK_TICKS * 1000 / operations if operations else None


def _result_fields(result: Result, name: str) -> dict[str, Any]:
    latency = result.latency()
    return {
        "requests": result.completed,
        "window_s": round(result.window_s, 3),
        "rate": result.rate,
        "p50_ms": latency["p50"],
        "p99_ms": latency["p99"],
        "cpu_ms": result.cpu_ms_per_op(name),
        "errors": result.error_count,
        "error_kinds": dict(result.errors.most_common(5)),
        "generator_cpu_ms": result.cpu_ms_per_op("generator"),
        "other_cpu_pct": result.cpu_ticks.get("other_pct"),
    }


def measure_browsers(
    run: Run,
    kind: str,
    service: str,
    users: list[HotUser],
    watch: dict[str, int],
    *,
    concurrency: int | None = None,
) -> tuple[dict[str, Any], dict[str, str]]:
    args = run.args
    result, tokens = run_async(
        lambda: run_browsers(
            kind,
            service=service,
            idp=run.idp_url,
            users=users,
            concurrency=concurrency or args.concurrency,
            warmup=args.warmup,
            duration=args.duration,
            watch=watch,
        )
    )
    row = {"tool": "browser", **_result_fields(result, "service" if "service" in watch else "idp")}
    if kind == "signin":
        row["steps"] = {step: result.latency(step) for step in report.SIGN_IN_STEPS}
        row["idp_cpu_ms"] = result.cpu_ms_per_op("idp")
    return row, tokens


# --- servers -------------------------------------------------------------------------------


def start_idp(run: Run) -> None:
    run.idp_port = common.free_port()
    argv = [sys.executable, "-m", "bench.fake_idp", "--port", str(run.idp_port)]
    argv += ["--workers", str(run.args.idp_workers)]
    run.idp = procs.Server(
        "idp",
        argv,
        env=dict(os.environ),
        log=run.logs / "idp.log",
        cwd=REPO,
    )
    tenant = common.tenant_id(0)
    run.idp.start(f"{run.idp_url}/{tenant}/v2.0/.well-known/openid-configuration")


def measure_hello(run: Run, round_: int = 0) -> None:
    port = common.free_port()
    argv = [
        sys.executable, "-m", "uvicorn", "bench.hello:app", "--host", "127.0.0.1",
        "--port", str(port), "--workers", "1", "--loop", "uvloop", "--http", "httptools",
        "--no-access-log", "--no-server-header", "--log-level", "warning",
    ]  # fmt: skip
    server = procs.Server(
        "hello",
        argv,
        env=dict(os.environ),
        log=run.logs / "hello.log",
        cwd=REPO,
    )
    server.start(f"http://127.0.0.1:{port}/hello")
    try:
        row = measure_route(
            run,
            f"http://127.0.0.1:{port}",
            [RouteRequest("/hello")],
            expect_status=200,
            expect_body='"hello":"world"',
            watch=run.watch(server.pid),
        )
        rss = procs.peak_rss_kib(server.pid)
    finally:
        server.stop()
    row.update(row="hello", workers=1, pct_hello=100.0 if row["rate"] else None, round=round_)
    row["peak_rss_mib"] = rss / 1024 if rss else None
    run.rows.append(row)
    log_row(run, row)


# The IdP alone is driven by this many times the sign-in row's browsers: its row asks what
# the IdP can do at most, and ten browsers, each waiting for its last answer before asking
# again, left an eighth of the machine idle between them (1.75 of 2 CPUs busy; at thirty,
# 1.94), so the row measured the browsers' waits as much as the IdP (bench/README.md).
IDP_ALONE_BROWSERS = 3


def measure_idp_alone(run: Run, round_: int = 0) -> None:
    """authorize + token pairs against the IdP alone, driven like the sign-in row but by
    ``IDP_ALONE_BROWSERS`` times its browsers, so that the IdP is busy all the time."""
    assert run.idp is not None  # noqa: S101
    users = common.hot_set(SCALES["small"], run.args.rng_seed)
    row, _ = measure_browsers(
        run,
        "idp",
        "http://127.0.0.1:9",
        users,
        {"idp": run.idp.pid},
        concurrency=run.args.concurrency * IDP_ALONE_BROWSERS,
    )
    row.update(row="idp", workers=run.args.idp_workers, round=round_)
    run.rows.append(row)
    log_row(run, row)


def sso_broker(*argv: str, env: dict[str, str], cwd: Path) -> str:
    completed = subprocess.run(  # noqa: S603 - our own console script
        [str(BIN / "sso-broker"), *argv],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if completed.returncode != 0:
        raise RuntimeError(f"sso-broker {argv[0]} failed: {completed.stderr.strip()[-500:]}")
    return completed.stdout.strip()


# --- one database, one configuration -------------------------------------------------------


def log_row(run: Run, row: dict[str, Any]) -> None:
    label = " ".join(report.config_label(row))
    rate = f"{row.get('rate') or 0:,.1f}/s"
    p99 = row.get("p99_ms")
    p99_text = "-" if p99 is None else f"{p99:.2f}"
    errors = f", {row['errors']} ERRORS {row.get('error_kinds')}" if row.get("errors") else ""
    print(f"  {label:28} {row['row']:10} {rate:>12}  p99 {p99_text} ms{errors}", flush=True)


def source_version() -> str:
    """A fingerprint of the service's code as it is on disk now (committed or not): the code
    is being changed while benchmarks run, so each configuration records what it started."""
    digest = hashlib.sha256()
    for path in sorted((REPO / "src").rglob("*.py")):
        digest.update(path.relative_to(REPO).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:10]


def profile_row(run: Run, root: int, label: str) -> subprocess.Popen[bytes] | None:
    """py-spy on the first worker for the row's warm-up and measured time (``--profile``).

    py-spy pauses the worker for each sample (non-blocking sampling tears the stacks), so a
    profiled run's figures are for reading the profile, not for comparing.
    """
    folder = run.args.profile
    if folder is None:
        return None
    folder.mkdir(parents=True, exist_ok=True)
    seconds = run.args.warmup + run.args.duration
    argv = [
        str(BIN / "py-spy"), "record", "--pid", str(procs.worker_pids(root)[0]),
        "--duration", str(max(1, round(seconds))), "--rate", "250",
        "--format", "raw", "--output", str(folder / f"{label}.txt"),
    ]  # fmt: skip
    if run.args.profile_native:  # C frames too (slower to sample): where uvloop, asyncpg go
        argv.append("--native")
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # noqa: S603


def run_config(
    run: Run,
    database: Database,
    scale: Scale,
    config: Config,
    hot: list[HotUser],
    admin_token: str,
    round_: int = 0,
) -> None:
    port = run.service_port
    base = f"http://127.0.0.1:{port}"
    label = f"{scale.name}-{config.db}-w{config.workers}-{config.limiter}"
    if run.args.repeat > 1:
        label += f"-r{round_ + 1}"
    info: dict[str, Any] = {
        "scale": scale.name,
        "db": config.db,
        "workers": config.workers,
        "limiter": config.limiter,
        "round": round_,
        "log": str(run.logs / f"service-{label}.log"),
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "src": source_version(),
        "commit": _git("rev-parse", "--short", "HEAD"),
    }
    run.configs.append(info)
    log = run.logs / f"service-{label}.log"
    log.unlink(missing_ok=True)
    argv = [
        str(BIN / "sso-broker"), "serve", "--host", "127.0.0.1", "--port", str(port),
        "--workers", str(config.workers),
    ]  # fmt: skip
    server = procs.Server(
        "service",
        argv,
        env=run.env(database, config.limiter),
        log=log,
        cwd=database.folder or run.logs,
    )
    started = time.perf_counter()
    try:
        server.start(f"{base}/readyz", timeout=120)
        procs.wait_settled(server.pid, config.workers)
    except Exception as e:
        server.stop()
        info["failure"] = f"did not start: {e}"
        run.problems.append(f"{label}: the service did not start ({e}); see {log}")
        return
    info["startup_s"] = time.perf_counter() - started
    watch = run.watch(server.pid)
    tokens: dict[str, str] = {}
    shape = {
        "scale": scale.name,
        "db": config.db,
        "workers": config.workers,
        "limiter": config.limiter,
        "round": round_,
    }
    try:
        for name in (row for row in config.rows if row in run.args.rows):
            profiler = profile_row(run, server.pid, f"{label}-{name}")
            if name == "initiate":
                challenge = pkce_pair()[1]  # the dashboard's PKCE challenge
                row = measure_route(
                    run,
                    base,
                    [
                        RouteRequest(
                            f"/sso/{user.provider_id}/initiate?"
                            + urlencode(
                                {
                                    "login_hint": user.email,
                                    "code_challenge": challenge,
                                    "code_challenge_method": "S256",
                                }
                            )
                        )
                        for user in hot
                    ],
                    expect_status=302,
                    expect_location=f"{run.idp_url}/",
                    watch=watch,
                )
            elif name in ("signin", "refresh"):
                row, got = measure_browsers(run, name, base, hot, watch)
                tokens.update(got)
            elif name == "me":
                if not tokens:
                    row = {"errors": 1, "error_kinds": {"no access token from the sign-ins": 1}}
                else:
                    row = measure_route(
                        run,
                        base,
                        [
                            RouteRequest("/api/v1/auth/me", {"Authorization": f"Bearer {token}"})
                            for token in tokens.values()
                        ],
                        expect_status=200,
                        expect_body='"session"',
                        watch=watch,
                    )
            else:  # providers
                row = measure_route(
                    run,
                    base,
                    [
                        RouteRequest(
                            "/api/v1/sso-providers", {"Authorization": f"Bearer {admin_token}"}
                        )
                    ],
                    expect_status=200,
                    expect_body='"items"',
                    watch=watch,
                )
            if profiler is not None:
                profiler.wait()
            row.update(shape, row=name)
            if run.hello_rate and row.get("rate"):
                row["pct_hello"] = row["rate"] / run.hello_rate * 100
            run.rows.append(row)
            log_row(run, row)
        workers = procs.worker_pids(server.pid)
        info["peak_rss_mib"] = [
            (procs.peak_rss_kib(pid) or 0) / 1024 for pid in workers if procs.peak_rss_kib(pid)
        ]
    finally:
        server.stop()
    errors = warnings = restarts = access = 0
    for line in log.read_text(errors="replace").splitlines():
        access += '"logger": "sso_broker.access"' in line
        if '"level": "error"' in line or '"level": "critical"' in line or "Traceback" in line:
            errors += 1
        elif '"level": "warning"' in line:
            warnings += 1
        if '"message": "Child process [' in line and 'died"' in line:
            restarts += 1
    info["log_errors"], info["log_warnings"], info["worker_restarts"] = errors, warnings, restarts
    info["access_log_lines"] = access
    if errors:
        run.problems.append(f"{label}: {errors} error lines in {log}")
    if restarts:
        run.problems.append(
            f"{label}: uvicorn replaced {restarts} worker(s) that missed its 5 s health check; "
            f"see {log}"
        )


def run_database(run: Run, kind: str, scale: Scale) -> None:
    args = run.args
    print(f"[{scale.name} / {kind}] creating and migrating the database", flush=True)
    try:
        database = run_async(lambda: create_database(kind, args.postgres_url))
    except Exception as e:
        run.problems.append(f"{scale.name}/{kind}: cannot create the database: {e}")
        return
    try:
        env = run.env(database, "off")
        cwd = database.folder or run.logs
        sso_broker("migrate", env=env, cwd=cwd)
        seconds = run_async(lambda: seed(database, scale, run.encryption_key))
        run.seeds.append(
            {
                "scale": scale.name,
                "db": kind,
                "providers": scale.providers,
                "users": scale.users + 1,
                "seconds": seconds,
            }
        )
        print(f"[{scale.name} / {kind}] seeded in {seconds:.1f} s", flush=True)
        company = common.company_id(common.admin_company(scale))
        admin_token = sso_broker(
            "issue-token", "--email", common.ADMIN_EMAIL, "--company", str(company),
            "--ttl", "3600", env=env, cwd=cwd,
        )  # fmt: skip
        hot = common.hot_set(scale, args.rng_seed)
        for round_ in range(args.repeat):  # rounds.py: every configuration once a round
            for config in configurations(args, kind):
                print(
                    f"[{scale.name} / {kind}] {config.workers} worker(s), "
                    f"limiter {config.limiter}"
                    + (f", round {round_ + 1} of {args.repeat}" if args.repeat > 1 else ""),
                    flush=True,
                )
                run_config(run, database, scale, config, hot, admin_token, round_)
    except Exception as e:
        run.problems.append(f"{scale.name}/{kind}: {type(e).__name__}: {e}")
    finally:
        run_async(lambda: drop_database(database))


# --- the run -------------------------------------------------------------------------------


def _git(*argv: str) -> str:
    try:
        return subprocess.run(  # noqa: S603
            ["git", *argv],  # noqa: S607
            cwd=REPO,
            capture_output=True,
            text=True,
            check=False,
            timeout=10,
        ).stdout.strip()
    except OSError:
        return ""


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def compile_bytecode() -> None:
    """Bytecode for everything the service imports, as the image has it (the Dockerfile's
    ``UV_COMPILE_BYTECODE=1``): without it every worker compiles a thousand modules as it
    starts, and the compiler's leftovers put 5 MB on its peak RSS (README, *Performance*).
    Written whatever ``PYTHONDONTWRITEBYTECODE`` says; a no-op when it is there already."""
    spec = importlib.util.find_spec("sso_broker")
    folders = [sysconfig.get_paths()["purelib"], *(spec.submodule_search_locations or [])]
    for folder in dict.fromkeys(folders):
        compileall.compile_dir(folder, quiet=2, workers=0)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    wall = time.perf_counter()
    compile_bytecode()
    logs = args.json.parent / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    run = Run(args=args, logs=logs)
    run.use_wrk = wrk.available() and not args.no_wrk
    if not run.use_wrk and not args.no_wrk:
        print("wrk not found: single routes are driven from Python instead", flush=True)
    meta = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "nproc": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "python": platform.python_version(),
        "commit": _git("rev-parse", "--short", "HEAD"),
        "dirty": bool(_git("status", "--porcelain", "--", "src")),
        "command": shlex.join(["python", "-m", "bench", *(sys.argv[1:] if argv is None else argv)]),
        "wrk_threads": wrk.THREADS,
        "wrk_connections": args.concurrency,
        "concurrency": args.concurrency,
        "duration": args.duration,
        "warmup": args.warmup,
        "repeat": args.repeat,
        "hot_providers": common.HOT_PROVIDERS,
        "hot_users": common.HOT_USERS,
        "load_generator": "wrk" if run.use_wrk else "python",
    }
    try:
        print("[reference] hello and the IdP alone", flush=True)
        start_idp(run)
        for round_ in range(args.repeat):
            measure_hello(run, round_)
            measure_idp_alone(run, round_)
        run.hello_rate = rounds.hello_rate(run.rows)
        for scale_name in args.scale:
            for kind in args.db:
                run_database(run, kind, SCALES[scale_name])
    except KeyboardInterrupt:
        run.problems.append("interrupted")
    except Exception as e:
        run.problems.append(f"{type(e).__name__}: {e}")
    finally:
        if run.idp is not None:
            run.idp.stop()

    round_rows = run.rows
    run.rows = rounds.merge_rows(round_rows, run.hello_rate)
    sign_in_rates = [row["rate"] for row in run.rows if row["row"] == "signin" and row.get("rate")]
    idp_summary = None
    idp_row = next((row for row in run.rows if row["row"] == "idp"), None)
    if idp_row is not None:
        for row in run.rows:
            if row["row"] == "signin" and row.get("rate") and idp_row.get("rate"):
                row["idp_ratio"] = idp_row["rate"] / row["rate"]
        idp_summary = {
            "rate": idp_row.get("rate"),
            "p50_ms": idp_row.get("p50_ms"),
            "p99_ms": idp_row.get("p99_ms"),
            "cpu_ms": idp_row.get("cpu_ms"),
            "workers": args.idp_workers,
            "min_ratio": idp_row["rate"] / max(sign_in_rates)
            if sign_in_rates and idp_row.get("rate")
            else None,
        }
    noisy = [row for row in run.rows if (row.get("other_cpu_pct") or 0) > NOISY_PCT]
    for row in run.rows:
        if row.get("errors"):
            run.problems.append(
                f"{' '.join(report.config_label(row))} {row['row']}: {row['errors']} errors "
                f"{row.get('error_kinds')}"
            )
        elif not row.get("rate"):
            run.problems.append(f"{' '.join(report.config_label(row))} {row['row']}: no throughput")
    versions = sorted({config["src"] for config in run.configs})
    meta["src_versions"] = versions
    result = {
        "meta": meta,
        "rows": run.rows,
        "round_rows": round_rows if args.repeat > 1 else [],
        "configs": run.configs,
        "seeds": run.seeds,
        "idp": idp_summary,
        "problems": run.problems,
        "noisy_rows": len(noisy),
        "noisy_pct": NOISY_PCT,
        "status": "FAILED" if run.problems else "OK",
        "wall_s": time.perf_counter() - wall,
    }
    print()
    print(report.render_text(result), end="", flush=True)
    report.write(result, args.json, args.markdown)
    print(f"Written: {args.json} and {args.markdown}")
    return 1 if run.problems else 0


if __name__ == "__main__":
    sys.exit(main())
