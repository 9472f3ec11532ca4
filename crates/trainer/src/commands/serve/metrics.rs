//! `GET /metrics`: what the service has done and how it stands, in Prometheus' text exposition
//! format (version 0.0.4), written by hand: the format is one line per series.
//!
//! Counting sits on every request's path, so it is cheap there: atomics, and one short lock for
//! the requests counter, whose (route, code, adapter) keys are not known up front; the key is
//! `Copy`, so once a key has been seen nothing is allocated for it again. Every label has a
//! bounded set of values, so that no client can make the series grow without end: the route
//! is one of the served paths or `other`, the adapter one of those loaded. Adapter names come
//! from the command line and are escaped as the format requires.

use std::collections::BTreeMap;
use std::fmt::{Display, Write as _};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The `Content-Type` of the text exposition format.
pub(super) const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The prefix of every metric's name.
const PREFIX: &str = "trainer_serve_";

/// Upper bounds of the request latency buckets, in nanoseconds: Prometheus' default buckets,
/// 5 ms to 10 s, which span a cached answer to a request that waited on a full queue.
const LATENCY_BOUNDS_NS: [u64; 11] = [
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
];
const NS_PER_SEC: f64 = 1e9;

/// The routes as a label: the served paths, and `other` for any other path, so that made-up
/// paths do not each make a series.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Route {
    Classify,
    Adapters,
    Healthz,
    Metrics,
    Other,
}

impl Route {
    const ALL: [Route; 5] = [
        Route::Classify,
        Route::Adapters,
        Route::Healthz,
        Route::Metrics,
        Route::Other,
    ];

    pub(super) fn of(path: &str) -> Self {
        match path {
            "/v1/classify" => Route::Classify,
            "/v1/adapters" => Route::Adapters,
            "/healthz" => Route::Healthz,
            "/metrics" => Route::Metrics,
            _ => Route::Other,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Route::Classify => "/v1/classify",
            Route::Adapters => "/v1/adapters",
            Route::Healthz => "/healthz",
            Route::Metrics => "/metrics",
            Route::Other => "other",
        }
    }
}

/// What a request is counted by: route, status code, and the adapter's index when the request
/// named a served one.
type RequestKey = (Route, u16, Option<usize>);

/// A histogram over whole-number observations (nanoseconds, texts), shown divided by a unit.
struct Histogram {
    /// Upper bounds of the buckets, ascending, in the unit observations are counted in.
    bounds: Vec<u64>,
    /// Observations per bucket, not cumulative; the last one is past every bound.
    counts: Vec<AtomicU64>,
    sum: AtomicU64,
}

impl Histogram {
    fn new(bounds: Vec<u64>) -> Self {
        let counts = (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect();
        Self {
            bounds,
            counts,
            sum: AtomicU64::new(0),
        }
    }

    fn observe(&self, value: u64) {
        let bucket = self.bounds.partition_point(|&b| b < value);
        if let Some(c) = self.counts.get(bucket) {
            c.fetch_add(1, Ordering::Relaxed);
        }
        self.sum.fetch_add(value, Ordering::Relaxed);
    }

    /// One histogram's series: cumulative buckets, `+Inf`, `_sum` and `_count`, values divided
    /// by `per_unit`. `+Inf` and `_count` come from the same reads, so they agree even when
    /// requests are counted during a scrape.
    fn write(&self, out: &mut String, name: &str, labels: &str, per_unit: f64) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut total = 0u64;
        for (bound, count) in self.bounds.iter().zip(&self.counts) {
            total += count.load(Ordering::Relaxed);
            let le = *bound as f64 / per_unit;
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{le}\"}} {total}");
        }
        if let Some(last) = self.counts.last() {
            total += last.load(Ordering::Relaxed);
        }
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {total}");
        let sum = self.sum.load(Ordering::Relaxed) as f64 / per_unit;
        let braced = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(out, "{name}_sum{braced} {sum}");
        let _ = writeln!(out, "{name}_count{braced} {total}");
    }
}

/// The service's counters and histograms; the gauges that other parts already keep come in
/// [`Gauges`] at scrape time.
pub(super) struct Metrics {
    /// The adapters' names, escaped for a label value, by adapter index.
    adapters: Vec<String>,
    /// Requests answered.
    requests: Mutex<BTreeMap<RequestKey, u64>>,
    /// Request latency by route, in the order of [`Route::ALL`].
    latency: Vec<Histogram>,
    /// Texts scored, by adapter index.
    texts: Vec<AtomicU64>,
    /// Texts per forward pass of the inference thread.
    batches: Histogram,
    dropped_jobs: AtomicU64,
    queue_full: AtomicU64,
    connections_shed: AtomicU64,
    connections_refused: AtomicU64,
    open_connections: AtomicU64,
    inference_restarts: AtomicU64,
}

/// Gauges read at scrape time from where they are kept.
pub(super) struct Gauges {
    pub queued_texts: usize,
    pub queue_capacity: usize,
    pub inference_up: bool,
}

impl Metrics {
    /// Metrics for the adapters `names` (by index) and forward passes of up to `max_batch`
    /// texts.
    pub(super) fn new(names: &[String], max_batch: usize) -> Self {
        Self {
            adapters: names.iter().map(|n| escape(n)).collect(),
            requests: Mutex::new(BTreeMap::new()),
            latency: Route::ALL
                .iter()
                .map(|_| Histogram::new(LATENCY_BOUNDS_NS.to_vec()))
                .collect(),
            texts: names.iter().map(|_| AtomicU64::new(0)).collect(),
            batches: Histogram::new(batch_bounds(max_batch)),
            dropped_jobs: AtomicU64::new(0),
            queue_full: AtomicU64::new(0),
            connections_shed: AtomicU64::new(0),
            connections_refused: AtomicU64::new(0),
            open_connections: AtomicU64::new(0),
            inference_restarts: AtomicU64::new(0),
        }
    }

    /// One answered request: its route, status code, the adapter it named (when it named a
    /// served one) and how long it took.
    pub(super) fn request(
        &self,
        route: Route,
        code: u16,
        adapter: Option<usize>,
        elapsed: Duration,
    ) {
        *self
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry((route, code, adapter))
            .or_insert(0) += 1;
        let ns = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        if let Some(h) = self.latency.get(route as usize) {
            h.observe(ns);
        }
    }

    /// `texts` texts scored by `adapter`.
    pub(super) fn classified(&self, adapter: usize, texts: usize) {
        if let Some(c) = self.texts.get(adapter) {
            c.fetch_add(texts as u64, Ordering::Relaxed);
        }
    }

    /// One forward pass of `texts` texts.
    pub(super) fn batch(&self, texts: usize) {
        self.batches.observe(texts as u64);
    }

    /// `n` queued jobs dropped unscored, their clients gone.
    pub(super) fn dropped_jobs(&self, n: usize) {
        self.dropped_jobs.fetch_add(n as u64, Ordering::Relaxed);
    }

    pub(super) fn queue_full(&self) {
        self.queue_full.fetch_add(1, Ordering::Relaxed);
    }

    /// An open connection closed at the cap to make room for a new one.
    pub(super) fn connection_shed(&self) {
        self.connections_shed.fetch_add(1, Ordering::Relaxed);
    }

    /// A new connection refused at the cap, every open one waiting on inference.
    pub(super) fn connection_refused(&self) {
        self.connections_refused.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn set_open_connections(&self, n: usize) {
        self.open_connections.store(n as u64, Ordering::Relaxed);
    }

    pub(super) fn inference_restarted(&self) {
        self.inference_restarts.fetch_add(1, Ordering::Relaxed);
    }

    /// Every metric in the text exposition format.
    pub(super) fn render(&self, gauges: &Gauges) -> String {
        let mut out = String::with_capacity(8 << 10);
        let o = &mut out;

        family(
            o,
            "requests_total",
            "counter",
            "Requests answered, by route, status code and adapter (empty where the request \
             named no served adapter).",
        );
        let requests = self
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        for ((route, code, adapter), n) in requests {
            let adapter = adapter
                .and_then(|i| self.adapters.get(i))
                .map_or("", String::as_str);
            sample(
                o,
                "requests_total",
                &format!(
                    "route=\"{}\",code=\"{code}\",adapter=\"{adapter}\"",
                    route.label()
                ),
                n,
            );
        }

        family(
            o,
            "request_duration_seconds",
            "histogram",
            "Time from a request's header to its answer, by route.",
        );
        for (route, h) in Route::ALL.iter().zip(&self.latency) {
            h.write(
                o,
                &format!("{PREFIX}request_duration_seconds"),
                &format!("route=\"{}\"", route.label()),
                NS_PER_SEC,
            );
        }

        family(
            o,
            "texts_classified_total",
            "counter",
            "Texts scored, by adapter.",
        );
        for (name, n) in self.adapters.iter().zip(&self.texts) {
            sample(
                o,
                "texts_classified_total",
                &format!("adapter=\"{name}\""),
                n.load(Ordering::Relaxed),
            );
        }

        family(
            o,
            "batch_texts",
            "histogram",
            "Texts per forward pass of the inference thread.",
        );
        self.batches
            .write(o, &format!("{PREFIX}batch_texts"), "", 1.0);

        for (name, kind, help, value) in [
            (
                "queued_texts",
                "gauge",
                "Texts admitted and not yet answered: waiting for inference or being scored.",
                gauges.queued_texts as u64,
            ),
            (
                "queue_capacity_texts",
                "gauge",
                "Most texts that may be queued (--max-queued-texts).",
                gauges.queue_capacity as u64,
            ),
            (
                "queue_full_total",
                "counter",
                "Requests refused with 503 because the queue had no room for their texts.",
                self.queue_full.load(Ordering::Relaxed),
            ),
            (
                "dropped_jobs_total",
                "counter",
                "Queued requests dropped unscored because their client had gone.",
                self.dropped_jobs.load(Ordering::Relaxed),
            ),
            (
                "open_connections",
                "gauge",
                "Connections open.",
                self.open_connections.load(Ordering::Relaxed),
            ),
            (
                "connections_shed_total",
                "counter",
                "Connections closed at --max-connections to make room for a new one.",
                self.connections_shed.load(Ordering::Relaxed),
            ),
            (
                "connections_refused_total",
                "counter",
                "New connections refused with 503 at --max-connections, every open one \
                 waiting on inference.",
                self.connections_refused.load(Ordering::Relaxed),
            ),
            (
                "inference_up",
                "gauge",
                "1 while the inference thread runs, 0 while it is restarted.",
                u64::from(gauges.inference_up),
            ),
            (
                "inference_restarts_total",
                "counter",
                "Times the inference thread failed and was started afresh.",
                self.inference_restarts.load(Ordering::Relaxed),
            ),
        ] {
            family(o, name, kind, help);
            sample(o, name, "", value);
        }
        out
    }
}

/// The `# HELP` and `# TYPE` lines of a metric family (`help` holds no backslash or newline,
/// the two characters it would need escaped).
fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {PREFIX}{name} {help}");
    let _ = writeln!(out, "# TYPE {PREFIX}{name} {kind}");
}

/// One sample line; `labels` are already escaped.
fn sample(out: &mut String, name: &str, labels: &str, value: impl Display) {
    if labels.is_empty() {
        let _ = writeln!(out, "{PREFIX}{name} {value}");
    } else {
        let _ = writeln!(out, "{PREFIX}{name}{{{labels}}} {value}");
    }
}

/// Batch size buckets: powers of two below `max_batch`, then `max_batch` itself, the largest a
/// forward pass can be.
fn batch_bounds(max_batch: usize) -> Vec<u64> {
    let max = max_batch.max(1) as u64;
    let mut bounds: Vec<u64> = std::iter::successors(Some(1u64), |b| b.checked_mul(2))
        .take_while(|&b| b < max)
        .collect();
    bounds.push(max);
    bounds
}

/// A label value as the text format wants it: backslash, double quote and newline escaped.
fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serve_metrics_label_values_are_escaped() {
        assert_eq!(escape("plain-name_1"), "plain-name_1");
        assert_eq!(escape("a\\b\"c\nd"), "a\\\\b\\\"c\\nd");
        assert_eq!(escape("标题"), "标题");
    }

    #[test]
    fn serve_metrics_batch_buckets_end_at_the_largest_batch() {
        assert_eq!(batch_bounds(1), [1]);
        assert_eq!(batch_bounds(64), [1, 2, 4, 8, 16, 32, 64]);
        assert_eq!(batch_bounds(48), [1, 2, 4, 8, 16, 32, 48]);
    }

    /// Buckets are cumulative, observations on a bound fall in it, and `+Inf` is `_count`.
    #[test]
    fn serve_metrics_histograms_are_cumulative() {
        let names = vec!["a\"b".to_string()];
        let m = Metrics::new(&names, 8);
        m.request(Route::Classify, 200, Some(0), Duration::from_millis(5));
        m.request(Route::Classify, 200, Some(0), Duration::from_millis(30));
        m.request(Route::Classify, 404, None, Duration::from_secs(11));
        m.request(Route::Other, 401, None, Duration::from_millis(1));
        m.batch(3);
        m.batch(8);
        m.classified(0, 11);
        let text = m.render(&Gauges {
            queued_texts: 2,
            queue_capacity: 10,
            inference_up: true,
        });
        let has = |line: &str| assert!(text.lines().any(|l| l == line), "{line}\n{text}");
        has(r#"trainer_serve_requests_total{route="/v1/classify",code="200",adapter="a\"b"} 2"#);
        has(r#"trainer_serve_requests_total{route="/v1/classify",code="404",adapter=""} 1"#);
        has(r#"trainer_serve_requests_total{route="other",code="401",adapter=""} 1"#);
        let route = r#"route="/v1/classify""#;
        has(&format!(
            r#"trainer_serve_request_duration_seconds_bucket{{{route},le="0.005"}} 1"#
        ));
        has(&format!(
            r#"trainer_serve_request_duration_seconds_bucket{{{route},le="0.025"}} 1"#
        ));
        has(&format!(
            r#"trainer_serve_request_duration_seconds_bucket{{{route},le="0.05"}} 2"#
        ));
        has(&format!(
            r#"trainer_serve_request_duration_seconds_bucket{{{route},le="10"}} 2"#
        ));
        has(&format!(
            r#"trainer_serve_request_duration_seconds_bucket{{{route},le="+Inf"}} 3"#
        ));
        has(&format!(
            r#"trainer_serve_request_duration_seconds_count{{{route}}} 3"#
        ));
        has(&format!(
            r#"trainer_serve_request_duration_seconds_sum{{{route}}} 11.035"#
        ));
        has(r#"trainer_serve_batch_texts_bucket{le="2"} 0"#);
        has(r#"trainer_serve_batch_texts_bucket{le="4"} 1"#);
        has(r#"trainer_serve_batch_texts_bucket{le="8"} 2"#);
        has(r#"trainer_serve_batch_texts_bucket{le="+Inf"} 2"#);
        has("trainer_serve_batch_texts_sum 11");
        has(r#"trainer_serve_texts_classified_total{adapter="a\"b"} 11"#);
        has("trainer_serve_queued_texts 2");
        has("trainer_serve_inference_up 1");
        // Each family's samples follow its one TYPE line.
        let types = text.lines().filter(|l| l.starts_with("# TYPE")).count();
        let helps = text.lines().filter(|l| l.starts_with("# HELP")).count();
        assert_eq!((types, helps), (13, 13));
    }
}
