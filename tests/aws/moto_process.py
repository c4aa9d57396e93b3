"""A moto server in a process of its own: `python moto_process.py SERVICE…`.

It listens on 127.0.0.1 (a free port), prints the port on its first line, then loads the backends
of the SERVICEs named, so that their first request does not pay for moto's imports (CloudFormation's
alone imports nearly every moto backend: seconds of CPU). A process of its own does that work on
the other core while the test process collects and runs tests. It stops when its standard input
closes: the test session holds the other end, so the server never outlives it, even a killed one.
"""

from __future__ import annotations

import logging
import os
import sys


def main(services: list[str]) -> None:
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    print(server.get_host_and_port()[1], flush=True)

    from moto.backends import get_backend

    for service in services:
        get_backend(service)  # type: ignore[call-overload]  # the import is the cost
    sys.stdin.read()
    os._exit(0)  # nothing to keep: no orderly shutdown to wait for


if __name__ == "__main__":
    main(sys.argv[1:])
