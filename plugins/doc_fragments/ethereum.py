# -*- coding: utf-8 -*-
# Copyright: (c) 2026, P3 Recovery maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function
__metaclass__ = type


class ModuleDocFragment(object):
    # Options of every module that talks to an Ethereum JSON-RPC endpoint.
    DOCUMENTATION = r"""
options:
  rpc_url:
    description:
      - HTTP(S) JSON-RPC endpoint of the chain, for example C(http://127.0.0.1:8545).
      - If not set, the environment variable E(RPC_URL) is used (P3 itself reads E(BASE_RPC_URL); pass it here).
      - Provider URLs carry API keys - its password, long path segments and query values are treated as secrets, and
        messages show only its scheme, host and port.
    type: str
  rpc_timeout:
    description:
      - Total deadline in seconds of each JSON-RPC call (connect, headers and the whole body).
    type: float
    default: 5.0
notes:
  - Secrets - passwords in URLs and DSNs, credential headers - are masked in every output, failures included (even an
    argument that fails validation). Do not pass them as C(-e key=value) on the command line, which ansible-core
    itself prints at C(-vvvv); use Ansible Vault, C(-e @file), the environment variable fallbacks or AWX
    credentials (see the collection README, "Passing secrets").
"""
