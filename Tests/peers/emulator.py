#!/usr/bin/env python3
"""Starts gcp-storage-emulator (in memory, bucket "staging") on a free 127.0.0.1 port and prints "PORT <n>"
once it answers. Exits with the emulator."""
import ctypes
import signal
import socket
import subprocess
import sys
import time


def die_with_parent():
    """Runs in the child: the kernel kills it when this wrapper dies (even by SIGKILL)."""
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG (it ignores SIGTERM)


with socket.socket() as probe:
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
child = subprocess.Popen(["gcp-storage-emulator", "start", "--port", str(port), "--host", "127.0.0.1",
                          "--default-bucket", "staging", "--in-memory", "--quiet"], preexec_fn=die_with_parent)
deadline = time.time() + 30
while time.time() < deadline:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        break
    except OSError:
        time.sleep(0.1)
print("PORT %d" % port, flush=True)
sys.exit(child.wait())
