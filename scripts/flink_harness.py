#!/usr/bin/env python3
"""Real Apache Flink 2.3.0 test harness for savepointd.

Installs Flink from PyPI into a private venv, builds the demo streaming job, runs
standalone session clusters bound to 127.0.0.1 on free ports, submits and cancels
jobs through the JobManager REST API, and stops exactly the processes it started.

Python standard library only. Usable as a CLI (every subcommand prints one JSON
object on stdout and exits 0, or prints an error on stderr and exits non-zero)
and as a module (functions of the same names return dicts and raise HarnessError):

    install()
    start(dir, savepoint_dir=None, ...)      -> {"rest_url", "dir", "pids", ...}
    submit(rest, name, rate=100, ...)        -> {"job_id", ...}
    cancel(rest, job)                        -> {"job_id", "state"}
    stop(dir)                                -> {"stopped": [...]}

Environment:
    SAVEPOINTD_FLINK_CACHE   cache dir for the venv and the job jar
                             (default: <repo>/.cache/flink)
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid

FLINK_VERSION = "2.3.0"
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
JOB_SRC_DIR = os.path.join(REPO_ROOT, "flink-job", "src", "main", "java")
JOB_MAIN_CLASS = "io.savepointd.demo.StatefulCounterJob"
JOB_JAR_NAME = "savepointd-demo-job.jar"
STATE_FILE = "cluster.json"

# Used when the shipped config.yaml cannot be read (it is read when possible).
_FALLBACK_JAVA_OPTS = (
    "--add-exports=java.rmi/sun.rmi.registry=ALL-UNNAMED "
    "--add-exports=jdk.compiler/com.sun.tools.javac.api=ALL-UNNAMED "
    "--add-exports=jdk.compiler/com.sun.tools.javac.file=ALL-UNNAMED "
    "--add-exports=jdk.compiler/com.sun.tools.javac.parser=ALL-UNNAMED "
    "--add-exports=jdk.compiler/com.sun.tools.javac.tree=ALL-UNNAMED "
    "--add-exports=jdk.compiler/com.sun.tools.javac.util=ALL-UNNAMED "
    "--add-exports=java.security.jgss/sun.security.krb5=ALL-UNNAMED "
    "--add-opens=java.base/java.lang=ALL-UNNAMED "
    "--add-opens=java.base/java.net=ALL-UNNAMED "
    "--add-opens=java.base/java.io=ALL-UNNAMED "
    "--add-opens=java.base/java.nio=ALL-UNNAMED "
    "--add-opens=java.base/sun.nio.ch=ALL-UNNAMED "
    "--add-opens=java.base/java.lang.reflect=ALL-UNNAMED "
    "--add-opens=java.base/java.text=ALL-UNNAMED "
    "--add-opens=java.base/java.time=ALL-UNNAMED "
    "--add-opens=java.base/java.util=ALL-UNNAMED "
    "--add-opens=java.base/java.util.concurrent=ALL-UNNAMED "
    "--add-opens=java.base/java.util.concurrent.atomic=ALL-UNNAMED "
    "--add-opens=java.base/java.util.concurrent.locks=ALL-UNNAMED"
)


class HarnessError(Exception):
    """Any failure of a harness operation; the message is meant for a person."""


# --------------------------------------------------------------------------- paths


def cache_dir() -> str:
    return os.path.abspath(
        os.environ.get("SAVEPOINTD_FLINK_CACHE") or os.path.join(REPO_ROOT, ".cache", "flink")
    )


def _venv_dir() -> str:
    return os.path.join(cache_dir(), "venv")


def _find_flink_home() -> str | None:
    hits = sorted(glob.glob(os.path.join(_venv_dir(), "lib", "python3*", "site-packages", "pyflink")))
    for home in hits:
        if os.path.isfile(os.path.join(home, "bin", "flink")) and glob.glob(
            os.path.join(home, "lib", "flink-dist-*.jar")
        ):
            return home
    return None


def flink_home() -> str:
    home = _find_flink_home()
    if not home:
        raise HarnessError(f"Flink is not installed under {_venv_dir()}; run `flink_harness.py install` first")
    return home


def job_jar() -> str:
    return os.path.join(cache_dir(), JOB_JAR_NAME)


# ------------------------------------------------------------------------- helpers


def _log(msg: str) -> None:
    print(f"[flink-harness] {msg}", file=sys.stderr, flush=True)


def _run(cmd, *, env=None, cwd=None, what=None) -> str:
    try:
        proc = subprocess.run(
            cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
    except FileNotFoundError as e:
        raise HarnessError(f"{what or cmd[0]}: command not found ({e})") from e
    if proc.returncode != 0:
        tail = "\n".join(proc.stdout.strip().splitlines()[-30:])
        raise HarnessError(f"{what or ' '.join(cmd)} failed (exit {proc.returncode}):\n{tail}")
    return proc.stdout


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (bind port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child of ours counts as gone.
    try:
        with open(f"/proc/{pid}/stat") as f:
            if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                return False
    except (OSError, IndexError):
        pass
    return True


def _pid_cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _file_sha256(paths) -> str:
    h = hashlib.sha256()
    for p in sorted(paths):
        h.update(os.path.relpath(p, JOB_SRC_DIR).encode())
        h.update(b"\0")
        with open(p, "rb") as f:
            h.update(f.read())
        h.update(b"\0")
    return h.hexdigest()


# --------------------------------------------------------------------------- REST


def _http(method: str, url: str, body=None, *, headers=None, timeout=30.0):
    """Returns (status, parsed JSON or text). Network errors raise HarnessError."""
    data = None
    hdrs = dict(headers or {})
    if body is not None and not isinstance(body, (bytes, bytearray)):
        data = json.dumps(body).encode()
        hdrs.setdefault("Content-Type", "application/json")
    elif body is not None:
        data = bytes(body)
    req = urllib.request.Request(url, data=data, method=method, headers=hdrs)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            status, raw = resp.status, resp.read()
    except urllib.error.HTTPError as e:
        status, raw = e.code, e.read()
    except (urllib.error.URLError, OSError) as e:
        raise HarnessError(f"{method} {url}: {e}") from e
    text = raw.decode(errors="replace")
    try:
        return status, json.loads(text) if text else None
    except ValueError:
        return status, text


def short_errors(payload) -> str:
    """Flink's {"errors": [...]} bodies carry whole stack traces: keep the message and the Caused-by lines."""
    if isinstance(payload, dict) and isinstance(payload.get("errors"), list):
        parts = []
        for err in payload["errors"]:
            lines = str(err).splitlines()
            keep = lines[:1] + [l.strip() for l in lines[1:] if l.startswith("Caused by")]
            parts.append(" | ".join(keep))
        return "; ".join(parts)
    return str(payload)[:2000]


def _rest_ok(method: str, url: str, body=None, *, expect=(200, 202), **kw):
    status, payload = _http(method, url, body, **kw)
    if status not in expect:
        raise HarnessError(f"{method} {url} -> HTTP {status}: {short_errors(payload)}")
    return payload


def _base(rest: str) -> str:
    rest = rest.rstrip("/")
    if not re.match(r"^https?://", rest):
        rest = "http://" + rest
    return rest


# ------------------------------------------------------------------------ install


def install(rebuild: bool = False) -> dict:
    """Create the Flink venv (idempotent) and build the job jar when its source changed."""
    cache = cache_dir()
    os.makedirs(cache, exist_ok=True)
    venv = _venv_dir()
    stamp = os.path.join(venv, f".savepointd-flink-{FLINK_VERSION}")
    home = _find_flink_home()
    if not (home and os.path.isfile(stamp)):
        py = os.path.join(venv, "bin", "python")
        if not os.path.isfile(py):
            _log(f"creating venv {venv}")
            _run([sys.executable, "-m", "venv", venv], what="python3 -m venv")
        pip = [py, "-m", "pip", "install", "--disable-pip-version-check", "-q"]
        _log(f"pip install apache-flink-libraries=={FLINK_VERSION} (large wheel, the Flink jars)")
        _run(pip + [f"apache-flink-libraries=={FLINK_VERSION}"], what="pip install apache-flink-libraries")
        _log(f"pip install --no-deps apache-flink=={FLINK_VERSION} (bin/ scripts and conf/)")
        _run(pip + ["--no-deps", f"apache-flink=={FLINK_VERSION}"], what="pip install apache-flink")
        home = _find_flink_home()
        if not home:
            raise HarnessError(f"pip finished but no pyflink with bin/flink and lib/flink-dist-*.jar under {venv}")
        with open(stamp, "w") as f:
            f.write(FLINK_VERSION + "\n")
    _chmod_scripts(home)
    jar, built = _build_job_jar(home, force=rebuild)
    return {"flink_home": home, "job_jar": jar, "flink_version": FLINK_VERSION, "jar_rebuilt": built}


def _chmod_scripts(home: str) -> None:
    # Wheels do not always keep the executable bit on bin/*.sh.
    for p in glob.glob(os.path.join(home, "bin", "*")):
        if p.endswith((".sh", ".bat")) or os.path.basename(p) == "flink":
            mode = os.stat(p).st_mode
            if mode & 0o111 != 0o111:
                os.chmod(p, mode | 0o755)


def _build_job_jar(home: str, force: bool = False):
    sources = [
        os.path.join(dp, f) for dp, _, fs in os.walk(JOB_SRC_DIR) for f in fs if f.endswith(".java")
    ]
    if not sources:
        raise HarnessError(f"no Java sources under {JOB_SRC_DIR}")
    digest = _file_sha256(sources) + "-" + FLINK_VERSION
    jar = job_jar()
    hash_file = jar + ".sha256"
    if not force and os.path.isfile(jar) and os.path.isfile(hash_file):
        with open(hash_file) as f:
            if f.read().strip() == digest:
                return jar, False
    for tool in ("javac", "jar"):
        if not shutil.which(tool):
            raise HarnessError(f"`{tool}` not found on PATH: a JDK (11 or newer, 17 tested) is required")
    _log("building the demo job jar")
    with tempfile.TemporaryDirectory(prefix="jobbuild-", dir=cache_dir()) as tmp:
        classes = os.path.join(tmp, "classes")
        os.makedirs(classes)
        _run(
            ["javac", "--release", "11", "-Xlint:-options", "-nowarn", "-encoding", "UTF-8",
             "-cp", os.path.join(home, "lib", "*"), "-d", classes] + sorted(sources),
            what="javac",
        )
        tmp_jar = os.path.join(tmp, JOB_JAR_NAME)
        _run(["jar", "--create", "--file", tmp_jar, "--main-class", JOB_MAIN_CLASS, "-C", classes, "."],
             what="jar")
        os.replace(tmp_jar, jar)
    with open(hash_file, "w") as f:
        f.write(digest + "\n")
    return jar, True


def _jar_digest() -> str:
    try:
        with open(job_jar() + ".sha256") as f:
            return f.read().strip()[:12]
    except OSError:
        raise HarnessError(f"{job_jar()} is missing; run `flink_harness.py install` first")


# ---------------------------------------------------------------------- clusters


def _shipped_java_opts(home: str) -> str:
    """The env.java.opts.all value (the --add-opens/--add-exports list) of the shipped config.yaml."""
    try:
        with open(os.path.join(home, "conf", "config.yaml")) as f:
            lines = f.read().splitlines()
    except OSError:
        return _FALLBACK_JAVA_OPTS
    path = []
    for line in lines:
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        indent = len(line) - len(line.lstrip())
        m = re.match(r"\s*([^:]+):\s*(.*)$", line)
        if not m:
            continue
        level = indent // 2
        path = path[:level] + [m.group(1).strip()]
        if ".".join(path) in ("env.java.opts.all", "env.java.opts") and m.group(2).strip():
            return m.group(2).strip()
    return _FALLBACK_JAVA_OPTS


def _yaml_scalar(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    return json.dumps(str(v))  # a JSON string is a valid YAML double-quoted scalar


def _file_uri(path_or_uri: str) -> str:
    if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", path_or_uri):
        return path_or_uri
    return "file://" + os.path.abspath(path_or_uri)


def _write_conf(home: str, d: str, rest_port: int, rpc_port: int, savepoint_dir: str | None,
                slots: int, checkpoint_timeout: str | None, extra: dict) -> str:
    conf_dir = os.path.join(d, "conf")
    for sub in ("conf", "log", "pid", "tmp", "tmp/io", "tmp/web", "checkpoints", "savepoints"):
        os.makedirs(os.path.join(d, sub), exist_ok=True)
    for p in glob.glob(os.path.join(home, "conf", "log4j*.properties")):
        shutil.copy(p, conf_dir)
    with open(os.path.join(conf_dir, "workers"), "w") as f:
        f.write("localhost\n")
    with open(os.path.join(conf_dir, "masters"), "w") as f:
        f.write(f"127.0.0.1:{rest_port}\n")
    tmp = os.path.join(d, "tmp")
    java_opts = f"-Djava.io.tmpdir={tmp} {_shipped_java_opts(home)}"
    conf = {
        "env.java.opts.all": java_opts,
        "env.log.dir": os.path.join(d, "log"),
        "env.pid.dir": os.path.join(d, "pid"),
        "io.tmp.dirs": os.path.join(tmp, "io"),
        "web.tmpdir": os.path.join(tmp, "web"),
        "jobmanager.rpc.address": "127.0.0.1",
        "jobmanager.rpc.port": rpc_port,
        "jobmanager.bind-host": "127.0.0.1",
        "jobmanager.memory.process.size": "1024m",
        "jobmanager.execution.failover-strategy": "region",
        "taskmanager.bind-host": "127.0.0.1",
        "taskmanager.host": "127.0.0.1",
        "taskmanager.memory.process.size": "1536m",
        "taskmanager.numberOfTaskSlots": slots,
        "parallelism.default": 1,
        "rest.address": "127.0.0.1",
        "rest.bind-address": "127.0.0.1",
        "rest.port": rest_port,
        "blob.server.port": "0",
        "state.backend.type": "hashmap",
        "execution.checkpointing.dir": _file_uri(os.path.join(d, "checkpoints")),
        "execution.checkpointing.savepoint-dir": _file_uri(savepoint_dir or os.path.join(d, "savepoints")),
        # A failing job must not restart forever in a test.
        "restart-strategy.type": "none",
    }
    if checkpoint_timeout:
        conf["execution.checkpointing.timeout"] = checkpoint_timeout
    conf.update(extra or {})
    with open(os.path.join(conf_dir, "config.yaml"), "w") as f:
        f.write("# Written by scripts/flink_harness.py (flat keys are valid Flink config.yaml).\n")
        for k, v in conf.items():
            f.write(f"{k}: {_yaml_scalar(v)}\n")
    return conf_dir


def _read_pid_files(d: str, pattern: str = "*.pid") -> list[int]:
    pids = []
    for p in sorted(glob.glob(os.path.join(d, "pid", pattern))):
        try:
            with open(p) as f:
                pids += [int(x) for x in f.read().split() if x.strip().isdigit()]
        except OSError:
            pass
    return pids


def _log_tail(d: str, n: int = 12) -> str:
    """Error lines of the current logs (JobManager first), or the last lines when there are none."""
    files = sorted(
        glob.glob(os.path.join(d, "log", "*.log")) + glob.glob(os.path.join(d, "log", "*.out")),
        key=lambda p: ("standalonesession" not in p, p),
    )
    out, fallback = [], []
    for p in files:
        try:
            with open(p, errors="replace") as f:
                lines = f.read().splitlines()
        except OSError:
            continue
        errors = [l for l in lines if re.search(r"\bERROR\b|Caused by|Exception:", l)]
        if errors:
            out.append(f"--- {p}\n" + "\n".join(l[:400] for l in errors[-n:]))
        elif lines and not fallback:
            fallback.append(f"--- {p}\n" + "\n".join(l[:400] for l in lines[-n:]))
    return "\n".join(out or fallback)


def _state_path(d: str) -> str:
    return os.path.join(d, STATE_FILE)


def _load_state(d: str) -> dict | None:
    try:
        with open(_state_path(d)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _save_state(d: str, state: dict) -> None:
    tmp = _state_path(d) + ".tmp"
    with open(tmp, "w") as f:
        json.dump(state, f, indent=2)
    os.replace(tmp, _state_path(d))


def _cluster_ready(rest_url: str, taskmanagers: int):
    """(ready, info) — ready when REST answers and `taskmanagers` TaskManagers with free slots are registered."""
    try:
        status, body = _http("GET", rest_url + "/taskmanagers", timeout=3)
    except HarnessError:
        return False, "REST not answering"
    if status != 200 or not isinstance(body, dict):
        return False, f"GET /taskmanagers -> {status}"
    tms = body.get("taskmanagers") or []
    free = sum(int(tm.get("freeSlots", 0)) for tm in tms)
    if len(tms) >= taskmanagers and free > 0:
        return True, {"taskmanagers": len(tms), "free_slots": free}
    return False, f"{len(tms)} TaskManager(s) registered, {free} free slot(s)"


def start(dir: str, savepoint_dir: str | None = None, *, slots: int = 4, taskmanagers: int = 1,
          checkpoint_timeout: str | None = None, timeout: float = 90.0, extra_conf: dict | None = None) -> dict:
    """Start a standalone session cluster whose config, logs, pids and state all live under `dir`."""
    home = flink_home()
    d = os.path.abspath(dir)
    os.makedirs(d, exist_ok=True)
    old = _load_state(d)
    if old and any(_owned(pid, d) for pid in old.get("pids", [])):
        raise HarnessError(f"a cluster started from {d} is still running (pids {old['pids']}); stop it first")
    for stale in glob.glob(os.path.join(d, "pid", "*.pid")):
        os.remove(stale)

    last_err = None
    for attempt in range(3):
        rest_port, rpc_port = free_port(), free_port()
        while rpc_port == rest_port:
            rpc_port = free_port()
        conf_dir = _write_conf(home, d, rest_port, rpc_port, savepoint_dir, slots, checkpoint_timeout,
                               extra_conf or {})
        env = dict(os.environ)
        for k in ("FLINK_CONF_DIR", "FLINK_LOG_DIR", "FLINK_PID_DIR", "FLINK_ENV_JAVA_OPTS", "JVM_ARGS"):
            env.pop(k, None)
        env.update(FLINK_HOME=home, FLINK_CONF_DIR=conf_dir)
        rest_port = int((extra_conf or {}).get("rest.port", rest_port))
        rest_url = f"http://127.0.0.1:{rest_port}"
        t0 = time.monotonic()
        _run([os.path.join(home, "bin", "jobmanager.sh"), "start"], env=env, cwd=d, what="jobmanager.sh start")
        for _ in range(taskmanagers):
            _run([os.path.join(home, "bin", "taskmanager.sh"), "start"], env=env, cwd=d,
                 what="taskmanager.sh start")
        pids = _read_pid_files(d)
        state = {
            "rest_url": rest_url, "dir": d, "pids": pids, "rest_port": rest_port, "rpc_port": rpc_port,
            "conf_dir": conf_dir, "flink_home": home, "started_at": time.time(),
        }
        _save_state(d, state)
        deadline = t0 + timeout
        info = None
        jm_died = False
        while time.monotonic() < deadline:
            ready, info = _cluster_ready(rest_url, taskmanagers)
            if ready:
                state.update(ready_after_s=round(time.monotonic() - t0, 1), **info)
                state["pids"] = _read_pid_files(d)
                _save_state(d, state)
                return {"rest_url": rest_url, "dir": d, "pids": state["pids"], "rest_port": rest_port,
                        "rpc_port": rpc_port, "conf_dir": conf_dir, "taskmanagers": info["taskmanagers"],
                        "free_slots": info["free_slots"], "ready_after_s": state["ready_after_s"]}
            jm = _read_pid_files(d, "*standalonesession*.pid")
            if jm and not any(_pid_alive(p) for p in jm):
                jm_died = True
                break
            time.sleep(0.5)
        tail = _log_tail(d)
        stop(d)
        why = (f"the JobManager exited after {time.monotonic() - t0:.0f}s" if jm_died
               else f"not ready within {timeout:.0f}s ({info})")
        last_err = f"cluster in {d}: {why}; processes stopped. Logs in {os.path.join(d, 'log')}:\n{tail}"
        pinned = {"rest.port", "jobmanager.rpc.port"} & set(extra_conf or {})
        if jm_died and ("BindException" in tail or "Address already in use" in tail) \
                and not pinned and attempt < 2:
            _log(f"port clash on attempt {attempt + 1}, retrying with new ports")
            continue
        break
    raise HarnessError(last_err)


def _owned(pid: int, d: str) -> bool:
    """True when `pid` is alive and is a Flink JVM of the cluster in `d` (guards against PID reuse)."""
    if not _pid_alive(pid):
        return False
    cmd = _pid_cmdline(pid)
    return os.path.join(d, "conf") in cmd or os.path.join(d, "log") in cmd


def stop(dir: str, timeout: float = 30.0) -> dict:
    """SIGTERM the PIDs recorded by start(), SIGKILL whatever is left after `timeout`; remove pid files."""
    d = os.path.abspath(dir)
    state = _load_state(d) or {}
    recorded = list(dict.fromkeys(state.get("pids", []) + _read_pid_files(d)))
    targets = [p for p in recorded if _owned(p, d)]
    for pid in targets:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(_pid_alive(p) for p in targets):
        time.sleep(0.2)
    killed = []
    for pid in targets:
        if _pid_alive(pid) and _owned(pid, d):
            try:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            except ProcessLookupError:
                pass
    for pid in killed:
        end = time.monotonic() + 10
        while _pid_alive(pid) and time.monotonic() < end:
            time.sleep(0.1)
    for p in glob.glob(os.path.join(d, "pid", "*.pid")):
        os.remove(p)
    if state:
        state["pids"] = []
        state["stopped_at"] = time.time()
        _save_state(d, state)
    return {"stopped": targets, "killed": killed, "dir": d}


# -------------------------------------------------------------------------- jobs


def _upload_jar(rest: str) -> str:
    """Upload the job jar unless this cluster already has this build; returns the jar id."""
    base = _base(rest)
    name = f"savepointd-demo-job-{_jar_digest()}.jar"
    listing = _rest_ok("GET", base + "/jars", expect=(200,))
    for f in (listing or {}).get("files", []):
        if f.get("name") == name:
            return f["id"]
    with open(job_jar(), "rb") as f:
        content = f.read()
    boundary = "----savepointd" + uuid.uuid4().hex
    body = (
        f"--{boundary}\r\n"
        f'Content-Disposition: form-data; name="jarfile"; filename="{name}"\r\n'
        "Content-Type: application/x-java-archive\r\n\r\n"
    ).encode() + content + f"\r\n--{boundary}--\r\n".encode()
    resp = _rest_ok("POST", base + "/jars/upload", body,
                    headers={"Content-Type": f"multipart/form-data; boundary={boundary}"}, expect=(200,),
                    timeout=120)
    if not isinstance(resp, dict) or resp.get("status") != "success":
        raise HarnessError(f"jar upload failed: {resp}")
    return os.path.basename(resp["filename"])


def _job_exceptions(base: str, jid: str) -> str:
    try:
        _, exc = _http("GET", f"{base}/jobs/{jid}/exceptions", timeout=5)
        root = (exc or {}).get("root-exception") or ""
        if not root:
            hist = ((exc or {}).get("exceptionHistory") or {}).get("entries") or []
            root = hist[0].get("stacktrace", "") if hist else ""
        return "\n".join(root.splitlines()[:15])
    except Exception:  # best effort for an error message
        return ""


def wait_running(rest: str, job: str, timeout: float = 60.0) -> dict:
    """Wait until the job and every one of its vertices are RUNNING."""
    base = _base(rest)
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        status, body = _http("GET", f"{base}/jobs/{job}", timeout=5)
        if status == 200 and isinstance(body, dict):
            state = body.get("state")
            vertices = [v.get("status") for v in body.get("vertices", [])]
            last = f"job {state}, vertices {vertices}"
            if state == "RUNNING" and vertices and all(v == "RUNNING" for v in vertices):
                return {"job_id": job, "state": state, "vertices": len(vertices)}
            if state in ("FAILED", "CANCELED", "FINISHED", "SUSPENDED"):
                raise HarnessError(f"job {job} is {state}\n{_job_exceptions(base, job)}")
        else:
            last = f"GET /jobs/{job} -> {status}: {short_errors(body)}"
        time.sleep(0.25)
    raise HarnessError(f"job {job} not running within {timeout:.0f}s ({last})")


def submit(rest: str, name: str, rate: float = 100, keys: int = 100, snapshot_sleep_ms: int = 0,
           savepoint: str | None = None, *, checkpoint_timeout_ms: int | None = None,
           parallelism: int | None = None, allow_non_restored_state: bool = False,
           timeout: float = 60.0) -> dict:
    """Upload (once per cluster) and run the demo job; waits until all its vertices are RUNNING."""
    base = _base(rest)
    jar_id = _upload_jar(base)
    args = ["--name", name, "--rate", _num(rate), "--keys", str(int(keys)),
            "--snapshot-sleep-ms", str(int(snapshot_sleep_ms))]
    if checkpoint_timeout_ms:
        args += ["--checkpoint-timeout-ms", str(int(checkpoint_timeout_ms))]
    if parallelism:
        args += ["--parallelism", str(int(parallelism))]
    body = {"entryClass": JOB_MAIN_CLASS, "programArgsList": args}
    if savepoint:
        body["savepointPath"] = savepoint
        body["allowNonRestoredState"] = bool(allow_non_restored_state)
    t0 = time.monotonic()
    resp = _rest_ok("POST", f"{base}/jars/{urllib.parse.quote(jar_id)}/run", body, expect=(200,), timeout=120)
    jid = (resp or {}).get("jobid")
    if not jid:
        raise HarnessError(f"POST /jars/{jar_id}/run returned no jobid: {resp}")
    try:
        wait_running(base, jid, timeout=timeout)
    except HarnessError as e:
        # Do not leave a half-started job holding (or waiting for) slots.
        try:
            _http("PATCH", f"{base}/jobs/{jid}?mode=cancel", timeout=5)
        except HarnessError:
            pass
        raise HarnessError(f"{e}\n(job {jid} was cancelled; free slots: {_free_slots(base)})") from e
    return {"job_id": jid, "name": name, "jar_id": jar_id, "running_after_s": round(time.monotonic() - t0, 2)}


def _free_slots(base: str):
    try:
        _, b = _http("GET", base + "/taskmanagers", timeout=5)
        return sum(int(tm.get("freeSlots", 0)) for tm in (b or {}).get("taskmanagers", []))
    except Exception:  # best effort for an error message
        return "unknown"


def _num(x) -> str:
    f = float(x)
    return str(int(f)) if f.is_integer() else str(f)


def cancel(rest: str, job: str, timeout: float = 60.0) -> dict:
    """Cancel a job (PATCH /jobs/{jid}?mode=cancel) and wait until it is CANCELED (or otherwise terminal)."""
    base = _base(rest)
    status, body = _http("PATCH", f"{base}/jobs/{job}?mode=cancel")
    if status not in (200, 202):
        raise HarnessError(f"PATCH /jobs/{job}?mode=cancel -> HTTP {status}: {short_errors(body)}")
    deadline = time.monotonic() + timeout
    state = None
    while time.monotonic() < deadline:
        st, b = _http("GET", f"{base}/jobs/{job}", timeout=5)
        state = (b or {}).get("state") if st == 200 and isinstance(b, dict) else None
        if state in ("CANCELED", "FAILED", "FINISHED"):
            return {"job_id": job, "state": state}
        time.sleep(0.25)
    raise HarnessError(f"job {job} not canceled within {timeout:.0f}s (state {state})")


# ----------------------------------------------------------------------------- CLI


def _main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="flink_harness.py", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)

    s = sub.add_parser("install", help="create the Flink venv and build the job jar (idempotent)")
    s.add_argument("--rebuild", action="store_true", help="rebuild the job jar even if unchanged")

    s = sub.add_parser("start", help="start a standalone session cluster under DIR")
    s.add_argument("--dir", required=True)
    s.add_argument("--savepoint-dir", help="default savepoint target (URI or path); default DIR/savepoints")
    s.add_argument("--slots", type=int, default=4, help="task slots per TaskManager (default 4)")
    s.add_argument("--taskmanagers", type=int, default=1, help="number of TaskManagers (default 1)")
    s.add_argument("--checkpoint-timeout", help="execution.checkpointing.timeout, e.g. 3s (bounds savepoints too)")
    s.add_argument("--conf", action="append", default=[], metavar="KEY=VALUE", help="extra config.yaml entry")
    s.add_argument("--timeout", type=float, default=90.0)

    s = sub.add_parser("submit", help="upload the job jar and run one job; wait until RUNNING")
    s.add_argument("--rest", required=True)
    s.add_argument("--name", required=True)
    s.add_argument("--rate", type=float, default=100)
    s.add_argument("--keys", type=int, default=100)
    s.add_argument("--snapshot-sleep-ms", type=int, default=0)
    s.add_argument("--checkpoint-timeout-ms", type=int)
    s.add_argument("--parallelism", type=int)
    s.add_argument("--savepoint", help="restore from this savepoint path")
    s.add_argument("--allow-non-restored-state", action="store_true")
    s.add_argument("--timeout", type=float, default=60.0)

    s = sub.add_parser("cancel", help="cancel a job and wait until CANCELED")
    s.add_argument("--rest", required=True)
    s.add_argument("--job", required=True)
    s.add_argument("--timeout", type=float, default=60.0)

    s = sub.add_parser("stop", help="stop the processes recorded by start")
    s.add_argument("--dir", required=True)
    s.add_argument("--timeout", type=float, default=30.0)

    a = p.parse_args(argv)
    try:
        if a.cmd == "install":
            out = install(rebuild=a.rebuild)
        elif a.cmd == "start":
            extra = {}
            for kv in a.conf:
                if "=" not in kv:
                    raise HarnessError(f"--conf expects KEY=VALUE, got {kv!r}")
                k, v = kv.split("=", 1)
                extra[k.strip()] = v.strip()
            out = start(a.dir, a.savepoint_dir, slots=a.slots, taskmanagers=a.taskmanagers,
                        checkpoint_timeout=a.checkpoint_timeout, timeout=a.timeout, extra_conf=extra)
        elif a.cmd == "submit":
            out = submit(a.rest, a.name, a.rate, a.keys, a.snapshot_sleep_ms, a.savepoint,
                         checkpoint_timeout_ms=a.checkpoint_timeout_ms, parallelism=a.parallelism,
                         allow_non_restored_state=a.allow_non_restored_state, timeout=a.timeout)
        elif a.cmd == "cancel":
            out = cancel(a.rest, a.job, timeout=a.timeout)
        elif a.cmd == "stop":
            out = stop(a.dir, timeout=a.timeout)
        else:  # pragma: no cover
            raise HarnessError(f"unknown command {a.cmd}")
    except HarnessError as e:
        print(f"flink_harness.py {a.cmd}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"flink_harness.py {a.cmd}: interrupted", file=sys.stderr)
        return 130
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(_main())
