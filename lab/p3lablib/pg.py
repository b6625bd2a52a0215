"""PostgreSQL 15: initdb as the postgres user, start/stop with pg_ctl, roles, database and tables."""
import os
import pwd
import shutil
import signal

import psycopg2

from .common import (LEAK_APP_NAME, PG_ADMIN_PASSWORD, PG_ADMIN_USER, PG_APP_PASSWORD, PG_APP_USER, PG_DB,
                     LabError, kill, live_pid, pid_alive, port_listening, run, wait_until)

TABLES_SQL = """
CREATE TABLE IF NOT EXISTS anchor_outbox (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    type varchar(50) NOT NULL,
    app_id varchar(100) NOT NULL,
    digest varchar(128) NOT NULL,
    payload jsonb NOT NULL,
    status varchar(20) NOT NULL DEFAULT 'pending',
    retry_count integer NOT NULL DEFAULT 0,
    last_error text,
    heartbeat_at timestamp,
    created_at timestamp NOT NULL DEFAULT now(),
    updated_at timestamp NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS idx_anchor_outbox_status ON anchor_outbox (status);
CREATE INDEX IF NOT EXISTS idx_anchor_outbox_heartbeat ON anchor_outbox (heartbeat_at) WHERE status = 'processing';
CREATE TABLE IF NOT EXISTS anchor_receipts (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    idempotency_key varchar(255) UNIQUE NOT NULL,
    outbox_id uuid REFERENCES anchor_outbox (id),
    tx_hash varchar(100),
    block_number integer,
    status varchar(20) NOT NULL DEFAULT 'submitted',
    confirmed_at timestamp,
    created_at timestamp NOT NULL DEFAULT now()
);
"""

HBA = """# p3lab
local all postgres trust
host all all 127.0.0.1/32 scram-sha-256
"""

EXTRA_CONF = """
# p3lab: a throwaway lab database
fsync = off
synchronous_commit = off
full_page_writes = off
shared_buffers = 32MB
password_encryption = scram-sha-256
log_line_prefix = '%m [%p] %q%u@%d/%a '
log_connections = off
"""


def pg_bin(name):
    cands = []
    if os.environ.get("P3LAB_PG_BIN"):
        cands.append(os.path.join(os.environ["P3LAB_PG_BIN"], name))
    cands.append(os.path.join("/usr/lib/postgresql/15/bin", name))
    for c in cands:
        if os.access(c, os.X_OK):
            return c
    found = shutil.which(name)
    if found:
        return found
    raise LabError("missing binary: %s (PostgreSQL 15: apt-get install postgresql-15, or set P3LAB_PG_BIN)" % name)


def as_postgres(cmd):
    if os.geteuid() != 0:
        return cmd
    if not shutil.which("runuser"):
        raise LabError("missing binary: runuser (util-linux)")
    return ["runuser", "-u", "postgres", "--"] + cmd


def _pg_user():
    if os.geteuid() != 0:
        return os.geteuid(), os.getegid()
    try:
        pw = pwd.getpwnam("postgres")
    except KeyError:
        raise LabError("the system user `postgres` does not exist (apt-get install postgresql-15)")
    return pw.pw_uid, pw.pw_gid


def check_binaries():
    pg_bin("initdb")
    pg_bin("pg_ctl")
    _pg_user()


def postmaster_pid(lab):
    return live_pid(os.path.join(lab.pg_data, "postmaster.pid"))


def connect_local(lab, dbname="postgres", timeout=3):
    """As the postgres superuser over the unix socket (trust)."""
    return psycopg2.connect(host=lab.pg_sock, port=lab.pg_port, user="postgres", dbname=dbname,
                            connect_timeout=timeout, application_name="p3lab")


def connect_admin(lab, timeout=2):
    return psycopg2.connect(host="127.0.0.1", port=lab.pg_port, user=PG_ADMIN_USER, password=PG_ADMIN_PASSWORD,
                            dbname=PG_DB, connect_timeout=timeout, application_name="p3lab")


def accepting(lab):
    try:
        connect_local(lab, timeout=2).close()
        return True
    except Exception:  # noqa: BLE001
        return False


def _check_traversable(path, uid):
    """The postgres user must reach the data dir through every parent."""
    p = os.path.dirname(os.path.abspath(path))
    while p and p != "/":
        st = os.stat(p)
        if st.st_uid != uid and not (st.st_mode & 0o001):
            raise LabError("PostgreSQL runs as user postgres, which cannot enter %s (mode %o); "
                           "use a P3LAB_DIR outside it or chmod o+x it" % (p, st.st_mode & 0o777))
        p = os.path.dirname(p)


def init(lab):
    if os.path.exists(os.path.join(lab.pg_data, "PG_VERSION")):
        return False
    uid, gid = _pg_user()
    os.makedirs(lab.pg_dir, exist_ok=True)
    os.chmod(lab.pg_dir, 0o755)
    _check_traversable(lab.pg_data, uid)
    for d in (lab.pg_data, lab.pg_sock, os.path.dirname(lab.pg_log)):
        os.makedirs(d, exist_ok=True)
        os.chown(d, uid, gid)
    os.chmod(lab.pg_data, 0o700)
    run(as_postgres([pg_bin("initdb"), "-D", lab.pg_data, "--auth=trust", "-E", "UTF8", "--no-locale",
                     "--no-sync", "-U", "postgres"]), timeout=60, what="initdb")
    with open(os.path.join(lab.pg_data, "pg_hba.conf"), "w") as fh:
        fh.write(HBA)
    with open(os.path.join(lab.pg_data, "postgresql.conf"), "a") as fh:
        fh.write(EXTRA_CONF)
    return True


def start(lab):
    """Start the server unless it runs. Returns True when it was started."""
    pid = postmaster_pid(lab)
    if pid and accepting(lab):
        return False
    if not pid and port_listening(lab.pg_port):
        raise LabError("port %d is in use by another process (needed by postgres)" % lab.pg_port)
    init(lab)
    opts = ("-p %d -k %s -c listen_addresses=127.0.0.1 -c max_connections=%d -c superuser_reserved_connections=3"
            % (lab.pg_port, lab.pg_sock, lab.pg_max_connections))
    if not pid:
        run(as_postgres([pg_bin("pg_ctl"), "-D", lab.pg_data, "-l", lab.pg_log, "-w", "-t", "30", "-o", opts, "start"]),
            timeout=40, env=lab.child_env(), what="pg_ctl start")
    wait_until(lambda: accepting(lab), 15, 0.1, what="postgres to accept connections (see %s)" % lab.pg_log)
    return True


def setup(lab):
    """Roles, database and tables; idempotent."""
    conn = connect_local(lab)
    conn.autocommit = True
    with conn.cursor() as cur:
        for role, pw, su in ((PG_APP_USER, PG_APP_PASSWORD, False), (PG_ADMIN_USER, PG_ADMIN_PASSWORD, True)):
            cur.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,))
            verb = "ALTER" if cur.fetchone() else "CREATE"
            cur.execute("%s ROLE %s WITH LOGIN %s PASSWORD %%s" % (verb, role, "SUPERUSER" if su else "NOSUPERUSER"),
                        (pw,))
        cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (PG_DB,))
        if not cur.fetchone():
            cur.execute("CREATE DATABASE %s OWNER %s" % (PG_DB, PG_APP_USER))
    conn.close()
    conn = connect_local(lab, dbname=PG_DB)
    with conn, conn.cursor() as cur:
        cur.execute("SET ROLE %s" % PG_APP_USER)
        cur.execute(TABLES_SQL)
    conn.close()


def stop(lab):
    pid = postmaster_pid(lab)
    if not pid:
        return
    try:
        run(as_postgres([pg_bin("pg_ctl"), "-D", lab.pg_data, "-m", "fast", "-w", "-t", "15", "stop"]), timeout=20,
            what="pg_ctl stop")
    except LabError:
        pass
    if pid_alive(pid):
        kill(pid, signal.SIGQUIT)
        if not wait_until(lambda: not pid_alive(pid), 5, 0.1):
            kill(pid, signal.SIGKILL)


def terminate_leaks(lab):
    """pg_terminate_backend every `p3-lab-leak` backend; returns how many."""
    conn = connect_local(lab)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE application_name = %s AND pid <> pg_backend_pid()", (LEAK_APP_NAME,))
        n = cur.fetchone()[0]
    conn.close()
    return n


def leak_count(lab):
    conn = connect_local(lab)
    with conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", (LEAK_APP_NAME,))
        n = cur.fetchone()[0]
    conn.close()
    return n
