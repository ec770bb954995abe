#!/usr/bin/env python3
"""Runs a command and prints its exit status and peak resident memory (KiB) as JSON."""
import json
import resource
import subprocess
import sys

status = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL).returncode
print(json.dumps({"status": status, "maxrss_kib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))
