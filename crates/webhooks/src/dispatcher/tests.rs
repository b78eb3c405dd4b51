use std::collections::{HashSet, VecDeque};
use std::sync::Mutex;

use async_trait::async_trait;
use serde_json::json;
use stratum_core::StoreError;
use stratum_crypto::{generate_whsec, verify_standard, verify_stratum};
use time::macros::datetime;

use super::*;
use crate::{MockDeliveryClient, MockDeliveryQueue};
use serde_json::Value;
use std::sync::atomic::{AtomicUsize, Ordering};
use stratum_crypto::Keyring;

const NOW: OffsetDateTime = datetime!(2026-01-31 09:15:00 UTC);
const EVENT_AT: OffsetDateTime = datetime!(2026-01-31 09:14:59.123456 UTC);
const MASTER: &str = "dispatcher-test-master-key-0123456789";
const OTHER_MASTER: &str = "some-other-process-key-0123456789abc";
const PLAIN_SECRET: &str = "a-plain-secret-of-reasonable-length";

fn keyring() -> Keyring {
    Keyring::from_env_values(MASTER, None).unwrap()
}

fn fixed_clock() -> Arc<dyn Clock> {
    stratum_core::testing::fixed_clock(NOW)
}

fn delivery(secret_encrypted: String, webhook_id: Uuid, attempts: i32) -> ClaimedDelivery {
    ClaimedDelivery {
        id: Uuid::new_v4(),
        lease_id: Uuid::new_v4(),
        attempts,
        webhook_id,
        url: format!("https://receiver.example/{webhook_id}"),
        secret_encrypted,
        previous_secrets: Vec::new(),
        fifo: false,
        not_before: None,
        event_id: Uuid::new_v4(),
        event_type: "tenant.created".to_owned(),
        tenant_id: Some(Uuid::new_v4()),
        payload: json!({"name": "Acme", "slug": "acme", "nested": {"k": [1, 2]}}),
        event_created_at: EVENT_AT,
        trace_context: None,
    }
}

fn good_delivery(attempts: i32) -> ClaimedDelivery {
    let secret = keyring().encrypt_str(PLAIN_SECRET).unwrap();
    delivery(secret, Uuid::new_v4(), attempts)
}

fn dispatcher_with(
    queue: impl DeliveryQueue + 'static,
    client: impl DeliveryClient + 'static,
    config: DispatcherConfig,
) -> Dispatcher {
    Dispatcher::new(
        Arc::new(queue),
        Arc::new(client),
        SharedKeyring::new(keyring()),
        fixed_clock(),
        RetryPolicy::default(),
        config,
    )
}

fn dispatcher(client: MockDeliveryClient) -> Dispatcher {
    dispatcher_with(
        MockDeliveryQueue::new(),
        client,
        DispatcherConfig::default(),
    )
}

fn client_answering(outcome: AttemptOutcome) -> MockDeliveryClient {
    let mut client = MockDeliveryClient::new();
    client.expect_send().times(1).return_const(outcome);
    client
}

fn status(code: u16) -> AttemptOutcome {
    AttemptOutcome {
        status: Some(code),
        duration_ms: 12,
        ..AttemptOutcome::default()
    }
}

fn header<'a>(req: &'a OutgoingRequest, name: &str) -> &'a str {
    let found: Vec<_> = req.headers.iter().filter(|(n, _)| n == name).collect();
    assert_eq!(found.len(), 1, "exactly one {name} header");
    &found[0].1
}

fn retry_wait(verdict: &Verdict) -> time::Duration {
    match verdict {
        Verdict::Retry { at } => *at - NOW,
        other => panic!("expected a retry, got {other:?}"),
    }
}

// ---- build_request ----

#[test]
fn body_has_the_wire_fields_in_order() {
    let d = good_delivery(0);
    let req = dispatcher(MockDeliveryClient::new())
        .build_request(&d, &keyring(), NOW)
        .unwrap();
    let want = format!(
        r#"{{"id":"{}","event":"tenant.created","timestamp":"2026-01-31T09:14:59.123Z","tenant_id":"{}","data":{{"name":"Acme","nested":{{"k":[1,2]}},"slug":"acme"}}}}"#,
        d.event_id,
        d.tenant_id.unwrap()
    );
    assert_eq!(String::from_utf8(req.body).unwrap(), want);
    assert_eq!(req.url, d.url);
}

#[test]
fn global_event_has_null_tenant() {
    let d = ClaimedDelivery {
        tenant_id: None,
        ..good_delivery(0)
    };
    let req = dispatcher(MockDeliveryClient::new())
        .build_request(&d, &keyring(), NOW)
        .unwrap();
    let body: Value = serde_json::from_slice(&req.body).unwrap();
    assert_eq!(body["tenant_id"], Value::Null);
    assert!(String::from_utf8(req.body)
        .unwrap()
        .contains(r#""tenant_id":null,"data":"#));
}

#[test]
fn headers_and_both_signatures_verify() {
    let now_unix = NOW.unix_timestamp();
    for secret in [generate_whsec(), PLAIN_SECRET.to_owned()] {
        let d = delivery(keyring().encrypt_str(&secret).unwrap(), Uuid::new_v4(), 3);
        let req = dispatcher(MockDeliveryClient::new())
            .build_request(&d, &keyring(), NOW)
            .unwrap();
        let id = d.id.to_string();
        assert_eq!(header(&req, "X-Stratum-Delivery"), id);
        assert_eq!(header(&req, "webhook-id"), id);
        assert_eq!(header(&req, "X-Stratum-Event"), "tenant.created");
        let ts = header(&req, "X-Stratum-Timestamp");
        assert_eq!(ts, now_unix.to_string());
        assert_eq!(header(&req, "webhook-timestamp"), ts);
        assert_eq!(req.headers.len(), 7);
        let stratum_sig = header(&req, "X-Stratum-Signature");
        assert!(stratum_sig.starts_with("sha256="));
        assert_eq!(
            verify_stratum(secret.as_bytes(), ts, stratum_sig, &req.body, now_unix, 300),
            Ok(())
        );
        let standard_sig = header(&req, "webhook-signature");
        assert!(standard_sig.starts_with("v1,"));
        assert_eq!(
            verify_standard(&secret, &id, ts, standard_sig, &req.body, now_unix, 300),
            Ok(())
        );
        // The signature covers this delivery id, not another.
        assert!(verify_standard(
            &secret,
            &Uuid::new_v4().to_string(),
            ts,
            standard_sig,
            &req.body,
            now_unix,
            300
        )
        .is_err());
    }
}

#[test]
fn build_errors_are_told_apart() {
    let stranger = Keyring::from_env_values(OTHER_MASTER, None).unwrap();
    let d = delivery(
        stranger.encrypt_str(PLAIN_SECRET).unwrap(),
        Uuid::new_v4(),
        0,
    );
    let dispatcher = dispatcher(MockDeliveryClient::new());
    assert_eq!(
        dispatcher.build_request(&d, &keyring(), NOW),
        Err(BuildError::KeyUnavailable {
            key_id: stranger.current().key_id().to_owned()
        })
    );
    for bad in [
        corrupt(&keyring().encrypt_str(PLAIN_SECRET).unwrap()),
        "not an envelope".to_owned(),
        keyring().encrypt_str("whsec_!!!").unwrap(),
    ] {
        let d = delivery(bad.clone(), Uuid::new_v4(), 0);
        assert!(
            matches!(
                dispatcher.build_request(&d, &keyring(), NOW),
                Err(BuildError::SecretUnreadable(_))
            ),
            "{bad}"
        );
    }
}

/// Flips one character of the ciphertext part, keeping the envelope's shape.
fn corrupt(envelope: &str) -> String {
    let (head, ct) = envelope.rsplit_once(':').unwrap();
    let mut chars: Vec<char> = ct.chars().collect();
    let i = chars.len() / 2;
    chars[i] = if chars[i] == 'A' { 'B' } else { 'A' };
    format!("{head}:{}", chars.into_iter().collect::<String>())
}

// ---- attempt ----

#[tokio::test]
async fn success_on_2xx() {
    let d = good_delivery(0);
    let (id, webhook) = (d.id, d.webhook_id);
    let mut client = MockDeliveryClient::new();
    let expected_url = d.url.clone();
    client
        .expect_send()
        .withf(move |req| {
            req.url == expected_url
                && req
                    .headers
                    .contains(&("X-Stratum-Delivery".to_owned(), id.to_string()))
        })
        .times(1)
        .return_const(status(204));
    let dispatcher = dispatcher(client);
    let c = dispatcher.attempt(d.clone()).await;
    assert_eq!(
        c,
        Completion {
            delivery_id: id,
            event_id: d.event_id,
            lease_id: d.lease_id,
            webhook_id: webhook,
            attempt: 1,
            outcome: status(204),
            verdict: Verdict::Success,
        }
    );
    let stats = dispatcher.stats();
    assert_eq!(stats.attempts_total.load(Ordering::Relaxed), 1);
    assert_eq!(stats.successes.load(Ordering::Relaxed), 1);
    assert_eq!(stats.failures.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn server_error_on_first_attempt_retries_after_about_five_seconds() {
    let c = dispatcher(client_answering(status(500)))
        .attempt(good_delivery(0))
        .await;
    assert_eq!(c.attempt, 1);
    assert_eq!(c.outcome, status(500));
    let wait = retry_wait(&c.verdict);
    assert!(
        wait >= time::Duration::seconds(4) && wait <= time::Duration::seconds(6),
        "{wait}"
    );
}

#[tokio::test]
async fn server_error_on_last_attempt_dead_letters() {
    let dispatcher = dispatcher(client_answering(status(500)));
    let c = dispatcher.attempt(good_delivery(7)).await;
    assert_eq!(c.attempt, 8);
    assert_eq!(c.verdict, Verdict::Failed);
    let stats = dispatcher.stats();
    assert_eq!(stats.dead_lettered.load(Ordering::Relaxed), 1);
    assert_eq!(stats.failures.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn gone_on_410() {
    let dispatcher = dispatcher(client_answering(status(410)));
    let c = dispatcher.attempt(good_delivery(2)).await;
    assert_eq!((c.attempt, c.verdict), (3, Verdict::Gone));
    assert_eq!(dispatcher.stats().gone.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn retry_after_is_honoured_and_clamped() {
    let answer = |code, secs| AttemptOutcome {
        retry_after_secs: Some(secs),
        ..status(code)
    };
    let c = dispatcher(client_answering(answer(429, 120)))
        .attempt(good_delivery(0))
        .await;
    assert_eq!(retry_wait(&c.verdict), time::Duration::seconds(120));
    let c = dispatcher(client_answering(answer(503, 1)))
        .attempt(good_delivery(0))
        .await;
    let wait = retry_wait(&c.verdict);
    assert!(
        wait >= time::Duration::seconds(4) && wait <= time::Duration::seconds(6),
        "{wait}"
    );
}

#[tokio::test]
async fn transport_error_retries() {
    let outcome = AttemptOutcome {
        error: Some("connection refused".to_owned()),
        ..AttemptOutcome::default()
    };
    let c = dispatcher(client_answering(outcome.clone()))
        .attempt(good_delivery(1))
        .await;
    assert_eq!(c.attempt, 2);
    assert_eq!(c.outcome, outcome);
    let wait = retry_wait(&c.verdict);
    assert!(
        wait >= time::Duration::seconds(8) && wait <= time::Duration::seconds(12),
        "{wait}"
    );
}

#[tokio::test]
async fn secret_under_unknown_key_is_released_unattempted() {
    let stranger = Keyring::from_env_values(OTHER_MASTER, None).unwrap();
    let d = delivery(
        stranger.encrypt_str(PLAIN_SECRET).unwrap(),
        Uuid::new_v4(),
        4,
    );
    let mut client = MockDeliveryClient::new();
    client.expect_send().times(0);
    let dispatcher = dispatcher(client);
    let c = dispatcher.attempt(d).await;
    assert_eq!(
        c.verdict,
        Verdict::Release {
            at: NOW + time::Duration::seconds(30)
        }
    );
    assert_eq!(c.attempt, 4, "a release does not count as an attempt");
    assert_eq!(c.outcome.status, None);
    let error = c.outcome.error.unwrap();
    assert!(error.contains(stranger.current().key_id()), "{error}");
    assert!(error.contains("does not hold"), "{error}");
    let stats = dispatcher.stats();
    assert_eq!(stats.released.load(Ordering::Relaxed), 1);
    assert_eq!(stats.attempts_total.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn corrupt_secret_is_a_failed_attempt() {
    let corrupted = corrupt(&keyring().encrypt_str(PLAIN_SECRET).unwrap());
    for (attempts, last) in [(0, false), (7, true)] {
        let mut client = MockDeliveryClient::new();
        client.expect_send().times(0);
        let dispatcher = dispatcher(client);
        let c = dispatcher
            .attempt(delivery(corrupted.clone(), Uuid::new_v4(), attempts))
            .await;
        assert_eq!(c.attempt, attempts + 1);
        let error = c.outcome.error.clone().unwrap();
        assert!(
            error.starts_with("webhook secret cannot be decrypted: "),
            "{error}"
        );
        assert_eq!(c.outcome.status, None);
        if last {
            assert_eq!(c.verdict, Verdict::Failed);
        } else {
            retry_wait(&c.verdict);
        }
        assert_eq!(dispatcher.stats().attempts_total.load(Ordering::Relaxed), 1);
    }
}

#[test]
fn jitter_is_in_unit_interval_and_varies() {
    let samples: Vec<f64> = (0..1000).map(|_| random_jitter()).collect();
    assert!(samples.iter().all(|j| (0.0..1.0).contains(j)));
    let distinct: HashSet<u64> = samples.iter().map(|j| j.to_bits()).collect();
    assert!(distinct.len() > 990);
    assert!(samples.iter().any(|j| *j < 0.5) && samples.iter().any(|j| *j >= 0.5));
}

#[test]
fn config_defaults_and_zero_limits() {
    let c = DispatcherConfig::default();
    assert_eq!(
        (
            c.concurrency,
            c.per_webhook,
            c.initial_per_webhook,
            c.batch_size
        ),
        (512, 256, 8, 256)
    );
    assert_eq!((c.aimd().initial, c.aimd().max), (8, 256));
    assert_eq!(c.lease, Duration::from_secs(120));
    assert_eq!(
        c.user_agent,
        format!("Stratum-Webhooks/{}", env!("CARGO_PKG_VERSION"))
    );
    let zero = DispatcherConfig {
        concurrency: 0,
        per_webhook: 0,
        initial_per_webhook: 0,
        batch_size: 0,
        completion_batch: 0,
        ..DispatcherConfig::default()
    }
    .normalized();
    assert_eq!(
        (
            zero.concurrency,
            zero.per_webhook,
            zero.initial_per_webhook,
            zero.batch_size,
            zero.completion_batch
        ),
        (1, 1, 1, 1, 1)
    );
    // The initial limit never exceeds the cap.
    let capped = DispatcherConfig {
        per_webhook: 4,
        initial_per_webhook: 8,
        ..DispatcherConfig::default()
    }
    .normalized();
    assert_eq!(capped.initial_per_webhook, 4);
}

// ---- run ----

/// Records completions and wakes the test once `expected` distinct ones were written.
#[derive(Clone, Default)]
struct Written {
    completions: Arc<Mutex<Vec<Completion>>>,
    batch_sizes: Arc<Mutex<Vec<usize>>>,
    all_in: Arc<Notify>,
}

impl Written {
    fn push(&self, batch: Vec<Completion>, expected: usize) -> usize {
        let n = batch.len();
        self.batch_sizes.lock().unwrap().push(n);
        let mut all = self.completions.lock().unwrap();
        all.extend(batch);
        if all.len() >= expected {
            self.all_in.notify_one();
        }
        n
    }

    fn take(&self) -> Vec<Completion> {
        self.completions.lock().unwrap().clone()
    }
}

fn run_config() -> DispatcherConfig {
    DispatcherConfig {
        concurrency: 8,
        per_webhook: 8,
        batch_size: 8,
        ..DispatcherConfig::default()
    }
}

/// Runs `dispatcher` until `written` holds everything, then signals shutdown and waits
/// for `run` to return. The timeout only turns a hang into a failure (virtual time).
async fn run_until_written(dispatcher: &Dispatcher, written: &Written) {
    let (stop, stop_rx) = watch::channel(false);
    let worker = dispatcher.clone();
    let handle = tokio::spawn(async move { worker.run(stop_rx, Arc::new(Notify::new())).await });
    tokio::time::timeout(Duration::from_secs(3600), written.all_in.notified())
        .await
        .expect("every delivery should be completed");
    stop.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(3600), handle)
        .await
        .expect("run should return after shutdown")
        .unwrap();
}

fn assert_each_once(completions: &[Completion], deliveries: &[ClaimedDelivery]) {
    let mut got: Vec<Uuid> = completions.iter().map(|c| c.delivery_id).collect();
    let mut want: Vec<Uuid> = deliveries.iter().map(|d| d.id).collect();
    got.sort();
    want.sort();
    assert_eq!(got, want, "each delivery completed exactly once");
}

#[tokio::test(start_paused = true)]
async fn run_completes_a_batch_once_each_and_stops() {
    let deliveries: Vec<_> = (0..5).map(|_| good_delivery(0)).collect();
    let n = deliveries.len();
    let written = Written::default();
    let mut queue = MockDeliveryQueue::new();
    let mut pending = Some(deliveries.clone());
    queue
        .expect_claim()
        .returning(move |limit, per_webhook, _skip, lease| {
            assert!((1..=8).contains(&limit), "limit {limit}");
            // Twice the initial limit: a wave sending and one waiting.
            assert_eq!(per_webhook, 16);
            assert_eq!(lease, Duration::from_secs(120));
            Ok(pending.take().unwrap_or_default())
        });
    let sink = written.clone();
    queue
        .expect_complete()
        .returning(move |batch| Ok(sink.push(batch, n)));
    let mut client = MockDeliveryClient::new();
    client.expect_send().times(n).return_const(status(200));
    let dispatcher = dispatcher_with(queue, client, run_config());

    run_until_written(&dispatcher, &written).await;

    let completions = written.take();
    assert_each_once(&completions, &deliveries);
    assert!(completions
        .iter()
        .all(|c| c.verdict == Verdict::Success && c.attempt == 1));
    // Results that finish together reach storage as one write.
    assert_eq!(*written.batch_sizes.lock().unwrap(), vec![n]);
    let stats = dispatcher.stats();
    assert_eq!(stats.successes.load(Ordering::Relaxed), 5);
    assert_eq!(stats.in_flight.load(Ordering::Relaxed), 0);
}

#[tokio::test(start_paused = true)]
async fn completion_writes_are_capped_at_the_batch_size() {
    let deliveries: Vec<_> = (0..5).map(|_| good_delivery(0)).collect();
    let n = deliveries.len();
    let written = Written::default();
    let mut queue = MockDeliveryQueue::new();
    let mut pending = Some(deliveries.clone());
    queue
        .expect_claim()
        .returning(move |_, _, _, _| Ok(pending.take().unwrap_or_default()));
    let sink = written.clone();
    queue
        .expect_complete()
        .returning(move |batch| Ok(sink.push(batch, n)));
    let mut client = MockDeliveryClient::new();
    client.expect_send().times(n).return_const(status(200));
    let config = DispatcherConfig {
        completion_batch: 2,
        ..run_config()
    };
    let dispatcher = dispatcher_with(queue, client, config);

    run_until_written(&dispatcher, &written).await;

    assert_each_once(&written.take(), &deliveries);
    let sizes = written.batch_sizes.lock().unwrap().clone();
    assert!(sizes.iter().all(|s| (1..=2).contains(s)), "{sizes:?}");
}

#[tokio::test(start_paused = true)]
async fn storage_errors_are_retried_not_fatal() {
    let deliveries: Vec<_> = (0..3).map(|_| good_delivery(0)).collect();
    let n = deliveries.len();
    let written = Written::default();
    let mut queue = MockDeliveryQueue::new();
    let mut claims = 0;
    let mut pending = Some(deliveries.clone());
    queue.expect_claim().returning(move |_, _, _, _| {
        claims += 1;
        if claims <= 2 {
            return Err(StoreError::Unavailable);
        }
        Ok(pending.take().unwrap_or_default())
    });
    let sink = written.clone();
    let mut writes = 0;
    queue.expect_complete().returning(move |batch| {
        writes += 1;
        if writes <= 2 {
            return Err(StoreError::Internal("connection reset".into()));
        }
        Ok(sink.push(batch, n))
    });
    let mut client = MockDeliveryClient::new();
    client.expect_send().times(n).return_const(status(200));
    let dispatcher = dispatcher_with(queue, client, run_config());

    run_until_written(&dispatcher, &written).await;

    assert_each_once(&written.take(), &deliveries);
}

/// A receiver per webhook URL that takes `latency` per request and records the most
/// requests it ever saw at once, per webhook and overall.
#[derive(Default)]
struct SlowReceivers {
    latency: HashMap<String, Duration>,
    /// URLs whose requests time out (after their latency) instead of answering.
    time_out: HashSet<String>,
    state: Mutex<ReceiverState>,
}

#[derive(Default)]
struct ReceiverState {
    now: HashMap<String, usize>,
    max: HashMap<String, usize>,
    total_now: usize,
    total_max: usize,
}

#[async_trait]
impl DeliveryClient for SlowReceivers {
    async fn send(&self, request: OutgoingRequest) -> AttemptOutcome {
        {
            let mut s = self.state.lock().unwrap();
            let now = s.now.entry(request.url.clone()).or_default();
            *now += 1;
            let now = *now;
            let max = s.max.entry(request.url.clone()).or_default();
            *max = (*max).max(now);
            s.total_now += 1;
            s.total_max = s.total_max.max(s.total_now);
        }
        let latency = self
            .latency
            .get(&request.url)
            .copied()
            .unwrap_or(Duration::from_millis(10));
        tokio::time::sleep(latency).await;
        let mut s = self.state.lock().unwrap();
        *s.now.get_mut(&request.url).unwrap() -= 1;
        s.total_now -= 1;
        if self.time_out.contains(&request.url) {
            return AttemptOutcome {
                error: Some("timed out".to_owned()),
                duration_ms: u32::try_from(latency.as_millis()).unwrap_or(u32::MAX),
                ..AttemptOutcome::default()
            };
        }
        AttemptOutcome {
            duration_ms: u32::try_from(latency.as_millis()).unwrap_or(u32::MAX),
            ..status(200)
        }
    }
}

/// A queue in memory. `honour_per_webhook` decides whether `claim` applies its
/// rooms (and `per_webhook` for the others); a room of 0 is always honoured.
struct MemoryQueue {
    due: Mutex<VecDeque<ClaimedDelivery>>,
    honour_per_webhook: bool,
    claims: Mutex<Vec<(usize, usize)>>,
    written: Written,
    expected: usize,
    /// How long a claim takes (its rooms are those of when it started).
    claim_time: Duration,
}

impl MemoryQueue {
    fn new(due: Vec<ClaimedDelivery>, honour_per_webhook: bool, written: Written) -> Self {
        Self {
            expected: due.len(),
            due: Mutex::new(due.into()),
            honour_per_webhook,
            claims: Mutex::new(Vec::new()),
            written,
            claim_time: Duration::ZERO,
        }
    }
}

#[async_trait]
impl DeliveryQueue for MemoryQueue {
    async fn claim(
        &self,
        limit: usize,
        per_webhook: usize,
        rooms: Vec<(Uuid, usize)>,
        _lease: Duration,
    ) -> Result<Vec<ClaimedDelivery>, StoreError> {
        self.claims.lock().unwrap().push((limit, per_webhook));
        if !self.claim_time.is_zero() {
            tokio::time::sleep(self.claim_time).await;
        }
        let rooms: HashMap<Uuid, usize> = rooms.into_iter().collect();
        let mut due = self.due.lock().unwrap();
        let mut taken = Vec::new();
        let mut per: HashMap<Uuid, usize> = HashMap::new();
        let mut rest = VecDeque::new();
        while let Some(d) = due.pop_front() {
            let count = per.entry(d.webhook_id).or_default();
            let room = rooms.get(&d.webhook_id).copied();
            let allowed = room != Some(0)
                && (!self.honour_per_webhook || *count < room.unwrap_or(per_webhook))
                && taken.len() < limit;
            if allowed {
                *count += 1;
                taken.push(d);
            } else {
                rest.push_back(d);
            }
        }
        *due = rest;
        Ok(taken)
    }

    async fn complete(&self, completions: Vec<Completion>) -> Result<usize, StoreError> {
        Ok(self.written.push(completions, self.expected))
    }
}

fn deliveries_for(webhook: Uuid, n: usize) -> Vec<ClaimedDelivery> {
    let secret = keyring().encrypt_str(PLAIN_SECRET).unwrap();
    (0..n)
        .map(|_| delivery(secret.clone(), webhook, 0))
        .collect()
}

#[tokio::test(start_paused = true)]
async fn a_webhook_whose_sends_finish_during_a_claim_is_claimed_again_without_a_poll() {
    // A fast receiver answers a whole wave while a claim runs. The claim was asked for no
    // room for its webhook (its wave was still out), so it brings none; the webhook then
    // has room again, and the next claim must not wait for a wake-up or a poll.
    let w = Uuid::new_v4();
    let due = deliveries_for(w, 200);
    let written = Written::default();
    let mut queue = MemoryQueue::new(due.clone(), true, written.clone());
    queue.claim_time = Duration::from_millis(50);
    let queue = Arc::new(queue);
    let client = Arc::new(SlowReceivers::default()); // 10 ms per request
    let config = DispatcherConfig {
        poll_interval: Duration::from_secs(3600),
        ..DispatcherConfig::default()
    };
    let dispatcher = Dispatcher::new(
        queue.clone(),
        client,
        SharedKeyring::new(keyring()),
        fixed_clock(),
        RetryPolicy::default(),
        config,
    );
    let (stop, stop_rx) = watch::channel(false);
    // The listener's wake-up on connecting is already there when the loop starts.
    let wake = Arc::new(Notify::new());
    wake.notify_one();
    let worker = dispatcher.clone();
    let handle = tokio::spawn(async move { worker.run(stop_rx, wake).await });
    let started = tokio::time::Instant::now();
    tokio::time::timeout(Duration::from_secs(3600), written.all_in.notified())
        .await
        .expect("every delivery should be completed");
    let took = started.elapsed();
    stop.send(true).unwrap();
    handle.await.unwrap();
    assert_each_once(&written.take(), &due);
    // 200 deliveries at 50 ms a claim take well under a second; a wait for the poll takes
    // an hour.
    assert!(took < Duration::from_secs(60), "took {took:?}");
    assert!(queue.claims.lock().unwrap().len() >= 3);
}

#[tokio::test(start_paused = true)]
async fn per_webhook_limit_holds_even_when_the_queue_over_delivers() {
    let (a, b, c) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let mut due = deliveries_for(a, 12);
    due.extend(deliveries_for(b, 12));
    due.extend(deliveries_for(c, 2));
    let written = Written::default();
    // This queue ignores `per_webhook`, so only the dispatcher can keep the limit.
    let queue = Arc::new(MemoryQueue::new(due.clone(), false, written.clone()));
    let client = Arc::new(SlowReceivers::default());
    let config = DispatcherConfig {
        concurrency: 6,
        per_webhook: 2,
        batch_size: 4,
        ..DispatcherConfig::default()
    };
    let dispatcher = Dispatcher::new(
        queue.clone(),
        client.clone(),
        SharedKeyring::new(keyring()),
        fixed_clock(),
        RetryPolicy::default(),
        config,
    );

    run_until_written(&dispatcher, &written).await;

    assert_each_once(&written.take(), &due);
    let state = client.state.lock().unwrap();
    for webhook in [a, b] {
        let url = format!("https://receiver.example/{webhook}");
        // Reaching 2 shows the sends really overlapped, so the bound was tested.
        assert_eq!(state.max.get(&url), Some(&2), "{url}");
    }
    assert!(state.total_max <= 6, "global limit: {}", state.total_max);
    for (limit, per_webhook) in queue.claims.lock().unwrap().iter() {
        assert!((1..=4).contains(limit), "claim limit {limit}");
        // An unknown webhook may bring a wave sending and one waiting.
        assert_eq!(*per_webhook, 4);
    }
}

#[tokio::test(start_paused = true)]
async fn a_slow_receiver_does_not_hold_up_the_others() {
    let (slow, fast) = (Uuid::new_v4(), Uuid::new_v4());
    // The slow webhook's deliveries are first in line.
    let mut due = deliveries_for(slow, 20);
    due.extend(deliveries_for(fast, 20));
    let written = Written::default();
    let queue = Arc::new(MemoryQueue::new(due.clone(), true, written.clone()));
    let client = Arc::new(SlowReceivers {
        latency: HashMap::from([(
            format!("https://receiver.example/{slow}"),
            Duration::from_secs(10),
        )]),
        ..SlowReceivers::default()
    });
    let config = DispatcherConfig {
        concurrency: 8,
        per_webhook: 2,
        batch_size: 8,
        ..DispatcherConfig::default()
    };
    let dispatcher = Dispatcher::new(
        queue,
        client,
        SharedKeyring::new(keyring()),
        fixed_clock(),
        RetryPolicy::default(),
        config,
    );

    run_until_written(&dispatcher, &written).await;

    let completions = written.take();
    assert_each_once(&completions, &due);
    let last_fast = completions
        .iter()
        .rposition(|c| c.webhook_id == fast)
        .unwrap();
    let slow_before = completions[..last_fast]
        .iter()
        .filter(|c| c.webhook_id == slow)
        .count();
    // Every fast delivery (10 ms each) went out while the first slow ones (10 s each)
    // were still in flight; without per-webhook limits they would queue behind all 20.
    assert_eq!(slow_before, 0);
}

#[tokio::test(start_paused = true)]
async fn limits_adapt_fast_receiver_to_hundreds_timing_out_one_to_a_few() {
    let (slow, fast) = (Uuid::new_v4(), Uuid::new_v4());
    let slow_url = format!("https://receiver.example/{slow}");
    let fast_url = format!("https://receiver.example/{fast}");
    let mut due = deliveries_for(slow, 60);
    due.extend(deliveries_for(fast, 3000));
    let written = Written::default();
    let queue = Arc::new(MemoryQueue::new(due.clone(), true, written.clone()));
    let client = Arc::new(SlowReceivers {
        latency: HashMap::from([
            (slow_url.clone(), Duration::from_secs(10)),
            (fast_url.clone(), Duration::from_millis(5)),
        ]),
        time_out: HashSet::from([slow_url.clone()]),
        ..SlowReceivers::default()
    });
    let config = DispatcherConfig {
        concurrency: 512,
        per_webhook: 256,
        initial_per_webhook: 8,
        batch_size: 256,
        ..DispatcherConfig::default()
    };
    let dispatcher = Dispatcher::new(
        queue,
        client.clone(),
        SharedKeyring::new(keyring()),
        fixed_clock(),
        RetryPolicy::default(),
        config,
    );

    run_until_written(&dispatcher, &written).await;

    assert_each_once(&written.take(), &due);
    let state = client.state.lock().unwrap();
    let fast_max = state.max[&fast_url];
    let slow_max = state.max[&slow_url];
    assert!(
        fast_max >= 200,
        "fast receiver reached {fast_max} in flight"
    );
    assert!(
        slow_max <= 8,
        "timing-out receiver reached {slow_max} in flight"
    );
    let snapshot = dispatcher.snapshot();
    let limit_of = |id: Uuid| {
        snapshot
            .webhooks
            .iter()
            .find(|w| w.webhook_id == id)
            .map(|w| w.limit)
    };
    assert_eq!(limit_of(slow), Some(1));
    assert!(limit_of(fast).unwrap() >= 200, "{snapshot:?}");
    assert_eq!(snapshot.in_flight, 0);
    assert!(snapshot.last_completion_batch_size > 0);
}

#[tokio::test(start_paused = true)]
async fn deliveries_waiting_past_half_their_lease_are_given_back_unsent() {
    /// Every request times out after 10 s; remembers which deliveries were sent.
    #[derive(Default)]
    struct TimesOut(Mutex<HashSet<String>>);
    #[async_trait]
    impl DeliveryClient for TimesOut {
        async fn send(&self, request: OutgoingRequest) -> AttemptOutcome {
            let id = header(&request, "X-Stratum-Delivery").to_owned();
            self.0.lock().unwrap().insert(id);
            tokio::time::sleep(Duration::from_secs(10)).await;
            AttemptOutcome {
                error: Some("timed out".to_owned()),
                duration_ms: 10_000,
                ..AttemptOutcome::default()
            }
        }
    }
    let webhook = Uuid::new_v4();
    let due = deliveries_for(webhook, 8);
    let written = Written::default();
    let queue = Arc::new(MemoryQueue::new(due.clone(), true, written.clone()));
    let client = Arc::new(TimesOut::default());
    // Four sending and four waiting; the first four take 10 s, past half the 15 s lease.
    let config = DispatcherConfig {
        concurrency: 64,
        per_webhook: 4,
        initial_per_webhook: 4,
        batch_size: 64,
        lease: Duration::from_secs(15),
        ..DispatcherConfig::default()
    };
    let dispatcher = Dispatcher::new(
        queue,
        client.clone(),
        SharedKeyring::new(keyring()),
        fixed_clock(),
        RetryPolicy::default(),
        config,
    );

    run_until_written(&dispatcher, &written).await;

    let completions = written.take();
    assert_each_once(&completions, &due);
    let sent = client.0.lock().unwrap();
    let (given_back, attempted): (Vec<_>, Vec<_>) = completions
        .iter()
        .partition(|c| matches!(c.verdict, Verdict::Release { .. }));
    assert_eq!((given_back.len(), attempted.len()), (4, 4));
    for c in given_back {
        assert!(
            !sent.contains(&c.delivery_id.to_string()),
            "given back unsent"
        );
        assert_eq!(c.attempt, 0, "not counted as an attempt");
    }
    for c in attempted {
        assert!(sent.contains(&c.delivery_id.to_string()));
        assert!(matches!(c.verdict, Verdict::Retry { .. }));
    }
}

#[tokio::test(start_paused = true)]
async fn shutdown_lets_in_flight_sends_finish_and_flushes() {
    let deliveries: Vec<_> = (0..4).map(|_| good_delivery(0)).collect();
    let n = deliveries.len();
    let written = Written::default();
    let (stop, stop_rx) = watch::channel(false);
    let stop = Arc::new(stop);

    let mut queue = MockDeliveryQueue::new();
    let mut pending = Some(deliveries.clone());
    let stopped = Arc::clone(&stop);
    queue.expect_claim().returning(move |_, _, _, _| {
        assert!(!*stopped.borrow(), "no claims after shutdown");
        Ok(pending.take().unwrap_or_default())
    });
    let sink = written.clone();
    queue
        .expect_complete()
        .returning(move |batch| Ok(sink.push(batch, n)));

    /// Signals shutdown as soon as a send starts, then takes a while to answer.
    struct StopsMidway(Arc<watch::Sender<bool>>);
    #[async_trait]
    impl DeliveryClient for StopsMidway {
        async fn send(&self, _request: OutgoingRequest) -> AttemptOutcome {
            self.0.send_replace(true);
            tokio::time::sleep(Duration::from_secs(5)).await;
            status(200)
        }
    }

    let dispatcher = Dispatcher::new(
        Arc::new(queue),
        Arc::new(StopsMidway(Arc::clone(&stop))),
        SharedKeyring::new(keyring()),
        fixed_clock(),
        RetryPolicy::default(),
        run_config(),
    );
    tokio::time::timeout(
        Duration::from_secs(3600),
        dispatcher.run(stop_rx, Arc::new(Notify::new())),
    )
    .await
    .expect("run should return after shutdown");

    let completions = written.take();
    assert_each_once(&completions, &deliveries);
    assert!(completions.iter().all(|c| c.verdict == Verdict::Success));
}

#[tokio::test(start_paused = true)]
async fn completions_failing_at_shutdown_are_given_up() {
    let deliveries: Vec<_> = (0..2).map(|_| good_delivery(0)).collect();
    let mut queue = MockDeliveryQueue::new();
    let mut pending = Some(deliveries);
    queue
        .expect_claim()
        .returning(move |_, _, _, _| Ok(pending.take().unwrap_or_default()));
    let attempts = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&attempts);
    queue.expect_complete().returning(move |_| {
        counted.fetch_add(1, Ordering::SeqCst);
        Err(StoreError::Unavailable)
    });
    let mut client = MockDeliveryClient::new();
    client.expect_send().times(2).return_const(status(200));
    let dispatcher = dispatcher_with(queue, client, run_config());
    let (stop, stop_rx) = watch::channel(false);
    let worker = dispatcher.clone();
    let handle = tokio::spawn(async move { worker.run(stop_rx, Arc::new(Notify::new())).await });
    // Let storage fail a few times (virtual time), then shut down.
    while attempts.load(Ordering::SeqCst) < 3 {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(3600), handle)
        .await
        .expect("run should return even though storage is down")
        .unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_wake_up_claims_before_the_poll_interval() {
    let d = good_delivery(0);
    let written = Written::default();
    let mut queue = MockDeliveryQueue::new();
    let mut calls = 0;
    let mut pending = Some(vec![d.clone()]);
    let waker = Arc::new(Notify::new());
    let wake = Arc::clone(&waker);
    queue.expect_claim().returning(move |_, _, _, _| {
        calls += 1;
        if calls == 1 {
            // Nothing due yet; the event arrives and the outbox wakes the worker.
            wake.notify_one();
            return Ok(Vec::new());
        }
        Ok(pending.take().unwrap_or_default())
    });
    let sink = written.clone();
    queue
        .expect_complete()
        .returning(move |batch| Ok(sink.push(batch, 1)));
    let mut client = MockDeliveryClient::new();
    client.expect_send().times(1).return_const(status(200));
    let config = DispatcherConfig {
        poll_interval: Duration::from_secs(3600),
        ..run_config()
    };
    let dispatcher = dispatcher_with(queue, client, config);
    let (stop, stop_rx) = watch::channel(false);
    let worker = dispatcher.clone();
    let handle = tokio::spawn(async move { worker.run(stop_rx, waker).await });
    // With a one-hour poll interval, only the wake-up can deliver within a minute.
    tokio::time::timeout(Duration::from_secs(60), written.all_in.notified())
        .await
        .expect("the wake-up should trigger a claim");
    stop.send(true).unwrap();
    handle.await.unwrap();
    assert_each_once(&written.take(), &[d]);
}

// ---- secrets kept through a grace period ----

const OLD_SECRET: &str = "the-old-secret-still-in-grace";
const OLDER_SECRET: &str = "an-older-secret-already-expired";

fn with_previous(expiries: &[(&str, OffsetDateTime)]) -> ClaimedDelivery {
    ClaimedDelivery {
        previous_secrets: expiries
            .iter()
            .map(|(s, at)| crate::PreviousSecret {
                secret_encrypted: keyring().encrypt_str(s).unwrap(),
                expires_at: *at,
            })
            .collect(),
        ..good_delivery(0)
    }
}

#[test]
fn unexpired_previous_secrets_sign_beside_the_current_one_current_first() {
    let d = with_previous(&[
        (OLD_SECRET, NOW + time::Duration::seconds(1)),
        (OLDER_SECRET, NOW),
    ]);
    let req = dispatcher(MockDeliveryClient::new())
        .build_request(&d, &keyring(), NOW)
        .unwrap();
    let standard = header(&req, "webhook-signature");
    let parts: Vec<&str> = standard.split(' ').collect();
    assert_eq!(parts.len(), 2, "current and the unexpired one: {standard}");
    let ts = header(&req, "webhook-timestamp");
    let id = d.id.to_string();
    let verify = |secret: &str, sig: &str| {
        verify_standard(secret, &id, ts, sig, &req.body, NOW.unix_timestamp(), 300)
    };
    verify(PLAIN_SECRET, parts[0]).unwrap();
    assert!(
        verify(PLAIN_SECRET, parts[1]).is_err(),
        "the current one comes first"
    );
    verify(OLD_SECRET, parts[1]).unwrap();
    // A receiver holding either secret verifies the whole header; the expired one does not.
    verify(PLAIN_SECRET, standard).unwrap();
    verify(OLD_SECRET, standard).unwrap();
    assert!(verify(OLDER_SECRET, standard).is_err());
    // The Stratum scheme uses the current secret only.
    let stratum = header(&req, "X-Stratum-Signature");
    assert!(!stratum.contains(' '));
    verify_stratum(
        PLAIN_SECRET.as_bytes(),
        ts,
        stratum,
        &req.body,
        NOW.unix_timestamp(),
        300,
    )
    .unwrap();
}

#[test]
fn a_retry_after_the_grace_period_is_signed_with_the_current_secret_only() {
    let d = with_previous(&[(OLD_SECRET, NOW)]);
    let req = dispatcher(MockDeliveryClient::new())
        .build_request(&d, &keyring(), NOW)
        .unwrap();
    let standard = header(&req, "webhook-signature");
    assert!(!standard.contains(' '), "{standard}");
    let ts = header(&req, "webhook-timestamp");
    assert!(verify_standard(
        OLD_SECRET,
        &d.id.to_string(),
        ts,
        standard,
        &req.body,
        NOW.unix_timestamp(),
        300
    )
    .is_err());
}

#[test]
fn a_previous_secret_under_a_key_this_process_lacks_releases_the_delivery() {
    let other = Keyring::from_env_values(OTHER_MASTER, None).unwrap();
    let d = ClaimedDelivery {
        previous_secrets: vec![crate::PreviousSecret {
            secret_encrypted: other.encrypt_str(OLD_SECRET).unwrap(),
            expires_at: NOW + time::Duration::hours(1),
        }],
        ..good_delivery(0)
    };
    assert!(matches!(
        dispatcher(MockDeliveryClient::new()).build_request(&d, &keyring(), NOW),
        Err(BuildError::KeyUnavailable { .. })
    ));
}

// ---- rate-limit slots and FIFO heads ----

#[tokio::test(start_paused = true)]
async fn a_rate_limited_delivery_waits_for_its_slot_and_a_late_one_goes_back_unattempted() {
    let on_time = ClaimedDelivery {
        not_before: Some(NOW + time::Duration::milliseconds(300)),
        ..good_delivery(0)
    };
    let late = ClaimedDelivery {
        not_before: Some(NOW - time::Duration::seconds(1)),
        ..good_delivery(2)
    };
    let deliveries = vec![on_time.clone(), late.clone()];
    let written = Written::default();
    let mut queue = MockDeliveryQueue::new();
    let mut pending = Some(deliveries.clone());
    queue
        .expect_claim()
        .returning(move |_, _, _, _| Ok(pending.take().unwrap_or_default()));
    let sink = written.clone();
    queue
        .expect_complete()
        .returning(move |batch| Ok(sink.push(batch, 2)));
    let started = tokio::time::Instant::now();
    let sent_at = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&sent_at);
    let mut client = MockDeliveryClient::new();
    client.expect_send().times(1).returning(move |req| {
        seen.lock()
            .unwrap()
            .push((req.url, tokio::time::Instant::now()));
        status(200)
    });
    let dispatcher = dispatcher_with(queue, client, run_config());

    run_until_written(&dispatcher, &written).await;

    let sends = sent_at.lock().unwrap().clone();
    assert_eq!(sends.len(), 1, "only the one on time was sent");
    assert_eq!(sends[0].0, on_time.url);
    assert!(
        sends[0].1 - started >= Duration::from_millis(300),
        "sent at its slot"
    );
    let completions = written.take();
    let back = completions
        .iter()
        .find(|c| c.delivery_id == late.id)
        .unwrap();
    assert!(matches!(back.verdict, Verdict::Release { .. }));
    assert_eq!(back.attempt, 2, "no attempt spent");
}

fn fifo_delivery() -> ClaimedDelivery {
    ClaimedDelivery {
        fifo: true,
        ..good_delivery(0)
    }
}

#[tokio::test(start_paused = true)]
async fn a_fifo_head_that_succeeds_hands_its_lane_over_without_a_claim() {
    let lane: Vec<ClaimedDelivery> = (0..3).map(|_| fifo_delivery()).collect();
    let written = Written::default();
    let mut queue = MockDeliveryQueue::new();
    let mut first = Some(vec![lane[0].clone()]);
    // Only the first head comes from a claim; the claim loop finds nothing afterwards.
    queue
        .expect_claim()
        .returning(move |_, _, _, _| Ok(first.take().unwrap_or_default()));
    let mut rest: VecDeque<ClaimedDelivery> = lane[1..].iter().cloned().collect();
    let sink = written.clone();
    queue
        .expect_complete_and_claim_next()
        .times(3)
        .returning(move |head, lease| {
            assert_eq!(lease, run_config().lease);
            sink.push(vec![head], 3);
            Ok((true, rest.pop_front()))
        });
    queue.expect_complete().never();
    let mut client = MockDeliveryClient::new();
    let sent = Arc::new(Mutex::new(Vec::new()));
    let order = Arc::clone(&sent);
    client.expect_send().times(3).returning(move |req| {
        order.lock().unwrap().push(req.url.clone());
        status(200)
    });
    let config = DispatcherConfig {
        poll_interval: Duration::from_secs(30),
        ..run_config()
    };
    let dispatcher = dispatcher_with(queue, client, config);
    let started = tokio::time::Instant::now();

    run_until_written(&dispatcher, &written).await;

    let got: Vec<Uuid> = written.take().iter().map(|c| c.delivery_id).collect();
    let want: Vec<Uuid> = lane.iter().map(|d| d.id).collect();
    assert_eq!(got, want, "in lane order, each once");
    assert!(written.take().iter().all(|c| c.verdict == Verdict::Success));
    // No claim, poll or completion flush lay between them.
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(start_paused = true)]
async fn a_failing_fifo_head_is_written_without_waiting_for_company_and_wakes_the_claim_loop() {
    let head = fifo_delivery();
    let next = fifo_delivery();
    let written = Written::default();
    let mut queue = MockDeliveryQueue::new();
    // The lane gives one at a time: the next head only after the first was completed.
    let claims = Arc::new(Mutex::new(VecDeque::from(vec![
        vec![head.clone()],
        vec![next.clone()],
    ])));
    let completed = Arc::new(AtomicUsize::new(0));
    let (c1, done1) = (Arc::clone(&claims), Arc::clone(&completed));
    queue.expect_claim().returning(move |_, _, _, _| {
        let mut q = c1.lock().unwrap();
        let ready = q.len() == 2 || done1.load(Ordering::SeqCst) == 1;
        Ok(if ready {
            q.pop_front().unwrap_or_default()
        } else {
            Vec::new()
        })
    });
    let sink = written.clone();
    queue.expect_complete().returning(move |batch| {
        completed.fetch_add(batch.len(), Ordering::SeqCst);
        Ok(sink.push(batch, 2))
    });
    // Only a success hands a lane over.
    queue.expect_complete_and_claim_next().never();
    let mut client = MockDeliveryClient::new();
    client.expect_send().times(2).return_const(status(503));
    let config = DispatcherConfig {
        completion_flush: Duration::from_secs(30),
        poll_interval: Duration::from_secs(30),
        ..run_config()
    };
    let dispatcher = dispatcher_with(queue, client, config);
    let started = tokio::time::Instant::now();

    run_until_written(&dispatcher, &written).await;

    // Neither the 30 s completion flush nor the 30 s poll was waited for.
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(*written.batch_sizes.lock().unwrap(), vec![1, 1]);
    assert!(written
        .take()
        .iter()
        .all(|c| matches!(c.verdict, Verdict::Retry { .. })));
}

#[tokio::test(start_paused = true)]
async fn a_hand_over_that_fails_records_the_head_through_the_completion_writer() {
    let head = fifo_delivery();
    let written = Written::default();
    let mut queue = MockDeliveryQueue::new();
    let mut first = Some(vec![head.clone()]);
    queue
        .expect_claim()
        .returning(move |_, _, _, _| Ok(first.take().unwrap_or_default()));
    queue
        .expect_complete_and_claim_next()
        .times(1)
        .returning(|_, _| Err(StoreError::Unavailable));
    let sink = written.clone();
    queue
        .expect_complete()
        .returning(move |batch| Ok(sink.push(batch, 1)));
    let dispatcher = dispatcher_with(queue, client_answering(status(200)), run_config());

    run_until_written(&dispatcher, &written).await;

    let completions = written.take();
    assert_each_once(&completions, std::slice::from_ref(&head));
    assert_eq!(completions[0].verdict, Verdict::Success);
}

#[tokio::test(start_paused = true)]
async fn deliveries_claimed_before_the_breaker_tripped_go_back_unsent() {
    let webhook = Uuid::new_v4();
    let secret = keyring().encrypt_str(PLAIN_SECRET).unwrap();
    let deliveries: Vec<_> = (0..5)
        .map(|_| delivery(secret.clone(), webhook, 0))
        .collect();
    let written = Written::default();
    let mut queue = MockDeliveryQueue::new();
    let mut pending = Some(deliveries.clone());
    queue
        .expect_claim()
        .returning(move |_, _, _, _| Ok(pending.take().unwrap_or_default()));
    let sink = written.clone();
    queue
        .expect_complete()
        .returning(move |batch| Ok(sink.push(batch, 5)));
    let mut client = MockDeliveryClient::new();
    // One at a time: the second failure trips the threshold of 2.
    client.expect_send().times(2).return_const(status(503));
    let config = DispatcherConfig {
        initial_per_webhook: 1,
        per_webhook: 1,
        breaker_threshold: 2,
        ..run_config()
    };
    let dispatcher = dispatcher_with(queue, client, config);

    run_until_written(&dispatcher, &written).await;

    let completions = written.take();
    assert_each_once(&completions, &deliveries);
    let released = completions
        .iter()
        .filter(|c| matches!(c.verdict, Verdict::Release { .. }))
        .count();
    assert_eq!(released, 3, "claimed before the trip: back, unattempted");
    assert!(completions
        .iter()
        .filter(|c| matches!(c.verdict, Verdict::Release { .. }))
        .all(|c| c.attempt == 0));
}
