"""Kernel-side instrumentation for the browser tests (inert unless its variables are set).

tests/browser/conftest.py puts this folder first on PYTHONPATH when it starts JupyterLab, so Python
runs this file at start-up in the Jupyter server and in every kernel it launches:

- COURSE_NETWORK_LOG: every connection or name lookup that would leave this machine is refused
  (OSError) and its address appended to that file. Refusing alone is not enough: circuitsvis, for
  one, probes the internet and silently falls back when the probe fails, so the test reads the log.
- COURSE_WIDGET_ERROR_LOG: exceptions raised in widget callbacks. The kernel reports them as
  outputs of the widget's comm message, which JupyterLab shows nowhere, so they are copied to that
  file for the test to read. This needs `watch_widget_callbacks`, called from an IPython start-up
  file that conftest.py writes into the kernel's (temporary) IPYTHONDIR.

Loopback and Unix-socket traffic (the kernel's ZeroMQ channels, the server itself) is allowed.
Only Python's `socket` module is patched: a C library opening its own sockets would not be seen.
"""

import errno
import importlib.machinery
import importlib.util
import ipaddress
import logging
import os
import socket
import sys
import traceback

NETWORK_LOG = os.environ.get("COURSE_NETWORK_LOG")
WIDGET_ERROR_LOG = os.environ.get("COURSE_WIDGET_ERROR_LOG")
LOCAL_NAMES = {"", "localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"}


def _is_local(host) -> bool:
    """True for loopback, 'any' (bind) addresses and the name localhost."""
    if host is None:
        return True
    if isinstance(host, bytes):
        host = host.decode(errors="replace")
    host = str(host).strip("[]").split("%")[0].lower()  # "[::1]" and "fe80::1%eth0" forms
    if host in LOCAL_NAMES:
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False  # any other name needs a DNS lookup, which is itself network traffic
    return address.is_loopback or address.is_unspecified


def _refuse(what: str, address) -> OSError:
    with open(NETWORK_LOG, "a", encoding="utf-8") as log:
        log.write(f"{what} {address!r} (pid {os.getpid()}, {' '.join(sys.argv)[:200]})\n")
    return OSError(
        errno.ENETUNREACH, f"network access is blocked in the browser tests: {address!r}"
    )


def _guard_socket_module() -> None:
    original_connect = socket.socket.connect
    original_connect_ex = socket.socket.connect_ex
    original_create_connection = socket.create_connection
    original_getaddrinfo = socket.getaddrinfo
    original_gethostbyname = socket.gethostbyname
    original_gethostbyname_ex = socket.gethostbyname_ex

    def leaves_machine(sock, address) -> bool:
        # Unix sockets take a path; only IP families can reach another machine.
        return sock.family in (socket.AF_INET, socket.AF_INET6) and not _is_local(address[0])

    def connect(self, address):
        if leaves_machine(self, address):
            raise _refuse("connect", address)
        return original_connect(self, address)

    def connect_ex(self, address):
        if leaves_machine(self, address):
            _refuse("connect_ex", address)
            return errno.ENETUNREACH
        return original_connect_ex(self, address)

    def create_connection(address, *args, **kwargs):
        if not _is_local(address[0]):
            raise _refuse("create_connection", address)
        return original_create_connection(address, *args, **kwargs)

    def getaddrinfo(host, *args, **kwargs):
        if not _is_local(host):
            raise _refuse("getaddrinfo", host)
        return original_getaddrinfo(host, *args, **kwargs)

    def gethostbyname(host):
        if not _is_local(host):
            raise _refuse("gethostbyname", host)
        return original_gethostbyname(host)

    def gethostbyname_ex(host):
        if not _is_local(host):
            raise _refuse("gethostbyname_ex", host)
        return original_gethostbyname_ex(host)

    socket.socket.connect = connect
    socket.socket.connect_ex = connect_ex
    socket.create_connection = create_connection
    socket.getaddrinfo = getaddrinfo
    socket.gethostbyname = gethostbyname
    socket.gethostbyname_ex = gethostbyname_ex


def _record_widget_callback_errors() -> None:
    # comm (used by ipykernel 7) logs "Exception in comm_msg" with the traceback on these loggers.
    # Only records carrying an exception count: "No such comm target registered" is routine (the
    # page asks for ipywidgets' control comm before the notebook imports ipywidgets).
    handler = logging.FileHandler(WIDGET_ERROR_LOG, encoding="utf-8", delay=True)
    handler.setLevel(logging.ERROR)
    handler.addFilter(lambda record: record.exc_info is not None)
    handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    for name in ("Comm", "ipykernel.comm"):
        logging.getLogger(name).addHandler(handler)


def watch_widget_callbacks(shell) -> None:
    """Copy to the widget error log every traceback the kernel shows while handling a comm message.

    ipywidgets catches an exception raised in an observer or on_click handler and calls
    `shell.showtraceback()`; during a comm_msg, that output has no cell to go to.
    """
    if not WIDGET_ERROR_LOG:
        return
    show = shell.showtraceback

    def showtraceback(*args, **kwargs):
        if getattr(shell, "parent_header", {}).get("msg_type") == "comm_msg":
            with open(WIDGET_ERROR_LOG, "a", encoding="utf-8") as log:
                log.write(traceback.format_exc())
        return show(*args, **kwargs)

    shell.showtraceback = showtraceback


def _run_next_sitecustomize() -> None:
    # This file shadows any other sitecustomize (Debian's Python ships one); run that one too.
    here = os.path.dirname(os.path.abspath(__file__))
    path = [p for p in sys.path if os.path.abspath(p or os.curdir) != here]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", path)
    if spec is not None and spec.loader is not None:
        spec.loader.exec_module(importlib.util.module_from_spec(spec))


if NETWORK_LOG:
    _guard_socket_module()
if WIDGET_ERROR_LOG:
    _record_widget_callback_errors()
_run_next_sitecustomize()
