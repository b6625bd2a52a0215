"""app=upstream: P3 Protocol's own, unmodified server (../shared/upstream) as the lab's app (docs/lab.md).

The source is unpacked into $P3LAB_DIR/upstream/P3-Protocol; its npm dependencies are installed once per tarball and
BullMQ variant into a cache ($P3LAB_UPSTREAM_CACHE, default <repo>/.state/upstream-cache/<sha256[:12]>/<variant>/)
and linked in (node_modules -> the cache). The server runs under the lab's supervisord as program `p3upstream`,
against the lab's PostgreSQL (database `p3upstream`), a standalone Redis of its own (base+7) and anvil.
"""
import fcntl
import hashlib
import json
import os
import shutil
import signal
import time

from .common import (ANCHOR_KEY, ANCHOR_WALLET, OWNER_VAR, PG_APP_PASSWORD, PG_APP_USER, REDIS_PASSWORD, REPO,
                     LabError, http, kill, live_pid, log, pid_alive, port_listening, run, wait_until)

PROGRAM = "p3upstream"
DB = "p3upstream"
SRC_DIRNAME = "P3-Protocol"
VARIANTS = ("working", "lockfile")
DEFAULT_VARIANT = "working"
BULLMQ_WORKING = "5.12.11"  # the last BullMQ that accepts ':' in queue names (5.12.12 rejects them)
BULLMQ_LOCKFILE = "5.65.0"  # what P3's package-lock.json pins: the anchor worker never starts
QUEUE = "anchor-batch:us"   # server/queues/anchorQueue.ts: `anchor-batch:${REGION}`, REGION default us
BULL_PREFIX = "bull"        # BullMQ's default prefix; P3 sets none
# JWT_SECRET of the lab's P3 (>= 32 characters); requireWalletToken verifies SDK wallet tokens with it.
JWT_SECRET = "p3lab-upstream-jwt-secret-0123456789abcdef"
NPM_ENV = {"PUPPETEER_SKIP_DOWNLOAD": "1", "PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD": "1", "npm_config_loglevel": "error"}
NPM_INSTALL = ["npm", "install", "--ignore-scripts", "--no-audit", "--no-fund", "--no-save"]
READY = ".p3lab-ready"


# ---------------------------------------------------------------- the source and its npm dependencies


def tarball():
    path = os.environ.get("P3LAB_UPSTREAM_TARBALL") or os.path.join(
        os.path.dirname(REPO), "shared", "upstream", "p3-protocol-baa7cd7.tar.gz")
    if not os.path.isfile(path):
        raise LabError("P3's source tarball not found at %s (set P3LAB_UPSTREAM_TARBALL)" % path)
    return path


def tarball_key(path=None):
    path = path or tarball()
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:12]


def cache_root():
    return os.path.abspath(os.environ.get("P3LAB_UPSTREAM_CACHE") or os.path.join(REPO, ".state", "upstream-cache"))


def node_binary():
    node = os.environ.get("P3LAB_NODE") or shutil.which("node")
    if not node:
        raise LabError("missing binary: node (Node 20: apt-get install nodejs npm, or set P3LAB_NODE)")
    return node


def _bullmq_version(node_modules):
    try:
        with open(os.path.join(node_modules, "bullmq", "package.json")) as fh:
            return json.load(fh).get("version")
    except (OSError, ValueError):
        return None


def _untar(dest, members=None):
    os.makedirs(dest, exist_ok=True)
    cmd = ["tar", "-xzf", tarball(), "-C", dest] + (members or [])
    run(cmd, timeout=300, what="unpacking %s" % tarball())


class _CacheLock(object):
    def __init__(self, root):
        os.makedirs(root, exist_ok=True)
        self.path = os.path.join(root, ".lock")
        self.fh = None

    def __enter__(self):
        self.fh = open(self.path, "w")
        try:
            fcntl.flock(self.fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            log("waiting for another p3lab preparing P3's npm cache in %s" % os.path.dirname(self.path))
            fcntl.flock(self.fh, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        fcntl.flock(self.fh, fcntl.LOCK_UN)
        self.fh.close()


def _npm(args, cwd, what, timeout=1800):
    env = dict(os.environ)
    env.update(NPM_ENV)
    rc, out = run(args, timeout=timeout, env=env, cwd=cwd, check=False, what=what)
    if rc != 0:
        last = [line for line in out.strip().splitlines() if line.strip()]
        raise LabError("%s failed (rc %d): %s" % (what, rc, last[-1] if last else "no output"))


def cached_node_modules(variant, key=None):
    return os.path.join(cache_root(), key or tarball_key(), variant, "node_modules")


def prepare(variant=DEFAULT_VARIANT):
    """The installed node_modules of the variant (installing it the first time). Returns (path, seconds spent)."""
    if variant not in VARIANTS:
        raise LabError("unknown BullMQ variant %r (one of %s)" % (variant, ", ".join(VARIANTS)))
    key = tarball_key()
    root = os.path.join(cache_root(), key)
    t0 = time.monotonic()
    with _CacheLock(root):
        nm = _prepare_locked(root, key, variant)
    return nm, round(time.monotonic() - t0, 1)


def _prepare_locked(root, key, variant):
    nm = os.path.join(root, variant, "node_modules")
    if os.path.exists(os.path.join(nm, READY)):
        return nm
    if variant == "working":
        base = _prepare_locked(root, key, "lockfile")
    build = os.path.join(root, "build-" + variant)
    shutil.rmtree(build, ignore_errors=True)
    src = os.path.join(build, SRC_DIRNAME)
    t0 = time.monotonic()
    if variant == "lockfile":
        log("installing P3's npm dependencies into %s (cold cache: minutes, about 2.5 GB)" % nm)
        _untar(build)
        _npm(NPM_INSTALL, src, "npm install in %s" % src)
    else:
        log("installing bullmq@%s over a hard-linked copy of the lockfile's node_modules into %s" % (BULLMQ_WORKING, nm))
        _untar(build, ["%s/package.json" % SRC_DIRNAME, "%s/package-lock.json" % SRC_DIRNAME])
        run(["cp", "-al", base, os.path.join(src, "node_modules")], timeout=600, what="cp -al node_modules")
        # npm rewrites its hidden lockfile in place: break that one hard link so the base copy stays untouched
        hidden = os.path.join(src, "node_modules", ".package-lock.json")
        if os.path.exists(hidden):
            tmp = hidden + ".copy"
            shutil.copyfile(hidden, tmp)
            os.replace(tmp, hidden)
        _npm(NPM_INSTALL + ["bullmq@%s" % BULLMQ_WORKING], src, "npm install bullmq@%s" % BULLMQ_WORKING)
        got = _bullmq_version(os.path.join(src, "node_modules"))
        if got != BULLMQ_WORKING:
            raise LabError("bullmq in the working variant is %s, want %s" % (got, BULLMQ_WORKING))
        if _bullmq_version(base) != BULLMQ_LOCKFILE:
            raise LabError("the lockfile variant's bullmq changed to %s; delete %s and run again"
                           % (_bullmq_version(base), root))
    if not os.path.exists(os.path.join(src, "node_modules", ".bin", "tsx")):
        raise LabError("npm install left no node_modules/.bin/tsx in %s" % src)
    os.makedirs(os.path.dirname(nm), exist_ok=True)
    shutil.rmtree(nm, ignore_errors=True)
    os.rename(os.path.join(src, "node_modules"), nm)
    with open(os.path.join(nm, READY), "w") as fh:
        json.dump({"tarball_key": key, "variant": variant, "bullmq": _bullmq_version(nm),
                   "seconds": round(time.monotonic() - t0, 1)}, fh)
    shutil.rmtree(build, ignore_errors=True)
    return nm


# ---------------------------------------------------------------- the lab's copy


def src_dir(lab):
    return os.path.join(lab.upstream_dir, SRC_DIRNAME)


def unpack(lab):
    """Unpack the source (once per tarball) into $P3LAB_DIR/upstream/P3-Protocol; LICENSE and NOTICE stay with it."""
    key = tarball_key()
    marker = os.path.join(lab.upstream_dir, "source.json")
    info = None
    try:
        with open(marker) as fh:
            info = json.load(fh)
    except (OSError, ValueError):
        pass
    dest = src_dir(lab)
    if info and info.get("tarball_key") == key and os.path.isfile(os.path.join(dest, "server", "index.ts")):
        return False
    if os.path.islink(os.path.join(dest, "node_modules")):
        os.unlink(os.path.join(dest, "node_modules"))
    shutil.rmtree(dest, ignore_errors=True)
    _untar(lab.upstream_dir)
    for f in ("LICENSE", "NOTICE"):
        if not os.path.isfile(os.path.join(dest, f)):
            raise LabError("%s has no %s" % (tarball(), f))
    with open(marker, "w") as fh:
        json.dump({"tarball": tarball(), "tarball_key": key}, fh)
    return True


def link_node_modules(lab, variant):
    """Point P3-Protocol/node_modules at the cached variant. Returns True when the link changed."""
    nm, _ = prepare(variant)
    link = os.path.join(src_dir(lab), "node_modules")
    if os.path.islink(link) and os.readlink(link) == nm:
        return False
    if os.path.lexists(link):
        if os.path.islink(link):
            os.unlink(link)
        else:
            shutil.rmtree(link)
    os.symlink(nm, link)
    return True


def current_variant(lab):
    link = os.path.join(src_dir(lab), "node_modules")
    if not os.path.islink(link):
        return None
    v = _bullmq_version(link)
    return {BULLMQ_WORKING: "working", BULLMQ_LOCKFILE: "lockfile"}.get(v, v)


# ---------------------------------------------------------------- the database


def db_url(lab, admin=False):
    from .common import PG_ADMIN_PASSWORD, PG_ADMIN_USER

    user, pw = (PG_ADMIN_USER, PG_ADMIN_PASSWORD) if admin else (PG_APP_USER, PG_APP_PASSWORD)
    return "postgresql://%s:%s@127.0.0.1:%d/%s" % (user, pw, lab.pg_port, DB)


def connect(lab, admin=True, timeout=2, application_name="p3lab"):
    """psycopg2 connection to P3's database (admin: the superuser p3admin, which gets in through the reserved
    slots; else P3's own role p3app)."""
    import psycopg2

    from .common import PG_ADMIN_PASSWORD, PG_ADMIN_USER

    user, pw = (PG_ADMIN_USER, PG_ADMIN_PASSWORD) if admin else (PG_APP_USER, PG_APP_PASSWORD)
    return psycopg2.connect(host="127.0.0.1", port=lab.pg_port, user=user, password=pw, dbname=DB,
                            connect_timeout=timeout, application_name=application_name)


def schema(lab):
    """Database `p3upstream` (owner p3app) and P3's schema: drizzle-kit push, then server/migrate.ts (the README's
    verified order; migrate.ts alone fails on an empty database). Done once: a COMMENT on the database records it."""
    from . import pg

    key = tarball_key()
    mark = "p3lab schema %s" % key
    conn = pg.connect_local(lab)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DB,))
        if not cur.fetchone():
            cur.execute("CREATE DATABASE %s OWNER %s" % (DB, PG_APP_USER))
        cur.execute("SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = %s", (DB,))
        done = cur.fetchone()[0] == mark
    conn.close()
    if done:
        return False
    src = src_dir(lab)
    env = dict(os.environ, DATABASE_URL=db_url(lab), NODE_ENV="development")
    env[OWNER_VAR] = lab.dir
    nmb = os.path.join(src, "node_modules", ".bin")
    t0 = time.monotonic()
    rc, out = run([os.path.join(nmb, "drizzle-kit"), "push", "--force"], timeout=300, env=env, cwd=src, check=False,
                  what="drizzle-kit push")
    if rc != 0:
        raise LabError("drizzle-kit push failed (rc %d): %s" % (rc, _last(out)))
    rc, out = run([os.path.join(nmb, "tsx"), "server/migrate.ts"], timeout=300, env=env, cwd=src, check=False,
                  what="server/migrate.ts")
    if rc != 0:
        raise LabError("server/migrate.ts failed (rc %d): %s" % (rc, _last(out)))
    conn = pg.connect_local(lab)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("COMMENT ON DATABASE %s IS %%s" % DB, (mark,))
    conn.close()
    log("P3's schema created in database %s in %.1f s" % (DB, time.monotonic() - t0))
    return True


def _last(text):
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else "no output"


# ---------------------------------------------------------------- P3's Redis (standalone)


def redis_dir(lab):
    return os.path.join(lab.dir, "redis", "p3redis")


def redis_pidfile(lab):
    return os.path.join(redis_dir(lab), "redis.pid")


def redis_url(lab):
    return "redis://:%s@127.0.0.1:%d" % (REDIS_PASSWORD, lab.p3redis_port)


def redis_conf(lab):
    d = redis_dir(lab)
    return "\n".join([
        "port %d" % lab.p3redis_port,
        "bind 127.0.0.1",
        "protected-mode no",
        "daemonize yes",
        "pidfile %s" % redis_pidfile(lab),
        "logfile %s" % os.path.join(d, "redis.log"),
        "dir %s" % d,
        "requirepass %s" % REDIS_PASSWORD,
        'save ""',
        "appendonly no",
        "enable-debug-command local",
        "",
    ])


def redis_client(lab, timeout=1.0, decode=True):
    """redis-py client of P3's Redis (the lab's client settings: no retries, bounded)."""
    from .rediscluster import client

    return client(lab.p3redis_port, decode=decode, timeout=timeout)


def redis_up(lab, timeout=0.5):
    try:
        return bool(redis_client(lab, timeout).ping())
    except Exception:  # noqa: BLE001
        return False


def start_redis(lab):
    from .rediscluster import server_binary

    if live_pid(redis_pidfile(lab)) and redis_up(lab):
        return False
    if port_listening(lab.p3redis_port) and not live_pid(redis_pidfile(lab)):
        raise LabError("port %d is in use by another process (needed by P3's redis)" % lab.p3redis_port)
    d = redis_dir(lab)
    os.makedirs(d, exist_ok=True)
    conf = os.path.join(d, "redis.conf")
    with open(conf, "w") as fh:
        fh.write(redis_conf(lab))
    run([server_binary(), conf], timeout=15, env=lab.child_env(), what="redis-server (P3's)")
    wait_until(lambda: redis_up(lab), 10, 0.05, what="P3's redis on %d (see %s/redis.log)" % (lab.p3redis_port, d))
    return True


def stop_redis(lab):
    pid = live_pid(redis_pidfile(lab))
    if redis_up(lab):
        try:
            redis_client(lab, 1).execute_command("SHUTDOWN", "NOSAVE")
        except Exception:  # noqa: BLE001 - the connection drops when it works
            pass
    if pid:
        if not wait_until(lambda: not pid_alive(pid), 3, 0.05):
            kill(pid, signal.SIGKILL)


# ---------------------------------------------------------------- P3's API


def wallet_token(wallet=ANCHOR_WALLET, ttl=3600):
    """An SDK wallet token as P3's requireWalletToken accepts it: a HS256 JWT over {wallet, roles:["user"]} signed
    with JWT_SECRET (README of ../shared/upstream)."""
    import base64
    import hmac

    def b64(raw):
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    now = int(time.time())
    head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}, separators=(",", ":")).encode())
    body = b64(json.dumps({"wallet": wallet.lower(), "roles": ["user"], "iat": now, "exp": now + ttl},
                          separators=(",", ":")).encode())
    sig = hmac.new(JWT_SECRET.encode(), ("%s.%s" % (head, body)).encode(), hashlib.sha256).digest()
    return "%s.%s.%s" % (head, body, b64(sig))


def api(lab, method, path, body=None, token=None, timeout=10.0):
    """(status, parsed JSON or text) of a request to P3 (status None when no answer)."""
    return http(method, lab.app_url + path, body, timeout=timeout,
                headers={"Authorization": "Bearer " + token} if token else None)


def submit_batch(lab, events, timeout=10.0):
    """POST /api/sdk/anchor/batch (BullMQ queue anchor-batch:us) with a wallet token: (status, body)."""
    return api(lab, "POST", "/api/sdk/anchor/batch", {"events": events}, token=wallet_token(), timeout=timeout)


def anchor_checkpoint(lab, kind="lab", timeout=30.0):
    """POST /api/sdk/anchor-checkpoint: P3 anchors on chain with PRIVATE_KEY (Base Sepolia = the lab's anvil) and
    falls back to an anchor_outbox row (pending) when the chain call fails."""
    return api(lab, "POST", "/api/sdk/anchor-checkpoint",
               {"walletAddress": ANCHOR_WALLET, "sdkVersion": "p3lab", "type": kind}, timeout=timeout)


def bullmq(lab, op, count=0, timeout=60):
    """Run one BullMQ operation on P3's queue with P3's own bullmq (its node_modules), from P3's directory:
    `add` (count jobs shaped exactly like POST /api/sdk/anchor/batch's: name anchor-batch, jobId batch-<ms>-<rand>,
    data {events:[{appId,event,data:{wallet},ts}],batchId,wallet,createdAt}, P3's default job options), `pause`,
    `resume`, `retry-failed` (Queue.retryJobs), `counts`. Prints and returns one JSON object."""
    js = r"""
const { Queue } = require('bullmq');
const [op, count, url, wallet] = process.argv.slice(1);
const u = new URL(url);
const q = new Queue('%(queue)s', { connection: { host: u.hostname, port: Number(u.port),
  password: decodeURIComponent(u.password), maxRetriesPerRequest: 1, connectTimeout: 3000 },
  defaultJobOptions: { attempts: 5, backoff: { type: 'exponential', delay: 800 },
  removeOnComplete: { count: 1000 }, removeOnFail: { count: 5000 } } });
(async () => {
  const out = { op };
  if (op === 'add') {
    const jobs = [];
    const now = Date.now();
    for (let i = 0; i < Number(count); i++) {
      const batchId = `batch-${now}-${i}-${Math.random().toString(36).slice(2, 10)}`;
      jobs.push({ name: 'anchor-batch', data: { events: [{ appId: 'p3-lab', event: `backlog-${i}`,
        data: { wallet }, ts: now }], batchId, wallet, createdAt: now }, opts: { jobId: batchId } });
    }
    out.ids = (await q.addBulk(jobs)).map((j) => j.id);
  } else if (op === 'pause') { await q.pause(); }
  else if (op === 'resume') { await q.resume(); }
  else if (op === 'retry-failed') { out.failed = await q.getFailedCount(); await q.retryJobs({ state: 'failed' }); }
  out.counts = await q.getJobCounts('wait', 'paused', 'active', 'failed', 'completed', 'delayed');
  out.paused = await q.isPaused();
  await q.close();
  console.log(JSON.stringify(out));
})().catch((e) => { console.log(JSON.stringify({ op, error: String(e && e.message || e) })); process.exit(1); });
""" % {"queue": QUEUE}
    rc, out = run([node_binary(), "-e", js, op, str(count), redis_url(lab), ANCHOR_WALLET.lower()], timeout=timeout,
                  env=lab.child_env(), cwd=src_dir(lab), check=False, what="node (bullmq %s)" % op)
    lines = [line for line in out.strip().splitlines() if line.startswith("{")]
    try:
        res = json.loads(lines[-1])
    except (IndexError, ValueError):
        raise LabError("bullmq %s on P3's queue failed (rc %d): %s" % (op, rc, _last(out)))
    if rc != 0 or res.get("error"):
        raise LabError("bullmq %s on P3's queue failed: %s" % (op, res.get("error") or _last(out)))
    return res


# ---------------------------------------------------------------- the anchor registry on anvil

# P3 hard-codes its AnchorRegistry addresses (server/services/blockchain.ts): Base Sepolia (used outside production,
# e.g. POST /api/sdk/anchor-checkpoint) and Base mainnet. On anvil nothing lives there, so a tx "succeeds" without the
# DataAnchored event and P3 throws. The lab puts a minimal registry at both addresses (anvil_setCode): any call
# increments a counter (slot 0), emits DataAnchored(uint256 indexed anchorId, bytes32 indexed contentHash = calldata
# word 1, address indexed anchorer = caller, uint256 timestamp) and returns the anchorId - what P3's ABI expects.
REGISTRY_ADDRESSES = ("0xD0b8f9f6c9055574D835355B466C418b7558aCE0", "0x2539823790424051Eb03eBea1EA9bc40A475A34D")
DATA_ANCHORED_TOPIC = "fa1bf81618876a17a5062aaaa107f8d5265028b4c2bb7f84a64a9fd49ccc3bd7"  # keccak of the signature
REGISTRY_CODE = "0x" + "".join([
    "600054", "600101", "80600055",  # id = sload(0) + 1; sstore(0, id)
    "42600052",                      # mstore(0, timestamp)
    "33", "600435", "82",            # topics: caller, calldataload(4), id
    "7f" + DATA_ANCHORED_TOPIC,      # topic0
    "60206000a4",                    # log4(0, 32, ...)
    "600052", "60206000f3",          # mstore(0, id); return(0, 32)
])


def deploy_registry(lab):
    """anvil_setCode of the lab registry at P3's registry addresses (anvil forgets it on restart). Returns True when
    it had to be set."""
    from .common import rpc

    changed = False
    for addr in REGISTRY_ADDRESSES:
        if rpc(lab.rpc_url, "eth_getCode", [addr, "latest"]).lower() != REGISTRY_CODE.lower():
            rpc(lab.rpc_url, "anvil_setCode", [addr, REGISTRY_CODE])
            changed = True
    return changed


# ---------------------------------------------------------------- the program


def env(lab):
    """The environment of P3's server (development; .env.example's names, lab values)."""
    return {
        "NODE_ENV": "development",
        "PORT": str(lab.app_port),
        "DATABASE_URL": db_url(lab),
        "REDIS_URL": redis_url(lab),
        "REDIS_HOST": "127.0.0.1",
        "FLAG_REDIS_CLUSTER": "0",
        "JWT_SECRET": JWT_SECRET,
        "IP_SALT": "p3lab-ip-salt",
        "TELEMETRY_SALT": "p3lab-telemetry-salt",
        "LOG_LEVEL": "info",
        "BASE_RPC_URL": lab.rpc_url,
        "BASE_SEPOLIA_RPC_URL": lab.rpc_url,
        "PRIVATE_KEY": ANCHOR_KEY,
        "ANCHOR_WORKER_CONCURRENCY": "64",
        "PUPPETEER_SKIP_DOWNLOAD": "1",
        "HOME": os.environ.get("HOME", "/root"),
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        OWNER_VAR: lab.dir,
    }


def loopback_preload():
    return os.path.join(REPO, "lab", "upstream", "loopback.cjs")


def command():
    return "%s --require %s --import tsx server/index.ts" % (node_binary(), loopback_preload())


def supervisor_section(lab, env_line):
    from .supervisor import program_section

    return program_section(PROGRAM, command(), src_dir(lab), env_line, lab.app_log, stopwaitsecs=10)


def health(lab, timeout=3.0):
    """GET /api/system/health: (status code, body) - the only P3 endpoint that runs SELECT 1."""
    return http("GET", lab.app_url + "/api/system/health", timeout=timeout)


def db_ok(body):
    return isinstance(body, dict) and ((body.get("database") or {}).get("status") in ("healthy", "connected", "ok"))


def concurrent_health(lab, n=8, timeout=8.0):
    """n concurrent GET /api/system/health (each runs SELECT 1 on P3's pool): the answers that were not 200 with a
    healthy database. One request may still get an idle pooled connection while the server refuses new ones
    (db-exhaustion); n at once need the pool to grow, as P3 under users does."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=n) as ex:
        res = list(ex.map(lambda _: health(lab, timeout=timeout), range(n)))
    return [(c, b) for c, b in res if not (c == 200 and db_ok(b))]


# How long P3 may take from its start until /api/system/health answers: in development (how the lab runs it) the
# server sets up Vite's dev server before it listens - 2-4 s on an idle machine, 41-62 s measured (supervisor's spawn
# to P3's "Server started successfully") in a local CI at load 10-12 on this 2-core machine kind, more in CI. The
# lab waits this long and its inventory gives the restart health gate (p3_restart_timeout) the same.
START_TIMEOUT = 180


def wait_ready(lab, timeout):
    """Until /api/system/health answers 200 with a healthy database (the server exits when it cannot start)."""
    from . import supervisor

    end = time.monotonic() + timeout
    last = (None, None)
    while time.monotonic() < end:
        inf = supervisor.info(lab, PROGRAM)
        if inf and inf.get("statename") in ("EXITED", "FATAL", "BACKOFF", "STOPPED"):
            raise LabError("%s is %s (%s); see %s" % (PROGRAM, inf["statename"], inf.get("description", ""),
                                                      lab.app_log))
        last = health(lab, timeout=3)
        if last[0] == 200 and db_ok(last[1]):
            return last[1]
        time.sleep(0.3)
    raise LabError("P3 is not healthy at %s/api/system/health: %s %s (see %s)"
                   % (lab.app_url, last[0], str(last[1])[:200], lab.app_log))
