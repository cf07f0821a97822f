"""`rrhf stack up|down|status|env`: the production stack on this machine, without docker.

PostgreSQL (the system's server binaries: Debian's ``postgresql`` package), a Prefect server and an MLflow tracking
server on it (MLflow's artifacts in a folder of the stack), and a Prefect process worker on the pool the deployments of
``prefect.yaml`` use. Everything listens on 127.0.0.1 only, and nothing answers without credentials: the Prefect API
takes a basic-auth string (with CSRF protection and CORS for its own UI only), MLflow runs its basic-auth app (user
``rrhf``, the admin), and the process pool's job template has no ``command`` or ``env`` variable, so a flow run cannot
make the worker run a command of its own (the server refuses such a run). The passwords are generated once and kept
in ``<dir>/credentials.env`` (mode 0600); they reach the servers through their environment, never a command line,
and the commands that use the stack read them from ``<dir>/client.env`` (mode 0600). ``docker/compose.yaml``
describes the same stack for docker users.

The stack's folder holds each component's data, pid file and log (``<dir>/logs/``); ``rrhf stack env`` prints the
line that loads ``client.env`` (``PREFECT_API_URL``, ``PREFECT_API_AUTH_STRING``, ``MLFLOW_TRACKING_URI``,
``MLFLOW_TRACKING_USERNAME``, ``MLFLOW_TRACKING_PASSWORD``) into a shell.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import json
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from rrhf_cli.reaper import _alive
from rrhf_core.errors import ConfigError

DB_USER = "rrhf"
USER = "rrhf"  # the stack's user for the Prefect API and MLflow (MLflow's admin)
SECRETS = ("POSTGRES_PASSWORD", "RRHF_STACK_PASSWORD", "MLFLOW_FLASK_SECRET")
# what a flow run on the stack's process pool may set: no command, no environment (either would run code of the
# caller's choosing as the worker's user)
POOL_VARIABLES = ("name", "labels", "stream_output", "working_dir")
POOL = "rrhf-process"
COMPONENTS = ("postgres", "prefect", "mlflow", "worker")


@dataclass
class Ports:
    postgres: int = 5433  # beside a system cluster on 5432
    prefect: int = 4200
    mlflow: int = 5000
    worker: int = 8081  # the worker's health endpoint


@dataclass
class Stack:
    dir: Path
    ports: Ports

    # -- places ---------------------------------------------------------------------------------------------------
    @property
    def logs(self) -> Path:
        return self.dir / "logs"

    @property
    def pgdata(self) -> Path:
        return self.dir / "postgres" / "data"

    @property
    def pgsocket(self) -> Path:
        return self.dir / "postgres" / "socket"

    def pidfile(self, name: str) -> Path:
        return self.dir / f"{name}.pid"

    @property
    def state_file(self) -> Path:
        return self.dir / "stack.json"

    # -- addresses --------------------------------------------------------------------------------------------------
    @property
    def credentials(self) -> Path:
        return self.dir / "credentials.env"

    @property
    def client_file(self) -> Path:
        return self.dir / "client.env"

    def secret(self, name: str) -> str:
        for line in _read_private(self.credentials).splitlines():
            if line.startswith(f"{name}="):
                return line.split("=", 1)[1]
        raise ConfigError(
            f"{self.credentials} has no {name} line: run `rrhf stack up --dir {self.dir}` (it adds what is missing), "
            f"or delete the stack folder {self.dir} to start over"
        )

    def password(self) -> str:
        return self.secret("POSTGRES_PASSWORD")

    def db_url(self, db: str, driver: str = "postgresql") -> str:
        return f"{driver}://{DB_USER}:{self.password()}@127.0.0.1:{self.ports.postgres}/{db}"

    @property
    def prefect_api(self) -> str:
        return f"http://127.0.0.1:{self.ports.prefect}/api"

    @property
    def mlflow_uri(self) -> str:
        return f"http://127.0.0.1:{self.ports.mlflow}"

    def client_env(self) -> dict[str, str]:
        """What a command needs to use the stack: its addresses and credentials."""
        pw = self.secret("RRHF_STACK_PASSWORD")
        return {
            "PREFECT_API_URL": self.prefect_api,
            "PREFECT_API_AUTH_STRING": f"{USER}:{pw}",
            "MLFLOW_TRACKING_URI": self.mlflow_uri,
            "MLFLOW_TRACKING_USERNAME": USER,
            "MLFLOW_TRACKING_PASSWORD": pw,
        }


def _read_private(path: Path) -> str:
    try:
        return path.read_text()
    except OSError as e:
        raise ConfigError(f"cannot read the stack's credentials {path}: {e.strerror}") from None


def _write_private(path: Path, text: str) -> None:
    """Write ``path`` readable by its owner only (0600 from its creation: never readable by others, not even for a
    moment), replacing it without following a link planted there."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def _ensure_credentials(st: Stack) -> None:
    """Generate each secret the stack needs once; an older stack's file gains the ones it lacks."""
    have = _read_private(st.credentials) if st.credentials.exists() else ""
    names = {line.split("=", 1)[0] for line in have.splitlines() if "=" in line}
    missing = [n for n in SECRETS if n not in names]
    if missing or (st.credentials.stat().st_mode & 0o077):
        extra = "".join(f"{n}={secrets.token_urlsafe(24)}\n" for n in missing)
        _write_private(st.credentials, have + ("" if not have or have.endswith("\n") else "\n") + extra)
    _write_private(st.client_file, "".join(f"{k}={v}\n" for k, v in st.client_env().items()))


def env_lines(st: Stack) -> list[str]:
    """What `rrhf stack env` prints: a line that loads the client file into the shell (the secrets stay in the file,
    not on the terminal)."""
    return [
        f"# the stack's addresses and credentials ({', '.join(st.client_env())}), kept in {st.client_file}",
        f"set -a; . {shlex.quote(str(st.client_file))}; set +a",
    ]


# -- helpers -----------------------------------------------------------------------------------------------------------
def _pg_bindir() -> Path:
    """The folder of the PostgreSQL server binaries (initdb, pg_ctl, postgres)."""
    candidates = [os.environ.get("RRHF_PG_BINDIR", "")]
    if shutil.which("pg_config"):
        out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True)
        candidates.append(out.stdout.strip())
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)
    candidates.append(str(Path(shutil.which("initdb") or "/nonexistent").parent))
    for c in candidates:
        if c and (Path(c) / "initdb").exists() and (Path(c) / "pg_ctl").exists():
            return Path(c)
    raise ConfigError(
        "no PostgreSQL server found (initdb and pg_ctl): install it (Debian/Ubuntu: apt-get install postgresql) "
        "or point RRHF_PG_BINDIR at the folder that holds its binaries"
    )


def _as_db_owner() -> list[str]:
    """PostgreSQL refuses to run as root: as root, its commands run as the system's ``postgres`` user."""
    if os.geteuid() != 0:
        return []
    try:
        import pwd

        pwd.getpwnam("postgres")
    except KeyError as e:
        raise ConfigError(
            "PostgreSQL cannot run as root and there is no 'postgres' user to run it as: "
            "run `rrhf stack` as an ordinary user, or create the user (useradd --system postgres)"
        ) from e
    return ["runuser", "-u", "postgres", "--"]


def _chown_to_db_owner(path: Path) -> None:
    if os.geteuid() == 0:
        shutil.chown(path, "postgres", "postgres")


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (``/proc/PID/stat`` field 22): with the pid, it names one
    process (a pid alone is reused once its process has gone). None where there is no ``/proc``."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _our_pid(path: Path) -> int | None:
    """The pid in the stack's pid file ``path`` while it is still the process the stack started (same start time
    as recorded): a pid file that names another process, by reuse of the pid or by an edit, is not signalled."""
    pid = _read_pid(path)
    if not _alive(pid):
        return None
    assert pid is not None
    try:
        recorded = path.read_text().split()[1:2]
    except OSError:
        return None
    now = _start_time(pid)
    if not recorded or now is None or recorded[0] != now:
        return None
    return pid


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=3) as r:
            return 200 <= r.status < 300
    except OSError:
        return False


def _wait(
    what: str, ok: Callable[[], bool], log: Path, timeout: float, proc: subprocess.Popen | None = None
) -> None:
    deadline = time.time() + timeout
    while not ok():
        if proc is not None and proc.poll() is not None:
            raise ConfigError(
                f"{what} exited with code {proc.returncode} while starting; its log: {log}\n{_tail(log)}"
            )
        if time.time() > deadline:
            raise ConfigError(f"{what} did not become ready in {timeout:.0f} s; its log: {log}\n{_tail(log)}")
        time.sleep(0.5)


def _tail(log: Path, lines: int = 15) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _spawn(st: Stack, name: str, cmd: list[str], env: dict[str, str]) -> subprocess.Popen:
    log = st.logs / f"{name}.log"
    # its own session: `down` stops the whole process group, and a Ctrl-C in the shell does not reach it
    proc = subprocess.Popen(
        cmd,
        env=env,
        stdout=log.open("a"),
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        cwd=Path.cwd(),
    )
    st.pidfile(name).write_text(f"{proc.pid} {_start_time(proc.pid) or '-'}\n")
    return proc


def _child_env(st: Stack) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_TRACKING"))}
    env.update(
        PREFECT_HOME=str(st.dir / "prefect-home"),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        DO_NOT_TRACK="true",
        MLFLOW_DISABLE_TELEMETRY="true",
    )
    return env


# -- the four components ----------------------------------------------------------------------------------------------
def _postgres_up(st: Stack, say: Callable[[str], None]) -> None:
    bindir = _pg_bindir()
    sudo = _as_db_owner()
    pg_log = st.logs / "postgres.log"
    if not (st.pgdata / "PG_VERSION").exists():
        st.pgdata.mkdir(parents=True, exist_ok=True)
        st.pgsocket.mkdir(parents=True, exist_ok=True)
        pwfile = st.dir / "postgres" / "pwfile"
        pwfile.write_text(st.password() + "\n")
        pwfile.chmod(0o600)
        for p in (st.dir / "postgres", st.pgdata, st.pgsocket, pwfile):
            _chown_to_db_owner(p)
        if sudo and subprocess.run([*sudo, "test", "-w", str(st.pgdata)]).returncode != 0:
            blocked = next(
                (str(q) for q in reversed(st.pgdata.parents) if not os.stat(q).st_mode & 0o001), "?"
            )
            raise ConfigError(
                f"the database runs as the user 'postgres', which cannot reach {st.pgdata} ({blocked} is closed to "
                "other users): put the stack in a folder others can traverse (--dir), or run rrhf stack as a "
                "non-root user"
            )
        out = subprocess.run(
            [*sudo, str(bindir / "initdb"), "-D", str(st.pgdata), "-U", DB_USER, f"--pwfile={pwfile}",
             "--auth=scram-sha-256", "--encoding=UTF8", "--locale=C"],
            capture_output=True, text=True,
        )  # fmt: skip
        pwfile.unlink()
        if out.returncode != 0:
            raise ConfigError(f"initdb failed in {st.pgdata}:\n{out.stdout}{out.stderr}")
        say(f"postgres: initialised a cluster in {st.pgdata}")
    if _pg_running(st):
        say(f"postgres: already running on 127.0.0.1:{st.ports.postgres}")
    else:
        if not _port_free(st.ports.postgres):
            raise ConfigError(f"port {st.ports.postgres} is in use: give the stack another (--postgres-port)")
        pg_log.touch()
        _chown_to_db_owner(pg_log)
        opts = (
            f"-c listen_addresses=127.0.0.1 -p {st.ports.postgres} -c unix_socket_directories='{st.pgsocket}'"
        )
        out = subprocess.run(
            [*sudo, str(bindir / "pg_ctl"), "-D", str(st.pgdata), "-l", str(pg_log), "-o", opts, "-w", "-t", "60", "start"],
            capture_output=True, text=True,
        )  # fmt: skip
        if out.returncode != 0:
            raise ConfigError(
                f"PostgreSQL did not start; its log: {pg_log}\n{out.stdout}{out.stderr}\n{_tail(pg_log)}"
            )
        say(f"postgres: started on 127.0.0.1:{st.ports.postgres}")
    import psycopg2

    conn = psycopg2.connect(st.db_url("postgres"))
    conn.autocommit = True
    with conn.cursor() as cur:
        for db in ("prefect", "mlflow"):
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (db,))
            if cur.fetchone() is None:
                cur.execute(f'CREATE DATABASE "{db}" OWNER {DB_USER}')
                say(f"postgres: created database {db}")
    conn.close()


def _pg_running(st: Stack) -> bool:
    pid = _read_pid(st.pgdata / "postmaster.pid")
    return _alive(pid)


def _already_up(st: Stack, name: str, health: str, port: int, where: str, say: Callable[[str], None]) -> bool:
    """True when the stack's ``name`` runs and answers ``health``; else its port must be free (or a clear error)."""
    if _our_pid(st.pidfile(name)) and _http_ok(health):
        say(f"{name}: already running at {where}")
        return True
    if not _port_free(port):
        raise ConfigError(f"port {port} is in use: give the stack another (--{name}-port)")
    return False


def _prefect_up(st: Stack, say: Callable[[str], None]) -> None:
    if _already_up(st, "prefect", f"{st.prefect_api}/health", st.ports.prefect, st.prefect_api, say):
        return
    env = _child_env(st)
    env["PREFECT_API_DATABASE_CONNECTION_URL"] = st.db_url("prefect", "postgresql+asyncpg")
    # the UI asks this address for its data (by default the one on port 4200, whatever port the server has)
    env["PREFECT_UI_API_URL"] = st.prefect_api
    # nothing answers without the auth string; state changes need a CSRF token; only the stack's own UI may call it
    env["PREFECT_SERVER_API_AUTH_STRING"] = st.client_env()["PREFECT_API_AUTH_STRING"]
    env["PREFECT_SERVER_CSRF_PROTECTION_ENABLED"] = "true"
    env["PREFECT_SERVER_CORS_ALLOWED_ORIGINS"] = f"http://127.0.0.1:{st.ports.prefect}"
    exe = str(Path(sys.executable).parent / "prefect")
    cmd = [exe, "server", "start", "--host", "127.0.0.1", "--port", str(st.ports.prefect)]
    proc = _spawn(st, "prefect", cmd, env)
    _wait(
        "the Prefect server", lambda: _http_ok(f"{st.prefect_api}/health"), st.logs / "prefect.log", 180, proc
    )
    say(f"prefect: server at {st.prefect_api} (UI http://127.0.0.1:{st.ports.prefect}), database on Postgres")


def _mlflow_up(st: Stack, say: Callable[[str], None]) -> None:
    if _already_up(st, "mlflow", f"{st.mlflow_uri}/health", st.ports.mlflow, st.mlflow_uri, say):
        return
    artifacts = st.dir / "mlartifacts"
    artifacts.mkdir(exist_ok=True)
    exe = str(Path(sys.executable).parent / "mlflow")
    cmd = [exe, "server", "--host", "127.0.0.1", "--port", str(st.ports.mlflow), "--workers", "1",
           "--app-name", "basic-auth", "--artifacts-destination", str(artifacts)]  # fmt: skip
    env = _child_env(st)
    env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
    # the database password through the environment, never on the command line (`ps` shows every user that)
    env["MLFLOW_BACKEND_STORE_URI"] = st.db_url("mlflow")
    env["MLFLOW_AUTH_CONFIG_PATH"] = str(_mlflow_auth_config(st))
    env["MLFLOW_AUTH_ADMIN_PASSWORD"] = st.secret("RRHF_STACK_PASSWORD")
    env["MLFLOW_FLASK_SERVER_SECRET_KEY"] = st.secret("MLFLOW_FLASK_SECRET")
    proc = _spawn(st, "mlflow", cmd, env)
    _wait("the MLflow server", lambda: _http_ok(f"{st.mlflow_uri}/health"), st.logs / "mlflow.log", 180, proc)
    say(f"mlflow: tracking server at {st.mlflow_uri}, runs on Postgres, artifacts in {artifacts}")


def _mlflow_auth_config(st: Stack) -> Path:
    """MLflow's basic-auth settings: its user database in a folder of its own, outside the served artifacts (a file
    there could be downloaded through the artifact API); no password in the file (it comes from the environment)."""
    folder = st.dir / "mlflow-auth"
    folder.mkdir(mode=0o700, exist_ok=True)
    ini = folder / "auth.ini"
    _write_private(
        ini,
        "[mlflow]\n"
        "default_permission = READ\n"
        f"database_uri = sqlite:///{folder / 'basic_auth.db'}\n"
        f"admin_username = {USER}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n",
    )
    return ini


def pool_template() -> dict:
    """The process pool's base job template without the variables that would let a flow run choose what the worker
    runs (``command``) or how (``env``); other variables are refused by the server (``additionalProperties``)."""
    from prefect.workers.process import ProcessWorker

    template = ProcessWorker.get_default_base_job_template()
    template["job_configuration"] = {
        k: v for k, v in template["job_configuration"].items() if k in POOL_VARIABLES
    }
    props = template["variables"]["properties"]
    template["variables"]["properties"] = {k: v for k, v in props.items() if k in POOL_VARIABLES}
    template["variables"]["additionalProperties"] = False
    return template


def _worker_up(st: Stack, say: Callable[[str], None]) -> None:
    health = f"http://127.0.0.1:{st.ports.worker}/health"
    if _already_up(st, "worker", health, st.ports.worker, f"pool {POOL}", say):
        return
    env = {**_child_env(st), **st.client_env()}
    exe = str(Path(sys.executable).parent / "prefect")
    template = st.dir / "process-pool.json"
    template.write_text(json.dumps(pool_template(), indent=2) + "\n")
    out = subprocess.run(
        [
            exe,
            "work-pool",
            "create",
            POOL,
            "--type",
            "process",
            "--overwrite",
            "--base-job-template",
            str(template),
        ],
        env=env,
        capture_output=True,
        text=True,
    )
    if out.returncode != 0:
        raise ConfigError(f"could not create the work pool {POOL}:\n{out.stdout}{out.stderr}")
    env.update(PREFECT_WORKER_WEBSERVER_HOST="127.0.0.1", PREFECT_WORKER_WEBSERVER_PORT=str(st.ports.worker))
    proc = _spawn(st, "worker", [exe, "worker", "start", "--pool", POOL, "--with-healthcheck"], env)
    _wait("the Prefect worker", lambda: _http_ok(health), st.logs / "worker.log", 120, proc)
    say(f"worker: a process worker polls pool {POOL} (runs track to {st.mlflow_uri})")


# -- commands ---------------------------------------------------------------------------------------------------------
def _load(dir_: Path, ports: Ports | None) -> Stack:
    """The stack in ``dir_``: its recorded ports unless new ones are given."""
    if ports is None and (dir_ / "stack.json").exists():
        ports = Ports(**json.loads((dir_ / "stack.json").read_text())["ports"])
    return Stack(dir_.resolve(), ports or Ports())


def up(dir_: Path, ports: Ports | None = None, say: Callable[[str], None] = print) -> Stack:
    st = _load(dir_, ports)
    st.dir.mkdir(parents=True, exist_ok=True)
    st.logs.mkdir(exist_ok=True)
    _ensure_credentials(st)
    if os.geteuid() == 0:  # the database's owner must reach its folder
        st.dir.chmod(0o755)
    st.state_file.write_text(json.dumps({"ports": asdict(st.ports)}, indent=2) + "\n")
    start = time.time()
    _postgres_up(st, say)
    _prefect_up(st, say)
    _mlflow_up(st, say)
    _worker_up(st, say)
    say(
        f'stack up in {time.time() - start:.0f} s; point commands at it with: eval "$(rrhf stack env --dir {dir_})"'
    )
    return st


def _stop_pid(st: Stack, name: str, timeout: float = 30) -> bool:
    pid = _our_pid(st.pidfile(name))
    if pid is None:  # gone, or the pid now names a process the stack did not start: never signal that
        st.pidfile(name).unlink(missing_ok=True)
        return False
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGTERM)
    deadline = time.time() + timeout
    while _alive(pid) and time.time() < deadline:
        time.sleep(0.3)
        with contextlib.suppress(ChildProcessError):  # reap it when it is our own child (started in-process)
            os.waitpid(pid, os.WNOHANG)
    if _alive(pid):
        os.killpg(pid, signal.SIGKILL)
    st.pidfile(name).unlink(missing_ok=True)
    return True


def down(dir_: Path, say: Callable[[str], None] = print) -> None:
    st = _load(dir_, None)
    if not st.dir.exists():
        raise ConfigError(f"no stack in {st.dir}")
    for name in ("worker", "mlflow", "prefect"):
        say(f"{name}: {'stopped' if _stop_pid(st, name) else 'was not running'}")
    if _pg_running(st):
        out = subprocess.run(
            [*_as_db_owner(), str(_pg_bindir() / "pg_ctl"), "-D", str(st.pgdata), "-m", "fast", "-w", "stop"],
            capture_output=True, text=True,
        )  # fmt: skip
        if out.returncode != 0:
            raise ConfigError(f"PostgreSQL did not stop:\n{out.stdout}{out.stderr}")
        say("postgres: stopped")
    else:
        say("postgres: was not running")
    say(f"data kept in {st.dir} (`rrhf stack up` starts it again; delete the folder to start from nothing)")


def status(dir_: Path) -> dict[str, dict[str, object]]:
    st = _load(dir_, None)
    health = {
        "postgres": lambda: _pg_running(st),
        "prefect": lambda: _http_ok(f"{st.prefect_api}/health"),
        "mlflow": lambda: _http_ok(f"{st.mlflow_uri}/health"),
        "worker": lambda: _http_ok(f"http://127.0.0.1:{st.ports.worker}/health"),
    }
    where = {
        "postgres": f"127.0.0.1:{st.ports.postgres}",
        "prefect": st.prefect_api,
        "mlflow": st.mlflow_uri,
        "worker": f"pool {POOL}",
    }
    out: dict[str, dict[str, object]] = {}
    for name in COMPONENTS:
        pid = _read_pid(st.pgdata / "postmaster.pid") if name == "postgres" else _our_pid(st.pidfile(name))
        out[name] = {"pid": pid if _alive(pid) else None, "healthy": bool(health[name]()), "at": where[name]}
    return out


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="rrhf stack",
        description="the production stack on this machine (PostgreSQL, Prefect server, MLflow server, a process "
        "worker), all on 127.0.0.1; docker/compose.yaml is the same stack for docker",
    )
    p.add_argument("action", choices=["up", "down", "status", "env"])
    p.add_argument("--dir", type=Path, default=Path("runs/stack"), metavar="PATH",
                   help="the stack's folder: databases, artifacts, logs, pid files (default: runs/stack)")  # fmt: skip
    defaults = Ports()
    for name in asdict(defaults):
        p.add_argument(f"--{name}-port", type=int, metavar="PORT",
                       help=f"{name} port (default: {getattr(defaults, name)}, or the one the stack was started with)")  # fmt: skip
    a = p.parse_args(argv)
    given = {n: getattr(a, f"{n}_port") for n in asdict(defaults)}
    ports = None
    if any(v is not None for v in given.values()):
        base = _load(a.dir, None).ports
        ports = Ports(**{n: v if v is not None else getattr(base, n) for n, v in given.items()})
    if a.action == "up":
        up(a.dir, ports)
    elif a.action == "down":
        down(a.dir)
    elif a.action == "env":
        st = _load(a.dir, ports)
        if not st.client_file.exists():
            raise ConfigError(f"no stack in {st.dir} (no {st.client_file.name}): start it with rrhf stack up")
        print("\n".join(env_lines(st)))
    else:
        report = status(a.dir)
        for name, s in report.items():
            state = "healthy" if s["healthy"] else ("running, not answering" if s["pid"] else "down")
            print(f"{name:9s} {state:24s} pid {s['pid'] or '-':<8} {s['at']}")
        return 0 if all(s["healthy"] for s in report.values()) else 1
    return 0
