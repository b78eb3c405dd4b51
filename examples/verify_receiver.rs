//! A webhook receiver that verifies both signatures Stratum puts on each delivery
//! (`X-Stratum-Signature` and the Standard Webhooks `webhook-signature`) with
//! `stratum-crypto`, answering 204 when both hold and 401 otherwise.
//!
//! Settings, from the environment: `WEBHOOK_SECRET` (the webhook's signing secret),
//! `RECEIVER_ADDR` (default `127.0.0.1:8099`; port 0 picks a free one). With `--once` it
//! stops after the first delivery and exits 0 only when that delivery verified.

use std::io::Write;

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use stratum_crypto::{verify_standard, verify_stratum};
use time::OffsetDateTime;
use tokio::sync::mpsc;

/// How far a delivery's timestamp may be from now.
const TOLERANCE_SECS: i64 = 300;

struct Receiver {
    secret: String,
    verdicts: mpsc::UnboundedSender<bool>,
}

async fn hook(req: HttpRequest, body: web::Bytes, rx: web::Data<Receiver>) -> HttpResponse {
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    };
    let now = OffsetDateTime::now_utc().unix_timestamp();
    let stratum = verify_stratum(
        rx.secret.as_bytes(),
        header("X-Stratum-Timestamp"),
        header("X-Stratum-Signature"),
        &body,
        now,
        TOLERANCE_SECS,
    );
    let standard = verify_standard(
        &rx.secret,
        header("webhook-id"),
        header("webhook-timestamp"),
        header("webhook-signature"),
        &body,
        now,
        TOLERANCE_SECS,
    );
    let verified = stratum.is_ok() && standard.is_ok();
    if verified {
        println!(
            "verified {} delivery {}: {}",
            header("X-Stratum-Event"),
            header("webhook-id"),
            String::from_utf8_lossy(&body)
        );
    } else {
        println!(
            "rejected a delivery: stratum signature {stratum:?}, standard signature {standard:?}"
        );
    }
    let _ = rx.verdicts.send(verified);
    if verified {
        HttpResponse::NoContent().finish()
    } else {
        HttpResponse::Unauthorized().finish()
    }
}

#[actix_web::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let secret = std::env::var("WEBHOOK_SECRET").map_err(|_| "set WEBHOOK_SECRET")?;
    let addr = std::env::var("RECEIVER_ADDR").unwrap_or_else(|_| "127.0.0.1:8099".to_owned());
    let once = std::env::args().any(|a| a == "--once");
    let (verdicts, mut received) = mpsc::unbounded_channel();
    let state = web::Data::new(Receiver { secret, verdicts });
    let server = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .route("/hook", web::post().to(hook))
    })
    .workers(1)
    .shutdown_timeout(1)
    .bind(&addr)?;
    for bound in server.addrs() {
        println!("listening on http://{bound}/hook");
    }
    std::io::stdout().flush()?;
    let server = server.run();
    if !once {
        return Ok(server.await?);
    }
    let handle = server.handle();
    let running = tokio::spawn(server);
    let verified = received.recv().await.unwrap_or(false);
    // A graceful stop: the delivery being answered gets its response first.
    handle.stop(true).await;
    running.await??;
    if verified {
        Ok(())
    } else {
        Err("the delivery did not verify".into())
    }
}
