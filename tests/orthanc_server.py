"""A throw-away Orthanc (Debian package ``orthanc``) on loopback for the PACS tests.

:func:`orthanc` starts ``Orthanc`` with a temporary configuration, storage and
index, HTTP on a free loopback port, the DICOM listener off, and two users:
``admin`` (may store), ``reader``, whose stores (``POST /instances``) and
deletions a Lua ``IncomingHttpRequestFilter`` refuses with HTTP 403 (Orthanc
Book, "Lua scripting": filtering incoming REST requests), and ``half``, whose
first store is accepted and every later one refused (to test the roll-back of
a partial push). It yields the base
URL and stops the server (and waits for it) on exit.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import time
from pathlib import Path

PASSWORD = "ctbmd-test"
LUA_FILTER = """
half_stores = 0
function IncomingHttpRequestFilter(method, uri, ip, username, httpHeaders)
  if username == 'reader' and (method == 'DELETE' or (method == 'POST' and uri == '/instances')) then
    return false
  end
  if username == 'half' and method == 'POST' and uri == '/instances' then
    half_stores = half_stores + 1
    return half_stores == 1
  end
  return true
end
"""


def orthanc_binary() -> str | None:
    """Path of the ``Orthanc`` executable, or None."""
    return shutil.which("Orthanc") or (("/usr/sbin/Orthanc") if Path("/usr/sbin/Orthanc").exists() else None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def orthanc(workdir: Path):
    """Run Orthanc in ``workdir``; yield ``(url, process)``."""
    import requests

    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    (workdir / "filter.lua").write_text(LUA_FILTER)
    config = {"Name": "ctbmd-test", "HttpPort": port, "DicomServerEnabled": False, "RemoteAccessAllowed": False,
              "StorageDirectory": str(workdir / "storage"), "IndexDirectory": str(workdir / "index"),
              "AuthenticationEnabled": True, "RegisteredUsers": {"admin": PASSWORD, "reader": PASSWORD, "half": PASSWORD},
              "LuaScripts": [str(workdir / "filter.lua")], "Plugins": [], "StableAge": 1,
              "HttpCompressionEnabled": False}
    (workdir / "orthanc.json").write_text(json.dumps(config))
    log = open(workdir / "orthanc.log", "w")
    proc = subprocess.Popen([orthanc_binary(), str(workdir / "orthanc.json")], stdout=log, stderr=subprocess.STDOUT,
                            cwd=workdir)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if requests.get(url + "/system", auth=("admin", PASSWORD), timeout=1).ok:
                    break
            except requests.ConnectionError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"Orthanc did not start: {(workdir / 'orthanc.log').read_text()[-2000:]}")
            time.sleep(0.2)
        yield url, proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def upload(url: str, files) -> list[str]:
    """Store DICOM files as ``admin``; return the Orthanc instance IDs."""
    import requests

    ids = []
    with requests.Session() as s:
        s.auth = ("admin", PASSWORD)
        for f in files:
            r = s.post(url + "/instances", data=Path(f).read_bytes(), headers={"Content-Type": "application/dicom"})
            r.raise_for_status()
            ids.append(r.json()["ID"])
    return ids


def get(url: str, path: str):
    """``GET url+path`` as ``admin``; the JSON answer."""
    import requests

    r = requests.get(url + path, auth=("admin", PASSWORD), timeout=30)
    r.raise_for_status()
    return r.json()
