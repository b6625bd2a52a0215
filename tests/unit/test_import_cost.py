"""Module start cost: only the module that signs (wallet_fund) may load eth_account, and each module loads only the
client libraries of the backends it talks to.

eth_account pulls in py_ecc, which computes BLS12-381 tables at import: 1.5-4 s of CPU per module start on this
2-core machine, paid by every probe that imported diagnostics -> chain (postgres_probe with a 2 s connect timeout
took 5-6 s). Each module runs in a fresh process, so the check is one clean interpreter per module.

The same holds for the backends' client libraries: redis-py (about 80 ms with bytecode caches, more from an AnsiballZ
zip, which has none), ansible's urls stack (the HTTP client) and psycopg2. A module loads a backend's library only
when its documentation names that backend (its doc fragment: redis, postgres, http_api/ethereum). Before, every
probe that imported module_utils.diagnostics loaded all three (postgres_probe 0.33 s of import CPU, now 0.14 s).
"""
import functools
import glob
import json
import os
import subprocess
import sys

import pytest
import yaml

from conftest import ROOT, _BASE

SIGNERS = {"wallet_fund"}
MODULES = sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(ROOT, "plugins", "modules", "*.py"))
                 if not os.path.basename(p).startswith("_"))


# the client library of each backend, and the doc fragments whose modules may load it
BACKENDS = {
    "redis": ("redis", {"redis"}),
    "ansible.module_utils.urls": ("HTTP", {"http_api", "ethereum"}),
    "psycopg2": ("PostgreSQL", {"postgres"}),
}
# modules that talk to a backend through options of their own rather than its fragment: eda_notify posts a webhook
# (eda_guard's optional PostgreSQL state loads psycopg2 only when it is used)
OWN_OPTIONS = {"eda_notify": {"ansible.module_utils.urls"}}


SIGNING = ("eth_account", "py_ecc", "web3")


@functools.lru_cache(maxsize=None)
def _loaded(name):
    """The signing and client libraries (and their submodules) one module loads at import, in a clean interpreter."""
    roots = SIGNING + tuple(BACKENDS)
    code = ("import importlib, json, sys; sys.argv = ['m']; "
            "importlib.import_module('ansible_collections.p3.recovery.plugins.modules.%s'); "
            "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in %r or m in %r)))"
            % (name, roots, roots))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False,
                         env=dict(os.environ, PYTHONPATH=_BASE))
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("name", [m for m in MODULES if m not in SIGNERS])
def test_module_does_not_load_the_signing_library(name):
    assert [m for m in _loaded(name) if m.split(".")[0] in SIGNING] == [], \
        "%s loads the signing library at import" % name


def test_wallet_fund_still_signs():
    from ansible_collections.p3.recovery.plugins.module_utils import chain
    acct = chain.load_account("0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80")
    assert acct.address == "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266"


def _fragments(name):
    with open(os.path.join(ROOT, "plugins", "modules", name + ".py")) as f:
        src = f.read()
    doc = src.split('DOCUMENTATION = r"""', 1)[1].split('"""', 1)[0]
    return set(x.rsplit(".", 1)[-1] for x in yaml.safe_load(doc).get("extends_documentation_fragment", []))


@pytest.mark.parametrize("name", MODULES)
def test_module_loads_only_the_client_libraries_of_its_backends(name):
    frags = _fragments(name)
    loaded = set(_loaded(name))
    extra = []
    for lib, (backend, allowed) in sorted(BACKENDS.items()):
        if lib in loaded and not (frags & allowed) and lib not in OWN_OPTIONS.get(name, ()):
            extra.append("%s (%s)" % (lib, backend))
    assert extra == [], "%s loads %s at import but talks to no such backend" % (name, ", ".join(extra))
