#!/usr/bin/env python3
"""Runs Tests/peers/reference_verify.py against every vector in TestVectors/.

- invalid/NAME.cpkg: verified with the keys and threshold of NAME.expected.json; the verdict must be invalid
  (exit 1, "valid": false) and the set of error codes must equal "codes" exactly.
- valid/package-*.cpkg: valid (exit 0) with keys/test-ed25519.pub; invalid with exactly
  ["signature.untrusted"] with only keys/second-ed25519.pub.
- trust/cases.json (when present, section 14): each case is verified with --trust-policy and its roots,
  root threshold, threshold and previous policy; either the policy is refused (exit 2, "policy_error" as
  expected) or the verdict (exit 0/1, "valid"), the set of error codes and the per-signature statuses (in
  envelope order) must be as expected.

Prints one line per mismatch and finally "N passed, M failed". Exit 0 only when nothing failed.

Usage: python3 Tests/peers/check_reference_vectors.py [--vectors DIR] [--verifier PATH] [--timeout S]
"""

from __future__ import annotations

import argparse
import json
import shlex
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_VECTORS = os.path.normpath(os.path.join(HERE, "..", "..", "TestVectors"))
DEFAULT_VERIFIER = os.path.join(HERE, "reference_verify.py")


def run_verifier(verifier: str, package: str, keys: list[str], threshold: int, timeout: float):
    """Returns (exit status, parsed JSON report or None, problem text or None)."""
    args = [package]
    for key in keys:
        args += ["--trusted-key", key]
    args += ["--threshold", str(threshold)]
    return run_verifier_args(verifier, args, timeout)


# The command line the verifier under test starts with (set by --command; the reference verifier by default).
COMMAND: list[str] = []


def codes_of(report: dict) -> set[str]:
    """The error codes of a report: `errors` as code strings, or as objects with a `code` (as verify --json)."""
    return {e["code"] if isinstance(e, dict) else e for e in report["errors"]}


def run_verifier_args(verifier: str, args: list[str], timeout: float):
    """Runs the verifier with `args`; returns as run_verifier does."""
    cmd = (COMMAND or [sys.executable, verifier]) + args
    try:
        proc = subprocess.run(cmd, capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None, None, f"timed out after {timeout:g} s"
    try:
        report = json.loads(proc.stdout.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        tail = proc.stderr.decode("utf-8", "replace").strip().splitlines()[-1:]
        return proc.returncode, None, "no JSON report" + (f" ({tail[0]})" if tail else "")
    if not isinstance(report, dict) or not isinstance(report.get("errors"), list):
        return proc.returncode, None, "malformed JSON report"
    if "Traceback" in proc.stderr.decode("utf-8", "replace"):
        return proc.returncode, report, "traceback on stderr"
    return proc.returncode, report, None


def expect(verifier: str, label: str, package: str, keys: list[str], threshold: int,
           valid: bool, codes: set[str], timeout: float) -> str | None:
    """None when the verifier's result matches; otherwise a one-line description."""
    status, report, problem = run_verifier(verifier, package, keys, threshold, timeout)
    if report is None:
        return f"{label}: {problem} (exit {status})"
    got = codes_of(report)
    want_status = 0 if valid else 1
    issues = []
    if problem:
        issues.append(problem)
    if status != want_status:
        issues.append(f"exit {status}, expected {want_status}")
    if report.get("valid") is not valid:
        issues.append(f"valid={report.get('valid')!r}, expected {valid!r}")
    if got != codes:
        missing, extra = sorted(codes - got), sorted(got - codes)
        issues.append(f"codes {sorted(got)}, expected {sorted(codes)}"
                      + (f"; missing {missing}" if missing else "")
                      + (f"; unexpected {extra}" if extra else ""))
    return f"{label}: " + "; ".join(issues) if issues else None


def run_trust_case(verifier: str, trust_dir: str, case: dict, timeout: float) -> str | None:
    """One case of trust/cases.json; None when the verifier's result matches."""
    label = f"trust/{case.get('name', '?')}"
    try:
        at = lambda rel: os.path.join(trust_dir, rel)
        args = [at(case["package"]), "--trust-policy", at(case["policy"])]
        for root in case.get("roots", []):
            args += ["--trust-root", at(root)]
        if "root_threshold" in case:
            args += ["--root-threshold", str(int(case["root_threshold"]))]
        if "threshold" in case:
            args += ["--threshold", str(int(case["threshold"]))]
        if "previous_policy" in case:
            args += ["--previous-policy", at(case["previous_policy"])]
        expected = case["expected"]
        if "policy_error" not in expected:
            want_valid = expected["valid"]
            want_codes = set(expected["codes"])
            want_statuses = list(expected["statuses"])
    except (KeyError, TypeError, ValueError) as exc:
        return f"{label}: unreadable case: {exc!r}"
    status, report, problem = run_verifier_args(verifier, args, timeout)
    if report is None:
        return f"{label}: {problem} (exit {status})"
    issues = [problem] if problem else []
    if "policy_error" in expected:
        want = expected["policy_error"]
        if status != 2:
            issues.append(f"exit {status}, expected 2")
        if report.get("policy_error") != want:
            issues.append(f"policy_error {report.get('policy_error')!r}, expected {want!r}"
                          + (f" (verdict valid={report.get('valid')!r}, codes "
                             f"{sorted(codes_of(report))})" if "policy_error" not in report else ""))
        return f"{label}: " + "; ".join(issues) if issues else None
    if "policy_error" in report:
        return f"{label}: policy refused ({report['policy_error']!r}, exit {status}), expected a verdict"
    want_status = 0 if want_valid else 1
    if status != want_status:
        issues.append(f"exit {status}, expected {want_status}")
    if report.get("valid") is not want_valid:
        issues.append(f"valid={report.get('valid')!r}, expected {want_valid!r}")
    got = codes_of(report)
    if got != want_codes:
        missing, extra = sorted(want_codes - got), sorted(got - want_codes)
        issues.append(f"codes {sorted(got)}, expected {sorted(want_codes)}"
                      + (f"; missing {missing}" if missing else "")
                      + (f"; unexpected {extra}" if extra else ""))
    sigs = report.get("signatures")
    got_statuses = [e.get("status") for e in sigs] if isinstance(sigs, list) else None
    if got_statuses != want_statuses:
        issues.append(f"statuses {got_statuses}, expected {want_statuses}")
    return f"{label}: " + "; ".join(issues) if issues else None


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description="Check reference_verify.py against TestVectors/.")
    parser.add_argument("--vectors", default=DEFAULT_VECTORS)
    parser.add_argument("--verifier", default=DEFAULT_VERIFIER)
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument("--command", help="the verifier under test as a command line (split like a shell does), "
                                          "to which each vector's arguments are appended; default: the reference "
                                          "verifier, run by this Python")
    args = parser.parse_args(argv)
    if args.command:
        COMMAND[:] = shlex.split(args.command)
    keys_dir = os.path.join(args.vectors, "keys")
    invalid_dir = os.path.join(args.vectors, "invalid")
    valid_dir = os.path.join(args.vectors, "valid")

    passed = failed = 0

    def record(mismatch: str | None) -> None:
        nonlocal passed, failed
        if mismatch is None:
            passed += 1
        else:
            failed += 1
            print(mismatch, flush=True)

    try:
        invalid_names = sorted(n[:-len(".expected.json")] for n in os.listdir(invalid_dir)
                               if n.endswith(".expected.json"))
        valid_names = sorted(n for n in os.listdir(valid_dir)
                             if n.startswith("package-") and n.endswith(".cpkg"))
    except OSError as exc:
        print(f"cannot list vectors: {exc}")
        print("0 passed, 1 failed")
        return 1

    for name in invalid_names:
        try:
            with open(os.path.join(invalid_dir, name + ".expected.json"), "rb") as f:
                expected = json.load(f)
            keys = [os.path.join(keys_dir, k) for k in expected["trusted_keys"]]
            threshold = int(expected.get("threshold", 1))
            codes = set(expected["codes"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            record(f"invalid/{name}: unreadable expected.json: {exc}")
            continue
        package = os.path.join(invalid_dir, name + ".cpkg")
        record(expect(args.verifier, f"invalid/{name}", package, keys, threshold, False, codes,
                      args.timeout))

    if len(valid_names) != 3:
        record(f"valid/: expected 3 package-*.cpkg, found {len(valid_names)}")
    trusted = os.path.join(keys_dir, "test-ed25519.pub")
    other = os.path.join(keys_dir, "second-ed25519.pub")
    for name in valid_names:
        package = os.path.join(valid_dir, name)
        record(expect(args.verifier, f"valid/{name} (trusted key)", package, [trusted], 1,
                      True, set(), args.timeout))
        record(expect(args.verifier, f"valid/{name} (untrusted key)", package, [other], 1,
                      False, {"signature.untrusted"}, args.timeout))

    trust_dir = os.path.join(args.vectors, "trust")
    cases_path = os.path.join(trust_dir, "cases.json")
    if os.path.exists(cases_path):
        try:
            with open(cases_path, "rb") as f:
                cases = json.load(f)["cases"]
            if not isinstance(cases, list):
                raise TypeError("cases is not a list")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            record(f"trust/cases.json: unreadable: {exc}")
            cases = []
        for case in cases:
            if not isinstance(case, dict):
                record(f"trust/cases.json: a case is not an object: {case!r}")
                continue
            record(run_trust_case(args.verifier, trust_dir, case, args.timeout))

    print(f"{passed} passed, {failed} failed")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
