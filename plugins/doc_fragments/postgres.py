# -*- coding: utf-8 -*-
# Copyright: (c) 2026, P3 Recovery maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function
__metaclass__ = type


class ModuleDocFragment(object):
    # Connection options of every module that talks to PostgreSQL.
    DOCUMENTATION = r"""
options:
  dsn:
    description:
      - libpq connection string, as a URI (C(postgresql://user:password@host:port/db?sslmode=require)) or as
        keywords (C(host=... port=... dbname=... user=... password=...)).
      - If not set, the environment variable E(DATABASE_URL) is used.
      - The O(db_host), O(db_port), O(db_user), O(db_password), O(db_name), O(db_sslmode), O(db_sslrootcert),
        O(db_sslcert) and O(db_sslkey) options override the matching parts of the DSN. Without a DSN they alone describe the connection; libpq's own environment
        variables (E(PGHOST), E(PGPASSWORD), ...) fill what is left unset.
      - During a connection exhaustion incident use a superuser here, so the connection can take one of the
        C(superuser_reserved_connections) slots.
    type: str
  db_host:
    description: Host name, IP address or Unix socket directory of the server.
    type: str
  db_port:
    description: Server port.
    type: int
  db_user:
    description: Role to connect as.
    type: str
  db_password:
    description: Password of O(db_user).
    type: str
  db_name:
    description: Database to connect to.
    type: str
  db_sslmode:
    description: libpq C(sslmode).
    type: str
    choices: [disable, allow, prefer, require, verify-ca, verify-full]
  db_sslrootcert:
    description:
      - libpq C(sslrootcert), the CA bundle that verifies the server certificate (O(db_sslmode=verify-ca) or
        O(db_sslmode=verify-full)).
    type: path
  db_sslcert:
    description: libpq C(sslcert), a client certificate to present to the server.
    type: path
  db_sslkey:
    description: libpq C(sslkey), the private key of O(db_sslcert).
    type: path
  connect_timeout:
    description:
      - Seconds allowed for connecting (name resolution, TCP, TLS and authentication), and for each query.
      - Host names are resolved by the module within this time and passed to libpq as C(hostaddr), with C(host)
        kept for TLS verification and C(.pgpass) (libpq resolves names before its own timeout starts, with no
        bound); a name with several addresses is tried address by address, as libpq would.
      - Enforced by the module itself, so a server that accepts connections but never answers costs this long; a
        query that runs out of time is cancelled without waiting for the server (a frozen postmaster included).
    type: float
    default: 5.0
requirements:
  - psycopg2 (Python library; psycopg2-binary is fine)
notes:
  - Connections identify themselves with C(application_name=p3-recovery).
  - Passwords are removed from every message, including the server's and libpq's error texts; a malformed DSN is
    reported without quoting any part of it.
  - Secrets - passwords in URLs and DSNs, credential headers - are masked in every output, failures included (even an
    argument that fails validation). Do not pass them as C(-e key=value) on the command line, which ansible-core
    itself prints at C(-vvvv); use Ansible Vault, C(-e @file), the environment variable fallbacks or AWX
    credentials (see the collection README, "Passing secrets").
"""
