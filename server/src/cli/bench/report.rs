//! Turning request timings into the figures `wick bench` reports.

use std::time::Duration;

use serde::Serialize;

/// What one streamed request measured.
#[derive(Debug, Clone, Default)]
pub struct RequestRecord {
    /// Request sent to first generated text.
    pub ttft: Option<Duration>,
    /// Gaps between successive chunks that carried text.
    pub inter_token: Vec<Duration>,
    /// Request sent to end of stream.
    pub latency: Duration,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct Percentiles {
    pub mean: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
}

impl Percentiles {
    /// Nearest-rank percentiles of `values` (milliseconds); None when there are none.
    pub fn of(values: &mut [f64]) -> Option<Self> {
        if values.is_empty() {
            return None;
        }
        values.sort_by(f64::total_cmp);
        let rank = |p: f64| {
            let i = ((p / 100.0) * values.len() as f64).ceil() as usize;
            values[i.clamp(1, values.len()) - 1]
        };
        Some(Self {
            mean: values.iter().sum::<f64>() / values.len() as f64,
            p50: rank(50.0),
            p90: rank(90.0),
            p99: rank(99.0),
        })
    }
}

/// One concurrency level's results.
#[derive(Debug, Clone, Serialize)]
pub struct LevelReport {
    pub concurrency: usize,
    pub requests: usize,
    pub failed: usize,
    pub duration_s: f64,
    pub requests_per_s: f64,
    pub output_tokens: u64,
    pub output_tokens_per_s: f64,
    pub mean_prompt_tokens: f64,
    pub ttft_ms: Option<Percentiles>,
    pub itl_ms: Option<Percentiles>,
    pub latency_ms: Option<Percentiles>,
    /// The first error seen, if any request failed.
    pub first_error: Option<String>,
}

impl LevelReport {
    pub fn new(concurrency: usize, records: &[RequestRecord], duration: Duration) -> Self {
        let ok: Vec<&RequestRecord> = records.iter().filter(|r| r.error.is_none()).collect();
        let ms = |d: &Duration| d.as_secs_f64() * 1e3;
        let mut ttft: Vec<f64> = ok.iter().filter_map(|r| r.ttft.as_ref()).map(ms).collect();
        let mut itl: Vec<f64> = ok.iter().flat_map(|r| r.inter_token.iter()).map(ms).collect();
        let mut latency: Vec<f64> = ok.iter().map(|r| ms(&r.latency)).collect();
        let output_tokens: u64 = ok.iter().map(|r| r.completion_tokens).sum();
        let secs = duration.as_secs_f64().max(1e-9);
        Self {
            concurrency,
            requests: records.len(),
            failed: records.len() - ok.len(),
            duration_s: duration.as_secs_f64(),
            requests_per_s: ok.len() as f64 / secs,
            output_tokens,
            output_tokens_per_s: output_tokens as f64 / secs,
            mean_prompt_tokens: if ok.is_empty() {
                0.0
            } else {
                ok.iter().map(|r| r.prompt_tokens).sum::<u64>() as f64 / ok.len() as f64
            },
            ttft_ms: Percentiles::of(&mut ttft),
            itl_ms: Percentiles::of(&mut itl),
            latency_ms: Percentiles::of(&mut latency),
            first_error: records.iter().find_map(|r| r.error.clone()),
        }
    }
}

/// A plain-text table, one row per concurrency level.
pub fn table(levels: &[LevelReport]) -> String {
    let mut out = format!(
        "{:>5} {:>5} {:>4} {:>8} {:>9} {:>22} {:>20} {:>22}\n",
        "conc",
        "reqs",
        "fail",
        "req/s",
        "out tok/s",
        "TTFT ms p50/p90/p99",
        "ITL ms p50/p90/p99",
        "latency ms p50/p90/p99"
    );
    let fmt = |p: &Option<Percentiles>| {
        p.map_or_else(
            || "-".to_string(),
            |p| format!("{:.0}/{:.0}/{:.0}", p.p50, p.p90, p.p99),
        )
    };
    let fmt_fine = |p: &Option<Percentiles>| {
        p.map_or_else(
            || "-".to_string(),
            |p| format!("{:.1}/{:.1}/{:.1}", p.p50, p.p90, p.p99),
        )
    };
    for l in levels {
        out.push_str(&format!(
            "{:>5} {:>5} {:>4} {:>8.2} {:>9.1} {:>22} {:>20} {:>22}\n",
            l.concurrency,
            l.requests,
            l.failed,
            l.requests_per_s,
            l.output_tokens_per_s,
            fmt(&l.ttft_ms),
            fmt_fine(&l.itl_ms),
            fmt(&l.latency_ms),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let mut v: Vec<f64> = (1..=100).rev().map(f64::from).collect();
        let p = Percentiles::of(&mut v).unwrap();
        assert_eq!((p.p50, p.p90, p.p99, p.mean), (50.0, 90.0, 99.0, 50.5));
        let p = Percentiles::of(&mut [7.0]).unwrap();
        assert_eq!((p.p50, p.p99), (7.0, 7.0));
        assert!(Percentiles::of(&mut []).is_none());
    }

    #[test]
    fn failed_requests_count_but_do_not_skew_timings() {
        let ok = RequestRecord {
            ttft: Some(Duration::from_millis(10)),
            inter_token: vec![Duration::from_millis(5); 3],
            latency: Duration::from_millis(25),
            prompt_tokens: 12,
            completion_tokens: 4,
            error: None,
        };
        let failed = RequestRecord {
            error: Some("429".into()),
            latency: Duration::from_millis(1),
            ..Default::default()
        };
        let r = LevelReport::new(2, &[ok.clone(), failed, ok], Duration::from_secs(2));
        assert_eq!((r.requests, r.failed, r.output_tokens), (3, 1, 8));
        assert_eq!(r.output_tokens_per_s, 4.0);
        assert_eq!(r.requests_per_s, 1.0);
        assert_eq!(r.mean_prompt_tokens, 12.0);
        assert_eq!(r.ttft_ms.unwrap().p99, 10.0);
        assert_eq!(r.latency_ms.unwrap().p50, 25.0);
        assert_eq!(r.first_error.as_deref(), Some("429"));
        assert!(table(&[r]).lines().count() == 2);
    }
}
