"""A network guard for the tests' child processes (put this folder first on PYTHONPATH).

Every name lookup or connection to a host outside the loopback range is refused with an ``OSError`` (so nothing
leaves the machine) and recorded, with the Python stack that asked for it, as one JSON line in the file named
by ``SSPIR_NETGUARD_LOG``. Unix sockets and loopback addresses (the tests' own servers) pass. Only the socket
module is touched: the process's import system stays as it is.
"""

from __future__ import annotations

import ipaddress
import json
import os
import socket
import traceback

_LOG = os.environ.get("SSPIR_NETGUARD_LOG")
_LOOPBACK_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost", ""}


def _is_loopback(host: object) -> bool:
    if isinstance(host, bytes):
        host = host.decode(errors="replace")
    if host is None:
        return True  # getaddrinfo(None, port): the local host's own addresses
    name = str(host).strip("[]").lower()
    if name in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(name.split("%")[0]).is_loopback
    except ValueError:
        return False  # a name to look up: DNS, i.e. the network


def _refuse(what: str, host: object) -> None:
    if _LOG:
        stack = "".join(traceback.format_stack()[:-2])
        with open(_LOG, "a", encoding="utf-8") as fh:
            fh.write(json.dumps({"what": what, "host": str(host), "pid": os.getpid(), "stack": stack}) + "\n")
    raise OSError(f"netguard: {what} of {host!r} refused (the tests allow loopback only)")


def _guard_host(what: str, index: int = 0):
    def wrap(fn):
        def guarded(*args, **kwargs):
            host = args[index] if len(args) > index else kwargs.get("host")
            if not _is_loopback(host):
                _refuse(what, host)
            return fn(*args, **kwargs)

        return guarded

    return wrap


def _guard_address(fn, what: str, address_index: int):
    def guarded(self, *args):
        address = args[address_index] if len(args) > address_index else None
        if (
            isinstance(address, tuple)
            and self.family in (socket.AF_INET, socket.AF_INET6)
            and not _is_loopback(address[0])
        ):
            _refuse(what, address[0])
        return fn(self, *args)

    return guarded


def install() -> None:
    socket.getaddrinfo = _guard_host("lookup")(socket.getaddrinfo)
    socket.gethostbyname = _guard_host("lookup")(socket.gethostbyname)
    socket.gethostbyname_ex = _guard_host("lookup")(socket.gethostbyname_ex)
    socket.socket.connect = _guard_address(socket.socket.connect, "connect", 0)
    socket.socket.connect_ex = _guard_address(socket.socket.connect_ex, "connect", 0)
    socket.socket.sendto = _guard_address(socket.socket.sendto, "sendto", -1)


if os.environ.get("SSPIR_NETGUARD_LOG"):
    install()
