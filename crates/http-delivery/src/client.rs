//! The [`DeliveryClient`] adapter on reqwest (rustls with the ring provider).

use std::error::Error as StdError;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE, RETRY_AFTER, USER_AGENT};
use reqwest::{redirect, Client, Response, Url};
use stratum_webhooks::{AttemptOutcome, DeliveryClient, OutgoingRequest};

use crate::resolve::{system_lookup, BlockedTarget, GuardedResolver, Lookup};
use crate::ssrf::{precheck, target_host};

/// Longer connect waits only tie up workers on dead receivers.
const MAX_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Reading past this much of a response body is pointless: nobody looks at more.
const BODY_READ_CAP: usize = 64 * 1024;
/// How much of the body is kept on the attempt record.
const EXCERPT_BYTES: usize = 4 * 1024;
/// Extra bytes kept while reading so the last character before the cut decodes whole.
const UTF8_SLACK: usize = 3;

/// How the delivery client behaves.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Total time for one attempt, from connect to the last body byte read.
    pub timeout: Duration,
    /// Time to establish the connection (TLS included); capped at 5 s.
    pub connect_timeout: Duration,
    /// Lets deliveries reach private and loopback addresses (local development, tests).
    pub allow_private: bool,
    /// The `User-Agent` header, e.g. `Stratum-Webhooks/0.1.0`.
    pub user_agent: String,
    /// Idle keep-alive connections kept per receiver host.
    pub max_idle_per_host: usize,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(10),
            connect_timeout: MAX_CONNECT_TIMEOUT,
            allow_private: false,
            user_agent: format!("Stratum-Webhooks/{}", env!("CARGO_PKG_VERSION")),
            max_idle_per_host: 8,
        }
    }
}

/// Why the client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ClientBuildError {
    /// The configured user agent is not a valid header value.
    #[error("user agent is not a valid header value")]
    UserAgent,
    /// reqwest refused the configuration.
    #[error("building the HTTP client failed: {0}")]
    Http(#[from] reqwest::Error),
}

/// Sends deliveries with reqwest; never follows redirects and never connects to an address
/// the SSRF guard has not checked.
#[derive(Debug, Clone)]
pub struct ReqwestDeliveryClient {
    client: Client,
    allow_private: bool,
    user_agent: HeaderValue,
    timeout: Duration,
}

impl ReqwestDeliveryClient {
    /// Builds the client (installing ring as the process-wide rustls provider if none is).
    pub fn new(config: ClientConfig) -> Result<Self, ClientBuildError> {
        Self::with_lookup(config, system_lookup())
    }

    pub(crate) fn with_lookup(
        config: ClientConfig,
        lookup: Lookup,
    ) -> Result<Self, ClientBuildError> {
        // Another component may have installed a provider first; any provider will do.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let user_agent =
            HeaderValue::from_str(&config.user_agent).map_err(|_| ClientBuildError::UserAgent)?;
        let client = Client::builder()
            .tls_backend_rustls()
            .redirect(redirect::Policy::none())
            // A proxy would resolve the name itself, past our resolver.
            .no_proxy()
            .timeout(config.timeout)
            .connect_timeout(config.connect_timeout.min(MAX_CONNECT_TIMEOUT))
            .pool_max_idle_per_host(config.max_idle_per_host)
            .tcp_keepalive(Some(Duration::from_secs(60)))
            .user_agent(user_agent.clone())
            .dns_resolver(Arc::new(GuardedResolver::new(config.allow_private, lookup)))
            .build()?;
        Ok(Self {
            client,
            allow_private: config.allow_private,
            user_agent,
            timeout: config.timeout,
        })
    }

    async fn attempt(
        &self,
        request: OutgoingRequest,
        traceparent: Option<String>,
    ) -> AttemptOutcome {
        let url = match Url::parse(&request.url) {
            Ok(url) if matches!(url.scheme(), "http" | "https") => url,
            Ok(url) => return failed(format!("invalid url: unsupported scheme {}", url.scheme())),
            Err(e) => return failed(format!("invalid url: {e}")),
        };
        // reqwest skips the resolver for address literals, so those are judged here.
        let host = match target_host(&url) {
            Ok(host) => host,
            Err(reason) => return failed(format!("invalid url: {reason}")),
        };
        if !self.allow_private {
            // The registration check, again at delivery time: a row written by a process
            // that allowed `http://` or private targets is refused here, not retried.
            if let Err(reason) = precheck(&host) {
                return refused(format!("blocked target: {reason}"));
            }
            if url.scheme() != "https" {
                return refused("refused target: url must use https".to_owned());
            }
        }
        let mut headers = match self.headers(&request.headers) {
            Ok(headers) => headers,
            Err(reason) => return failed(reason),
        };
        // The receiver's own trace continues this attempt's span.
        if let Some(value) = traceparent.and_then(|v| HeaderValue::from_str(&v).ok()) {
            headers.insert(HeaderName::from_static("traceparent"), value);
        }
        let response = match self
            .client
            .post(url)
            .headers(headers)
            .body(request.body)
            .send()
            .await
        {
            Ok(response) => response,
            Err(e) => {
                let blocked = find_source::<BlockedTarget>(&e).is_some();
                let mut outcome = failed(describe_error(&e, self.timeout));
                outcome.refused = blocked;
                return outcome;
            }
        };
        let status = response.status().as_u16();
        let retry_after_secs = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, SystemTime::now()));
        let body_excerpt = read_excerpt(response).await;
        AttemptOutcome {
            status: Some(status),
            retry_after_secs,
            error: None,
            body_excerpt,
            duration_ms: 0,
            refused: false,
        }
    }

    fn headers(&self, pairs: &[(String, String)]) -> Result<HeaderMap, String> {
        let mut headers = HeaderMap::with_capacity(pairs.len() + 2);
        for (name, value) in pairs {
            let name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| format!("invalid header name {name:?}"))?;
            let value = HeaderValue::from_str(value)
                .map_err(|_| format!("invalid value for header {name}"))?;
            headers.append(name, value);
        }
        // The body is always the signed JSON and the agent always ours, whatever came in.
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(USER_AGENT, self.user_agent.clone());
        Ok(headers)
    }
}

#[async_trait]
impl DeliveryClient for ReqwestDeliveryClient {
    async fn send(&self, request: OutgoingRequest) -> AttemptOutcome {
        let started = Instant::now();
        let span = crate::trace::attempt_span(&request);
        let traceparent = crate::trace::link_and_propagate(&span, request.trace_context.as_deref());
        let mut outcome =
            tracing::Instrument::instrument(self.attempt(request, traceparent), span.clone()).await;
        outcome.duration_ms = u32::try_from(started.elapsed().as_millis()).unwrap_or(u32::MAX);
        crate::trace::record_outcome(&span, &outcome);
        outcome
    }
}

fn refused(error: String) -> AttemptOutcome {
    AttemptOutcome {
        error: Some(error),
        refused: true,
        ..AttemptOutcome::default()
    }
}

fn failed(error: String) -> AttemptOutcome {
    AttemptOutcome {
        error: Some(error),
        ..AttemptOutcome::default()
    }
}

/// A short, human description of a transport failure.
fn describe_error(err: &reqwest::Error, timeout: Duration) -> String {
    if let Some(blocked) = find_source::<BlockedTarget>(err) {
        return format!("blocked target: {blocked}");
    }
    if err.is_timeout() {
        if err.is_connect() {
            return "connect timeout: the receiver did not accept the connection in time"
                .to_owned();
        }
        return format!("timeout: no response within {} ms", timeout.as_millis());
    }
    if err.is_dns() {
        return format!("dns error: {}", root_cause(err));
    }
    if err.is_connect() {
        return format!("connect error: {}", root_cause(err));
    }
    format!("request failed: {}", root_cause(err))
}

fn find_source<'a, E: StdError + 'static>(err: &'a (dyn StdError + 'static)) -> Option<&'a E> {
    let mut current = Some(err);
    while let Some(e) = current {
        if let Some(found) = e.downcast_ref::<E>() {
            return Some(found);
        }
        current = e.source();
    }
    None
}

fn root_cause(err: &(dyn StdError + 'static)) -> String {
    let mut current = err;
    while let Some(next) = current.source() {
        current = next;
    }
    current.to_string()
}

/// Reads at most [`BODY_READ_CAP`] bytes of the body and keeps the first [`EXCERPT_BYTES`].
async fn read_excerpt(mut response: Response) -> Option<String> {
    let mut kept = Vec::new();
    let mut seen = 0usize;
    while seen < BODY_READ_CAP {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                seen += chunk.len();
                let room = (EXCERPT_BYTES + UTF8_SLACK).saturating_sub(kept.len());
                kept.extend_from_slice(&chunk[..chunk.len().min(room)]);
            }
            Ok(None) => break,
            Err(e) => {
                // The status already arrived, which is what the verdict rests on; a body
                // cut short only shortens the excerpt.
                tracing::debug!(error = %e, "response body read failed");
                break;
            }
        }
    }
    excerpt(&kept)
}

/// Lossy UTF-8 of `bytes`, cut to at most [`EXCERPT_BYTES`] on a character boundary.
fn excerpt(bytes: &[u8]) -> Option<String> {
    if bytes.is_empty() {
        return None;
    }
    let mut text = String::from_utf8_lossy(bytes).into_owned();
    if text.len() > EXCERPT_BYTES {
        let mut cut = EXCERPT_BYTES;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
    }
    Some(text)
}

/// `Retry-After` as seconds from `now`: delta-seconds or an HTTP-date (a past date is 0).
fn parse_retry_after(value: &str, now: SystemTime) -> Option<u64> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        // Absurdly long delays still mean "a long time"; the engine clamps.
        return Some(value.parse().unwrap_or(u64::MAX));
    }
    let at = parse_http_date(value)?;
    let now = now.duration_since(UNIX_EPOCH).ok()?.as_secs();
    Some(at.saturating_sub(now))
}

/// Unix seconds of an HTTP-date in any of its three formats (RFC 9110 §5.6.7):
/// `Sun, 06 Nov 1994 08:49:37 GMT`, `Sunday, 06-Nov-94 08:49:37 GMT`,
/// `Sun Nov  6 08:49:37 1994`.
fn parse_http_date(value: &str) -> Option<u64> {
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(UNIX_EPOCH).ok()?.as_secs())
}

#[cfg(test)]
mod tests;
