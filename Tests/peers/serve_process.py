"""`continuon-pack serve` as a child process on a fixed 127.0.0.1 port, restartable (after a kill) on the same port
and store, and the packages it is sent: the crash tests (Tests/serve/serve_restart.py) and the crash soak
(Benchmarks/serve_crash_soak.py)."""
import hashlib
import os
import shutil
import signal
import socket
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TRUSTED_PUB = os.path.join(ROOT, "TestVectors", "keys", "test-ed25519.pub")
TRUSTED_KEY = os.path.join(ROOT, "TestVectors", "keys", "test-ed25519.pem")


def pack(binary, work, name, size, key=TRUSTED_KEY, seed=None, environment="crash-tests"):
    """Packs one file of `size` random bytes (from `seed` when given, so that a package is the same every run),
    uncompressed, under WORK/out-NAME; returns the package's path. The episode directory is removed afterwards."""
    episodes = os.path.join(work, "episodes-%s" % name)
    os.makedirs(episodes, exist_ok=True)
    with open(os.path.join(episodes, "steps.bin"), "wb") as f:
        f.write(os.urandom(size) if seed is None else hashlib.shake_256(seed).digest(size))
    output = os.path.join(work, "out-%s" % name)
    result = subprocess.run([binary, "pack", episodes, "--key", key, "--runtime-version", "1", "--app-version", "1",
                             "--environment-id", environment, "--output", output + "/", "--compression", "none"],
                            capture_output=True, text=True)
    shutil.rmtree(episodes, ignore_errors=True)
    if result.returncode != 0:
        raise RuntimeError("pack failed: " + result.stderr[-400:])
    return os.path.normpath(result.stdout.strip().splitlines()[-1])


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Serve:
    """One `serve` process; its standard error is appended to LOG_DIR/serve-PORT.log across restarts."""

    def __init__(self, binary, store, port=None, spool=None, extra=(), keys=(TRUSTED_PUB,), log_dir=None):
        self.binary, self.store, self.spool, self.extra, self.keys = binary, store, spool, list(extra), list(keys)
        self.port = port or free_port()
        self.log_path = os.path.join(log_dir or os.path.dirname(store.rstrip("/")), "serve-%d.log" % self.port)
        self.process = None
        self.log = None

    @property
    def base(self):
        return "http://127.0.0.1:%d" % self.port

    def start(self, crash_at=None):
        """Starts it and waits for "listening on"; `crash_at` names a crash point where it kills itself."""
        env = dict(os.environ)
        env.pop("CONTINUON_PACK_TEST_CRASH_AT", None)
        if crash_at:
            env["CONTINUON_PACK_TEST_CRASH_AT"] = crash_at
        arguments = [self.binary, "serve", "--listen", "127.0.0.1:%d" % self.port, "--store", self.store] + self.extra
        for key in self.keys:
            arguments += ["--trusted-key", key]
        if self.spool:
            arguments += ["--spool", self.spool]
        if self.log:
            self.log.close()
        self.log = open(self.log_path, "ab")
        self.process = subprocess.Popen(arguments, stdout=subprocess.PIPE, stderr=self.log, env=env)
        line = self.process.stdout.readline().decode()
        if "listening on" not in line:
            raise RuntimeError("serve did not start: %r (exit %s)" % (line, self.process.poll()))
        return self

    def wait_killed(self, timeout=60):
        return self.process.wait(timeout=timeout)

    def kill(self):
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def stop(self):
        """SIGTERM, then SIGKILL after 15 s."""
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.log:
            self.log.close()
            self.log = None
