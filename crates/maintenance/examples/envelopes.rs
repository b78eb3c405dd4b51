//! Prints rows of encrypted secrets for `COPY … FROM STDIN` (tab-separated), encrypted
//! under `STRATUM_ENCRYPTION_KEY`, so benchmarks can load realistic data in bulk:
//!
//! ```text
//! envelopes webhooks <n>            -> id, url, events, secret_encrypted
//! envelopes config <n> <tenant_id>  -> tenant_id, key, encrypted_value, sensitive
//! ```

use std::io::{BufWriter, Write};

use stratum_crypto::EncryptionKey;
use uuid::Uuid;

fn main() -> Result<(), String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let master = std::env::var("STRATUM_ENCRYPTION_KEY")
        .map_err(|_| "set STRATUM_ENCRYPTION_KEY".to_owned())?;
    let key = EncryptionKey::derive(&master).map_err(|e| e.to_string())?;
    let n: usize = args
        .get(1)
        .and_then(|n| n.parse().ok())
        .ok_or("usage: envelopes webhooks|config <n> [tenant_id]")?;
    let out = std::io::stdout();
    let mut out = BufWriter::new(out.lock());
    let io = |e: std::io::Error| e.to_string();
    match args.first().map(String::as_str) {
        Some("webhooks") => {
            for i in 0..n {
                let id = Uuid::now_v7();
                let secret = key
                    .encrypt_str(&format!("whsec_bench_{i}_{}", Uuid::new_v4().simple()))
                    .map_err(|e| e.to_string())?;
                writeln!(
                    out,
                    "{id}\thttps://example.com/hooks/{i}\t{{tenant.updated}}\t{secret}"
                )
                .map_err(io)?;
            }
        }
        Some("config") => {
            let tenant: Uuid = args
                .get(2)
                .and_then(|t| t.parse().ok())
                .ok_or("config needs a tenant id")?;
            for i in 0..n {
                let value = key
                    .encrypt_str(&format!("\"secret-value-{i}\""))
                    .map_err(|e| e.to_string())?;
                writeln!(out, "{tenant}\tbench.secret.{i}\t{value}\tt").map_err(io)?;
            }
        }
        _ => return Err("usage: envelopes webhooks|config <n> [tenant_id]".into()),
    }
    out.flush().map_err(io)
}
