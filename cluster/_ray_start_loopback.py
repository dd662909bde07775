"""Run ``ray start ARGS...`` with the node and GCS addresses kept on 127.0.0.1.

Used by cluster/start_local.sh instead of the plain ``ray`` CLI. Why it exists
(Ray 2.60, Linux):

* ``ray start`` passes ``--node-ip-address`` and the host of ``--address``
  through ``ray._private.services.resolve_ip_for_localhost``, which replaces
  ``127.0.0.1``/``localhost`` with the machine's outbound address (e.g. the
  eth0 address). The GCS, raylet and agents then bind ``0.0.0.0``/``[::]`` or
  that address, i.e. they are reachable from the network. Only when the node IP
  is exactly ``127.0.0.1`` do they bind loopback.
* Setting ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` keeps ``127.0.0.1`` but makes
  ``ray start --address=...`` (joining a second node) abort.

So this wrapper sets ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` in the environment
that the Ray processes inherit (their own address look-ups then return
127.0.0.1, e.g. a job driver's ``ray.init()``), and in this process only lets a
worker node join and leaves loopback addresses unresolved. Everything else is
plain ``ray start``.
"""

from __future__ import annotations

import os
import sys

LOOPBACK = "127.0.0.1"


def main(argv: list[str]) -> int:
    # Inherited by gcs_server, raylet, dashboard, agents and every worker/driver.
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"

    import ray._private.ray_constants as ray_constants
    import ray._private.services as services
    from ray._common.network_utils import is_localhost
    from ray.scripts.scripts import main as ray_main

    if not hasattr(services, "resolve_ip_for_localhost") or not hasattr(
        ray_constants, "ENABLE_RAY_CLUSTER"
    ):
        print(
            "cluster/_ray_start_loopback.py: this Ray version lacks "
            "services.resolve_ip_for_localhost / ray_constants.ENABLE_RAY_CLUSTER; "
            "the loopback workaround needs updating",
            file=sys.stderr,
        )
        return 3

    original = services.resolve_ip_for_localhost

    def keep_loopback(host: str) -> str:
        return LOOPBACK if is_localhost(host) else original(host)

    # In this process only: allow `ray start --address` (worker node) and keep
    # 127.0.0.1 as given.
    ray_constants.ENABLE_RAY_CLUSTER = True
    services.resolve_ip_for_localhost = keep_loopback

    sys.argv = ["ray", "start", *argv]
    return ray_main()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
