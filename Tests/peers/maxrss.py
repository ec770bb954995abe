#!/usr/bin/env python3
"""Runs a command and prints its exit status and peak resident memory (KiB) as JSON.

The peak comes from GNU time, not from this process's RUSAGE_CHILDREN: a child that Python forks (or vforks)
starts from Python's resident pages, and Linux keeps that high-water mark across exec, so Python's own ~10 MiB
would be a floor under every measurement.
"""
import json
import subprocess
import sys
import tempfile

with tempfile.NamedTemporaryFile("w+") as report:
    status = subprocess.run(["/usr/bin/time", "-f", "%M", "-o", report.name] + sys.argv[1:],
                            stdout=subprocess.DEVNULL).returncode
    report.seek(0)
    lines = report.read().split()
print(json.dumps({"status": status, "maxrss_kib": int(lines[-1]) if lines else None}))
