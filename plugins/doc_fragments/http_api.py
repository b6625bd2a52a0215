# -*- coding: utf-8 -*-
# Copyright: (c) 2026, P3 Recovery maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function
__metaclass__ = type


class ModuleDocFragment(object):
    # Options of every module that talks to the application over HTTP.
    DOCUMENTATION = r"""
options:
  url:
    description:
      - Base URL of the application, for example C(http://127.0.0.1:5000); paths are appended to it.
      - If not set, the environment variable E(P3_APP_URL) is used.
    type: str
  timeout:
    description:
      - Total deadline in seconds of each request - name resolution, connect, headers and the whole body - so a
        server that accepts and never answers, or dribbles its answer, costs this long and no more.
    type: float
    default: 5.0
  headers:
    description:
      - Extra HTTP headers for every request, for example C(Authorization) or C(X-Forwarded-Proto).
      - Values of headers whose names suggest a credential (C(Authorization), C(Cookie), C(*token*), C(*key*), ...)
        are masked in the module's output (for C(Basic), the decoded password too).
    type: dict
    default: {}
  validate_certs:
    description:
      - Verify the server's TLS certificate (HTTPS only).
    type: bool
    default: true
  ca_path:
    description:
      - PEM file of the certificate authority (or bundle) that signs the app's HTTPS certificate - a private CA.
        With it only these CAs are trusted (not the system store); without it the system store is used.
      - A file that cannot be read or is not PEM fails the module in one line naming it.
    type: path
notes:
  - Secrets - passwords in URLs and DSNs, credential headers - are masked in every output, failures included (even an
    argument that fails validation). Do not pass them as C(-e key=value) on the command line, which ansible-core
    itself prints at C(-vvvv); use Ansible Vault, C(-e @file), the environment variable fallbacks or AWX
    credentials (see the collection README, "Passing secrets").
"""
