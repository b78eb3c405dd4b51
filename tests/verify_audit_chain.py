#!/usr/bin/env python3
"""Verifies a global NDJSON export of the Stratum audit log (README "Canonical JSON").
Standard library only. Usage: verify_audit_chain.py EXPORT.ndjson; prints the report as
`stratum audit verify --file` does and exits 1 when the chain is broken."""
import hashlib, json, sys

def canonical(entry):
    return json.dumps(entry, sort_keys=True, separators=(",", ":"), ensure_ascii=False)

def verify(lines):
    prev, verified, bad = None, 0, None          # prev: (seq, hash) of the last entry
    for line in filter(str.strip, lines):
        try:
            e = json.loads(line); seq, stored = e["seq"], e.pop("hash")
        except (ValueError, KeyError, AttributeError, TypeError):
            bad = {"id": None, "seq": None, "reason": "unreadable"}; break
        if prev is None and isinstance(seq, int) and seq > 1 and stored:
            prev = (seq, stored); continue       # export after a purge: anchored, on trust
        last_seq, last_hash = prev or (0, "0" * 64)
        if not isinstance(seq, int) or stored is None:
            bad = {"id": e.get("id"), "seq": seq, "reason": "unsealed"}; break
        if seq != last_seq + 1:
            bad = ({"id": e["id"], "seq": seq, "reason": "reordered"} if seq <= last_seq
                   else {"id": None, "seq": last_seq + 1, "reason": "deleted"}); break
        if hashlib.sha256((last_hash + canonical(e)).encode()).hexdigest() != stored:
            bad = {"id": e["id"], "seq": seq, "reason": "changed"}; break
        verified, prev = verified + 1, (seq, stored)
    head = {"seq": prev[0], "hash": prev[1]} if prev else None
    return {"ok": bad is None, "verified": verified, "head": head, "first_bad": bad}

if __name__ == "__main__":
    with open(sys.argv[1], encoding="utf-8") as f:
        report = verify(f)
    print(json.dumps(report, separators=(",", ":")))
    sys.exit(0 if report["ok"] else 1)
