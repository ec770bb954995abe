"""`continuon-pack serve` as a child process on a fixed 127.0.0.1 port, restartable (after a kill) on the same port
and store: the crash tests (Tests/serve/serve_restart.py) and the crash soak (Benchmarks/serve_crash_soak.py)."""
import os
import signal
import socket
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TRUSTED_PUB = os.path.join(ROOT, "TestVectors", "keys", "test-ed25519.pub")


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
