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
      - Seconds to wait for the connection and for each read of every request.
    type: float
    default: 5.0
  headers:
    description:
      - Extra HTTP headers for every request, for example C(Authorization) or C(X-Forwarded-Proto).
      - Values of headers whose names suggest a credential (C(Authorization), C(Cookie), C(*token*), C(*key*), ...)
        are masked in the module's output.
    type: dict
    default: {}
  validate_certs:
    description:
      - Verify the server's TLS certificate (HTTPS only).
    type: bool
    default: true
"""
