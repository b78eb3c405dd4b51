//! The tamper-evident chain: canonical JSON, the chain hash, and verification of a chain
//! walked in `seq` order. Pure functions over entries as the API shows them (JSON values),
//! so the server's `GET /audit-logs/verify`, the offline `stratum audit verify --file` and
//! any third-party verifier compute exactly the same thing (README "Canonical JSON").

use std::io::BufRead;

use ring::digest::{digest, SHA256};
use serde::Serialize;
use serde_json::{Map, Number, Value};
use uuid::Uuid;

use crate::AuditEntry;

/// The "previous hash" of the first entry of the chain: 64 zeros.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Why an entry breaks the chain (the `reason` of `first_bad`).
pub mod reason {
    /// The entry's content or hash was changed: its hash does not recompute.
    pub const CHANGED: &str = "changed";
    /// An entry is missing at this seq (deleted).
    pub const DELETED: &str = "deleted";
    /// The entry's seq is not after the previous one (reordered or duplicated).
    pub const REORDERED: &str = "reordered";
    /// The entry carries no seq or hash where a sealed entry is expected, or it committed
    /// long ago and was never sealed (inserted behind the sealer's back).
    pub const UNSEALED: &str = "unsealed";
    /// The entry lies beyond the chain head the sealer recorded (inserted with a forged seq).
    pub const BEYOND_HEAD: &str = "beyond_head";
    /// A line of an export is not an audit entry.
    pub const UNREADABLE: &str = "unreadable";
}

/// Writes `value` as canonical JSON: object keys sorted by code point, no whitespace,
/// strings escaped minimally (only `"`, `\` and U+0000–U+001F), integers in decimal, other
/// numbers as Python's `repr(float)` writes them, `null`s kept.
pub fn canonical_json(value: &Value) -> String {
    let mut out = String::new();
    write_value(&mut out, value);
    out
}

fn write_value(out: &mut String, value: &Value) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => write_number(out, n),
        Value::String(s) => write_string(out, s),
        Value::Array(items) => {
            out.push('[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_value(out, v);
            }
            out.push(']');
        }
        Value::Object(map) => write_object(out, map),
    }
}

fn write_object(out: &mut String, map: &Map<String, Value>) {
    // `str` orders by UTF-8 bytes, which is code point order.
    let mut keys: Vec<&String> = map.keys().collect();
    keys.sort_unstable();
    out.push('{');
    for (i, k) in keys.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        write_string(out, k);
        out.push(':');
        write_value(out, &map[k]);
    }
    out.push('}');
}

fn write_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

fn write_number(out: &mut String, n: &Number) {
    if let Some(i) = n.as_i64() {
        out.push_str(&i.to_string());
    } else if let Some(u) = n.as_u64() {
        out.push_str(&u.to_string());
    } else if let Some(f) = n.as_f64() {
        out.push_str(&float_repr(f));
    } else {
        // Unreachable without serde_json's arbitrary precision; its own text is the best guess.
        out.push_str(&n.to_string());
    }
}

/// A float as Python's `repr` writes it: the shortest digits that round-trip, in positional
/// notation when the decimal exponent is in -4..=15 (with at least one fractional digit),
/// otherwise `d.ddde±XX` (at least two exponent digits).
pub fn float_repr(f: f64) -> String {
    if f == 0.0 {
        return if f.is_sign_negative() { "-0.0" } else { "0.0" }.to_owned();
    }
    // `{:e}` gives the shortest round-trip digits: "-1.2345e-7", "1e16".
    let sci = format!("{f:e}");
    let (mantissa, exp) = sci.split_once('e').unwrap_or((sci.as_str(), "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let (sign, mantissa) = match mantissa.strip_prefix('-') {
        Some(m) => ("-", m),
        None => ("", mantissa),
    };
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    if (-4..16).contains(&exp) {
        if exp >= 0 {
            let point = exp as usize + 1;
            if digits.len() <= point {
                format!("{sign}{digits}{}.0", "0".repeat(point - digits.len()))
            } else {
                format!("{sign}{}.{}", &digits[..point], &digits[point..])
            }
        } else {
            format!("{sign}0.{}{digits}", "0".repeat((-exp - 1) as usize))
        }
    } else {
        let m = if digits.len() == 1 {
            digits
        } else {
            format!("{}.{}", &digits[..1], &digits[1..])
        };
        let esign = if exp < 0 { '-' } else { '+' };
        format!("{sign}{m}e{esign}{:02}", exp.abs())
    }
}

/// hex SHA-256 of the previous entry's hash (64 hex characters) followed by the entry's
/// canonical JSON.
pub fn chain_hash(prev_hash: &str, canonical: &str) -> String {
    let mut input = Vec::with_capacity(prev_hash.len() + canonical.len());
    input.extend_from_slice(prev_hash.as_bytes());
    input.extend_from_slice(canonical.as_bytes());
    hex(digest(&SHA256, &input).as_ref())
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 0xf) as usize] as char);
    }
    s
}

/// The hash of an entry (given as the API shows it) chained after `prev_hash`: its
/// `hash` field, whatever it holds, is left out of the canonical JSON.
pub fn entry_hash(entry: &Value, prev_hash: &str) -> String {
    let canonical = match entry {
        Value::Object(map) if map.contains_key("hash") => {
            let mut m = map.clone();
            m.remove("hash");
            canonical_json(&Value::Object(m))
        }
        other => canonical_json(other),
    };
    chain_hash(prev_hash, &canonical)
}

/// Seals `entry` as number `seq` after `prev_hash`: sets its `seq` and `hash`.
pub fn seal(entry: &mut AuditEntry, seq: i64, prev_hash: &str) -> Result<(), serde_json::Error> {
    entry.seq = Some(seq);
    entry.hash = None;
    let value = serde_json::to_value(&*entry)?;
    entry.hash = Some(entry_hash(&value, prev_hash));
    Ok(())
}

/// A point of the chain: a seq and the hash of the entry with that seq.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ChainPoint {
    /// The entry's seq (0 before the first entry).
    pub seq: i64,
    /// The entry's hash.
    pub hash: String,
}

impl ChainPoint {
    /// The point before the first entry.
    pub fn genesis() -> Self {
        Self {
            seq: 0,
            hash: GENESIS_HASH.to_owned(),
        }
    }
}

/// The first entry that breaks the chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BadEntry {
    /// The entry's id; null when the entry is gone (deleted).
    pub id: Option<Uuid>,
    /// Its seq (for a deleted entry, the seq that is missing); null for an unsealed entry.
    pub seq: Option<i64>,
    /// `changed`, `deleted`, `reordered`, `unsealed`, `beyond_head` or `unreadable`.
    pub reason: String,
}

/// What a verification found (`GET /audit-logs/verify`, `stratum audit verify`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct VerifyReport {
    /// True when every entry chains and nothing is missing.
    pub ok: bool,
    /// Entries whose hash recomputed, in chain order, before the first bad one.
    pub verified: u64,
    /// The last point of the chain walked (the head when `ok`); null for an empty chain.
    pub head: Option<ChainPoint>,
    /// The first entry that was changed, deleted or reordered.
    pub first_bad: Option<BadEntry>,
}

/// Walks a chain in `seq` order from an anchor (genesis or a purge checkpoint) and stops
/// at the first entry that does not chain.
#[derive(Debug)]
pub struct ChainVerifier {
    last: ChainPoint,
    last_id: Option<Uuid>,
    head: Option<ChainPoint>,
    verified: u64,
    first_bad: Option<BadEntry>,
}

impl ChainVerifier {
    /// A verifier that continues after `anchor`; `head` is the head the sealer recorded,
    /// when known (entries beyond it are forged, and the chain must reach it).
    pub fn new(anchor: ChainPoint, head: Option<ChainPoint>) -> Self {
        Self {
            last: anchor,
            last_id: None,
            head,
            verified: 0,
            first_bad: None,
        }
    }

    /// Whether a bad entry was found (later entries need not be pushed).
    pub fn failed(&self) -> bool {
        self.first_bad.is_some()
    }

    /// Records `bad` unless an earlier problem was found.
    pub fn fail(&mut self, bad: BadEntry) {
        if self.first_bad.is_none() {
            self.first_bad = Some(bad);
        }
    }

    /// Checks the next entry (as the API shows it, with `seq` and `hash`).
    pub fn push(&mut self, entry: &Value) {
        if self.failed() {
            return;
        }
        let id = entry
            .get("id")
            .and_then(Value::as_str)
            .and_then(|s| Uuid::parse_str(s).ok());
        let seq = entry.get("seq").and_then(Value::as_i64);
        let stored = entry.get("hash").and_then(Value::as_str);
        let (Some(seq), Some(stored)) = (seq, stored) else {
            return self.fail(BadEntry {
                id,
                seq,
                reason: reason::UNSEALED.to_owned(),
            });
        };
        let bad = |seq: i64, id: Option<Uuid>, why: &str| BadEntry {
            id,
            seq: Some(seq),
            reason: why.to_owned(),
        };
        if let Some(head) = &self.head {
            if seq > head.seq {
                return self.fail(bad(seq, id, reason::BEYOND_HEAD));
            }
        }
        let expected = self.last.seq + 1;
        if seq < expected {
            return self.fail(bad(seq, id, reason::REORDERED));
        }
        if seq > expected {
            return self.fail(bad(expected, None, reason::DELETED));
        }
        if entry_hash(entry, &self.last.hash) != stored {
            return self.fail(bad(seq, id, reason::CHANGED));
        }
        self.verified += 1;
        self.last_id = id;
        self.last = ChainPoint {
            seq,
            hash: stored.to_owned(),
        };
    }

    /// The report; with a recorded head, a chain that stops short of it lost its tail,
    /// and one that reaches it must end in the head's hash.
    pub fn finish(mut self) -> VerifyReport {
        if let (None, Some(head)) = (&self.first_bad, &self.head) {
            if self.last.seq < head.seq {
                self.first_bad = Some(BadEntry {
                    id: None,
                    seq: Some(self.last.seq + 1),
                    reason: reason::DELETED.to_owned(),
                });
            } else if self.last.hash != head.hash {
                // Reached only when the entry at the head was rewritten with a hash that
                // chains from its predecessor: the recorded head still tells.
                self.verified = self.verified.saturating_sub(1);
                self.first_bad = Some(BadEntry {
                    id: self.last_id,
                    seq: Some(head.seq),
                    reason: reason::CHANGED.to_owned(),
                });
            }
        }
        VerifyReport {
            ok: self.first_bad.is_none(),
            verified: self.verified,
            head: (self.last.seq > 0).then_some(self.last),
            first_bad: self.first_bad,
        }
    }
}

/// Verifies a global NDJSON export (one entry a line, chain order) without the database.
/// An export that starts at seq 1 is checked from genesis; one that starts later (after a
/// purge, or filtered by time) is anchored at its first entry, taken on trust.
pub fn verify_ndjson(reader: impl BufRead) -> std::io::Result<VerifyReport> {
    let mut verifier: Option<ChainVerifier> = None;
    for line in reader.lines() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let entry = serde_json::from_str::<Value>(&line)
            .ok()
            .filter(Value::is_object);
        let v = match verifier.as_mut() {
            Some(v) => v,
            None => {
                let anchor = entry.as_ref().and_then(anchor_of);
                let started = anchor.is_some();
                let v = verifier.insert(ChainVerifier::new(
                    anchor.unwrap_or_else(ChainPoint::genesis),
                    None,
                ));
                if started {
                    continue;
                }
                v
            }
        };
        match entry {
            Some(e) => v.push(&e),
            None => v.fail(BadEntry {
                id: None,
                seq: None,
                reason: reason::UNREADABLE.to_owned(),
            }),
        }
        if v.failed() {
            break;
        }
    }
    Ok(verifier
        .unwrap_or_else(|| ChainVerifier::new(ChainPoint::genesis(), None))
        .finish())
}

/// The first entry of an export that does not start the chain.
fn anchor_of(entry: &Value) -> Option<ChainPoint> {
    let seq = entry.get("seq").and_then(Value::as_i64)?;
    let hash = entry.get("hash").and_then(Value::as_str)?;
    (seq > 1).then(|| ChainPoint {
        seq,
        hash: hash.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The README's test vector.
    fn vector() -> Value {
        json!({
            "id": "0190a5e2-7c4b-7def-8a12-3456789abcde", "tenant_id": null,
            "actor_id": "bootstrap", "actor_type": "api_key", "action": "config.updated",
            "resource_type": "config", "resource_id": "plan", "before_state": null,
            "after_state": {"key": "plan", "locked": false, "value": {
                "tier": "pro", "seats": 25, "ratio": 0.1, "big": 1e16, "tiny": 1.5e-7,
                "whole": 100.0, "note": "naïve \"quote\"\n\u{1}/é"}},
            "metadata": {"request_id": "req-1", "ip": "127.0.0.1", "user_agent": null},
            "created_at": "2026-01-31T09:15:00.123Z", "seq": 1
        })
    }

    #[test]
    fn the_readme_test_vector_holds() {
        let v = vector();
        assert_eq!(
            canonical_json(&v),
            r#"{"action":"config.updated","actor_id":"bootstrap","actor_type":"api_key","after_state":{"key":"plan","locked":false,"value":{"big":1e+16,"note":"naïve \"quote\"\n\u0001/é","ratio":0.1,"seats":25,"tier":"pro","tiny":1.5e-07,"whole":100.0}},"before_state":null,"created_at":"2026-01-31T09:15:00.123Z","id":"0190a5e2-7c4b-7def-8a12-3456789abcde","metadata":{"ip":"127.0.0.1","request_id":"req-1","user_agent":null},"resource_id":"plan","resource_type":"config","seq":1,"tenant_id":null}"#
        );
        assert_eq!(
            entry_hash(&v, GENESIS_HASH),
            "6bed85a73bd2b9d32ef800e4bf93d566525fcc163ec27a9279d1a92dbbc616a1"
        );
        // The hash field itself never enters the hash.
        let mut with_hash = v.clone();
        with_hash["hash"] = json!("whatever");
        assert_eq!(
            entry_hash(&with_hash, GENESIS_HASH),
            entry_hash(&v, GENESIS_HASH)
        );
    }

    #[test]
    fn floats_are_written_as_python_repr_writes_them() {
        for (f, s) in [
            (0.1, "0.1"),
            (100.0, "100.0"),
            (1e15, "1000000000000000.0"),
            (1e16, "1e+16"),
            (1.5e16, "1.5e+16"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (-2.5e-7, "-2.5e-07"),
            (123.456, "123.456"),
            (-0.0, "-0.0"),
            (0.0, "0.0"),
            (1.7976931348623157e308, "1.7976931348623157e+308"),
            (5e-324, "5e-324"),
        ] {
            assert_eq!(float_repr(f), s, "{f}");
        }
    }

    /// A sealed chain of `n` entries, as the API shows them.
    fn chain(n: i64) -> Vec<Value> {
        let mut prev = GENESIS_HASH.to_owned();
        (1..=n)
            .map(|seq| {
                let mut e = vector();
                e["id"] = json!(Uuid::now_v7());
                e["seq"] = json!(seq);
                let h = entry_hash(&e, &prev);
                e["hash"] = json!(h.clone());
                prev = h;
                e
            })
            .collect()
    }

    fn run(entries: &[Value], head: Option<ChainPoint>) -> VerifyReport {
        let mut v = ChainVerifier::new(ChainPoint::genesis(), head);
        for e in entries {
            v.push(e);
        }
        v.finish()
    }

    fn head_of(entries: &[Value]) -> Option<ChainPoint> {
        entries.last().map(|e| ChainPoint {
            seq: e["seq"].as_i64().unwrap(),
            hash: e["hash"].as_str().unwrap().to_owned(),
        })
    }

    #[test]
    fn an_intact_chain_verifies() {
        let c = chain(5);
        let r = run(&c, head_of(&c));
        assert!(r.ok, "{r:?}");
        assert_eq!(r.verified, 5);
        assert_eq!(r.head, head_of(&c));
        let empty = run(&[], Some(ChainPoint::genesis()));
        assert!(empty.ok && empty.head.is_none());
    }

    #[test]
    fn tampering_is_found_at_the_right_entry() {
        let c = chain(5);
        let head = head_of(&c);
        let bad = |r: VerifyReport| (r.verified, r.first_bad.unwrap());

        let mut changed = c.clone();
        changed[2]["action"] = json!("tenant.deleted");
        let (n, b) = bad(run(&changed, head.clone()));
        assert_eq!((n, b.seq, b.reason.as_str()), (2, Some(3), reason::CHANGED));
        assert_eq!(
            b.id.map(|i| i.to_string()),
            c[2]["id"].as_str().map(str::to_owned)
        );

        let mut deleted = c.clone();
        deleted.remove(1);
        let (_, b) = bad(run(&deleted, head.clone()));
        assert_eq!(
            (b.id, b.seq, b.reason.as_str()),
            (None, Some(2), reason::DELETED)
        );

        let mut swapped = c.clone();
        swapped.swap(1, 2);
        // Read in file order, seq 2 is missing where it should be.
        let (_, b) = bad(run(&swapped, head.clone()));
        assert_eq!((b.seq, b.reason.as_str()), (Some(2), reason::DELETED));
        // Renumbered to keep seq order, the content no longer chains.
        swapped[1]["seq"] = json!(2);
        swapped[2]["seq"] = json!(3);
        let (_, b) = bad(run(&swapped, head.clone()));
        assert_eq!((b.seq, b.reason.as_str()), (Some(2), reason::CHANGED));

        let (_, b) = bad(run(&c[..4], head.clone()));
        assert_eq!((b.seq, b.reason.as_str()), (Some(5), reason::DELETED));

        let mut forged = c.clone();
        let mut extra = vector();
        extra["seq"] = json!(6);
        extra["hash"] = json!(entry_hash(&extra, c[4]["hash"].as_str().unwrap()));
        forged.push(extra);
        let (n, b) = bad(run(&forged, head.clone()));
        assert_eq!(
            (n, b.seq, b.reason.as_str()),
            (5, Some(6), reason::BEYOND_HEAD)
        );

        // The last entry rewritten with a hash that chains: only the recorded head tells.
        let mut rewritten = c.clone();
        rewritten[4]["action"] = json!("x");
        let prev = c[3]["hash"].as_str().unwrap().to_owned();
        rewritten[4]["hash"] = json!(entry_hash(&rewritten[4], &prev));
        let (n, b) = bad(run(&rewritten, head));
        assert_eq!((n, b.seq, b.reason.as_str()), (4, Some(5), reason::CHANGED));
    }

    #[test]
    fn ndjson_exports_verify_from_genesis_or_from_their_first_entry() {
        let c = chain(4);
        let text: String = c.iter().map(|e| format!("{e}\n")).collect();
        let r = verify_ndjson(text.as_bytes()).unwrap();
        assert!(r.ok && r.verified == 4);

        let tail: String = c[1..].iter().map(|e| format!("{e}\n")).collect();
        let r = verify_ndjson(tail.as_bytes()).unwrap();
        assert!(r.ok && r.verified == 2, "{r:?}");
        assert_eq!(r.head, head_of(&c));

        let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
        lines[1] = lines[1].replace("config.updated", "config.deleted");
        let broken = lines.join("\n");
        let r = verify_ndjson(broken.as_bytes()).unwrap();
        assert_eq!(r.first_bad.unwrap().seq, Some(2));

        let r = verify_ndjson("not json\n".as_bytes()).unwrap();
        assert_eq!(r.first_bad.unwrap().reason, reason::UNREADABLE);
    }

    #[test]
    fn sealing_an_entry_chains_it() {
        let mut e: AuditEntry = AuditEntry {
            id: Uuid::now_v7(),
            tenant_id: None,
            actor_id: "system".into(),
            actor_type: "system".into(),
            action: "tenant.created".into(),
            resource_type: "tenant".into(),
            resource_id: None,
            before_state: None,
            after_state: Some(json!({"n": 1.25})),
            metadata: json!({}),
            created_at: time::OffsetDateTime::UNIX_EPOCH,
            seq: None,
            hash: None,
        };
        seal(&mut e, 1, GENESIS_HASH).unwrap();
        let shown = serde_json::to_value(&e).unwrap();
        let mut v = ChainVerifier::new(ChainPoint::genesis(), None);
        v.push(&shown);
        assert!(v.finish().ok);
    }
}
