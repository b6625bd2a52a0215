"""Module start cost: only the module that signs (wallet_fund) may load eth_account.

eth_account pulls in py_ecc, which computes BLS12-381 tables at import: 1.5-4 s of CPU per module start on this
2-core machine, paid by every probe that imported diagnostics -> chain (postgres_probe with a 2 s connect timeout
took 5-6 s). Each module runs in a fresh process, so the check is one clean interpreter per module.
"""
import glob
import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT, _BASE

SIGNERS = {"wallet_fund"}
MODULES = sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(ROOT, "plugins", "modules", "*.py"))
                 if not os.path.basename(p).startswith("_"))


def _loaded(name):
    code = ("import importlib, json, sys; sys.argv = ['m']; "
            "importlib.import_module('ansible_collections.p3.recovery.plugins.modules.%s'); "
            "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('eth_account', 'py_ecc', 'web3'))))"
            % name)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False,
                         env=dict(os.environ, PYTHONPATH=_BASE))
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("name", [m for m in MODULES if m not in SIGNERS])
def test_module_does_not_load_the_signing_library(name):
    assert _loaded(name) == [], "%s loads the signing library at import" % name


def test_wallet_fund_still_signs():
    from ansible_collections.p3.recovery.plugins.module_utils import chain
    acct = chain.load_account("0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80")
    assert acct.address == "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266"
