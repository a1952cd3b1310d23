"""The local Ray that `quarry run` starts (profile `local`) listens on loopback only.

A subprocess connects exactly as a flow does (``runtime.connected(load_profile("local"))``), runs two shards so the
workers exist, then lists every listening socket of itself and its descendants (GCS, raylet, core workers, the
dashboard agent with its ``/metrics`` exporter, the runtime-env agent, the driver) and tries to connect to each port
on every non-loopback address of the host. Before the fix GCS, raylet, workers and the driver listened on ``*`` and
the agent on 0.0.0.0 and the host address, so ``/metrics`` answered anyone on the network.
"""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO

pytest.importorskip("psutil")

_PROBE = r"""
import json, os, socket, psutil
from ray_cluster import runtime

profile = runtime.load_profile("local")
with runtime.connected(profile):
    runtime.run_shards([{"i": 0}, {"i": 1}], lambda item: {"pid": os.getpid()}, profile.resources("x"),
                       profile=profile, desc="probe")
    me = psutil.Process()
    listen = []
    for p in [me, *me.children(recursive=True)]:
        try:
            listen += [[c.laddr.ip, c.laddr.port, p.name()] for c in p.net_connections(kind="inet")
                       if c.status == psutil.CONN_LISTEN]
        except psutil.Error:
            pass
    host_ips = [a.address for addrs in psutil.net_if_addrs().values() for a in addrs
                if a.family == socket.AF_INET and not a.address.startswith("127.")]
    reachable = []
    for ip in host_ips:
        for _, port, name in listen:
            with socket.socket() as s:
                s.settimeout(1)
                if s.connect_ex((ip, port)) == 0:
                    reachable.append([ip, port, name])
    print("PROBE " + json.dumps({"listen": listen, "host_ips": host_ips, "reachable": reachable}))
"""


def _loopback(ip: str) -> bool:
    addr = ipaddress.ip_address(ip)
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped  # ::ffff:127.0.0.1 - a dual-stack socket bound to the IPv4 loopback
    return addr.is_loopback


@pytest.mark.timeout(300)
def test_local_ray_listens_on_loopback_only(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")} | {
        "PYTHONPATH": str(REPO), "QUARRY_PROGRESS": "0", "QUARRY_PROFILE": "local"}
    out = subprocess.run([sys.executable, "-c", _PROBE], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=280)
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("PROBE ")]
    assert out.returncode == 0 and lines, f"probe failed ({out.returncode}):\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}"
    found = json.loads(lines[0][len("PROBE "):])
    names = {name for _, _, name in found["listen"]}
    assert {"gcs_server", "raylet"} <= names, f"Ray's own servers were not among the listeners: {found['listen']}"
    assert any(n.startswith("ray::DashboardAgent") for n in names), found["listen"]
    wide = [s for s in found["listen"] if not _loopback(s[0])]
    assert not wide, f"Ray processes listening beyond loopback: {wide}"
    assert not found["reachable"], f"ports answering on the host's address {found['host_ips']}: {found['reachable']}"
    print(f"\n{len(found['listen'])} listening sockets of {len(names)} Ray processes, all on loopback; "
          f"none reachable on {found['host_ips']}")
