//! Latency recording and reporting: HDR histograms per operation, the
//! summary table, the JSON report, the HDR percentile file, the SVG plot,
//! and the comparison of two reports.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Latencies (µs) and errors of every operation, for one run.
#[derive(Clone, Default)]
pub struct Recorder {
    pub ops: BTreeMap<&'static str, Histogram<u64>>,
    pub errors: BTreeMap<String, u64>,
}

impl Recorder {
    pub fn record(&mut self, op: &'static str, took: Duration) {
        let histogram =
            self.ops.entry(op).or_insert_with(|| Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds"));
        histogram.saturating_record(took.as_micros().max(1) as u64);
    }

    pub fn error(&mut self, op: &'static str, reason: &str) {
        *self.errors.entry(format!("{op}:{reason}")).or_default() += 1;
    }
}

/// One operation's figures.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct OpSummary {
    pub op: String,
    pub count: u64,
    pub per_second: f64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
    pub mean_us: f64,
}

/// Everything a run reports.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Report {
    pub scenario: String,
    pub mode: String,
    pub offered_rate: Option<f64>,
    pub concurrency: Option<usize>,
    pub duration_s: f64,
    pub ops: Vec<OpSummary>,
    pub errors: BTreeMap<String, u64>,
    /// CPU the load generator itself used, in cores (it shares the machine).
    pub loadgen_cpu_cores: f64,
    /// CPU the spawned service used, in cores, when the tool started it.
    pub service_cpu_cores: Option<f64>,
    /// The service's resident memory at the end, when the tool started it.
    pub service_rss_mib: Option<f64>,
    /// `redis-benchmark` of the service's own lock script on the same Redis.
    pub physical_limit_per_second: Option<f64>,
    /// `redis-benchmark` of a minimal lock script (TIME, HMGET, HINCRBY,
    /// HSET, ZADD) on the same Redis: the floor any lock script pays.
    #[serde(default)]
    pub minimal_script_per_second: Option<f64>,
    /// Redis's slow log over the measured run.
    #[serde(default)]
    pub slowlog: Option<crate::probe::SlowLog>,
    /// The idle machine's own pauses before the run (`--stall-probe`).
    #[serde(default)]
    pub stalls: Option<crate::probe::Stalls>,
    /// Redis memory the run left, per unit and per lifecycle event.
    #[serde(default)]
    pub memory: Option<crate::probe::Memory>,
    /// What became of the expiry wave (wave scenario).
    #[serde(default)]
    pub wave: Option<String>,
    /// What the end-of-run check found.
    pub stock_check: String,
    pub machine: String,
}

impl Report {
    pub fn summarize(recorder: &Recorder, measured: Duration) -> Vec<OpSummary> {
        recorder
            .ops
            .iter()
            .map(|(op, h)| OpSummary {
                op: (*op).to_owned(),
                count: h.len(),
                per_second: h.len() as f64 / measured.as_secs_f64(),
                p50_us: h.value_at_quantile(0.5),
                p90_us: h.value_at_quantile(0.9),
                p99_us: h.value_at_quantile(0.99),
                p999_us: h.value_at_quantile(0.999),
                max_us: h.max(),
                mean_us: h.mean(),
            })
            .collect()
    }

    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "scenario {} ({}), {:.1} s measured{}{}",
            self.scenario,
            self.mode,
            self.duration_s,
            self.offered_rate.map_or(String::new(), |r| format!(", offered {r:.0}/s")),
            self.concurrency.map_or(String::new(), |c| format!(", {c} in flight")),
        );
        let _ = writeln!(
            out,
            "{:<12} {:>9} {:>10} {:>8} {:>8} {:>8} {:>8} {:>8}",
            "op", "count", "per s", "p50", "p90", "p99", "p99.9", "max"
        );
        for op in &self.ops {
            let _ = writeln!(
                out,
                "{:<12} {:>9} {:>10.0} {:>8} {:>8} {:>8} {:>8} {:>8}",
                op.op,
                op.count,
                op.per_second,
                micros(op.p50_us),
                micros(op.p90_us),
                micros(op.p99_us),
                micros(op.p999_us),
                micros(op.max_us)
            );
        }
        if self.errors.is_empty() {
            let _ = writeln!(out, "errors: none");
        } else {
            let _ = writeln!(
                out,
                "errors: {}",
                self.errors.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" ")
            );
        }
        let _ = writeln!(
            out,
            "load generator CPU: {:.2} cores{}",
            self.loadgen_cpu_cores,
            self.service_cpu_cores.map_or(String::new(), |c| format!(", service CPU: {c:.2} cores"))
        );
        if let Some(rss) = self.service_rss_mib {
            let _ = writeln!(out, "service RSS at the end: {rss:.1} MiB");
        }
        if let Some(limit) = self.physical_limit_per_second {
            let lock = self.ops.iter().find(|o| o.op == "lock").map_or(0.0, |o| o.per_second);
            let _ = writeln!(
                out,
                "physical limit (redis-benchmark -c 50 EVALSHA lock script): {limit:.0}/s; Lock reached {:.0}%",
                100.0 * lock / limit
            );
        }
        if let (Some(minimal), Some(limit)) = (self.minimal_script_per_second, self.physical_limit_per_second) {
            let _ = writeln!(
                out,
                "floor (redis-benchmark -c 50 of a minimal 5-command lock script): {minimal:.0}/s; the lock script runs at {:.2} of it",
                limit / minimal
            );
        }
        if let Some(slowlog) = &self.slowlog {
            let _ = writeln!(
                out,
                "Redis slow log (calls over {} us) during the run: {} entries{}",
                slowlog.threshold_us,
                slowlog.entries,
                if slowlog.slowest.is_empty() {
                    String::new()
                } else {
                    format!("; slowest: {}", slowlog.slowest.join("; "))
                }
            );
        }
        if let Some(stalls) = &self.stalls {
            let _ = writeln!(
                out,
                "machine stalls (idle, before the run): {} spinning threads saw {} pauses over {} us in {:.0} s (longest {} us), a floor for the slow log",
                stalls.threads, stalls.pauses, stalls.threshold_us, stalls.seconds, stalls.max_us
            );
        }
        if let Some(memory) = &self.memory {
            let _ = writeln!(
                out,
                "Redis memory: {:.0} B per completed unit ({} units) besides events; {} events at {:.0} B each; {:+} keys; used_memory {:+.1} MB",
                memory.bytes_per_unit,
                memory.units,
                memory.events,
                memory.bytes_per_event,
                memory.keys_added,
                memory.used_memory_added as f64 / 1e6
            );
        }
        if let Some(wave) = &self.wave {
            let _ = writeln!(out, "wave: {wave}");
        }
        let _ = writeln!(out, "stock check: {}", self.stock_check);
        let _ = writeln!(out, "machine: {}", self.machine);
        out
    }
}

fn micros(us: u64) -> String {
    if us >= 10_000 { format!("{:.1}ms", us as f64 / 1000.0) } else { format!("{us}us") }
}

/// The percentile distribution in HdrHistogram's `.hgrm` text format, per op.
pub fn hgrm(recorder: &Recorder) -> String {
    let mut out = String::new();
    for (op, h) in &recorder.ops {
        let _ = writeln!(out, "# op {op}");
        let _ = writeln!(out, "{:>12} {:>14} {:>10} {:>14}", "Value", "Percentile", "TotalCount", "1/(1-Percentile)");
        for v in h.iter_quantiles(1) {
            let q = v.quantile_iterated_to();
            let inverse = if q < 1.0 { format!("{:.2}", 1.0 / (1.0 - q)) } else { "inf".into() };
            let _ = writeln!(
                out,
                "{:>12.3} {:>14.12} {:>10} {:>14}",
                v.value_iterated_to() as f64 / 1000.0,
                q,
                v.count_since_last_iteration(),
                inverse
            );
        }
        let _ = writeln!(out, "#[Mean = {:.3}, StdDeviation = {:.3}]", h.mean() / 1000.0, h.stdev() / 1000.0);
        let _ = writeln!(out, "#[Max = {:.3}, Total count = {}]", h.max() as f64 / 1000.0, h.len());
        let _ = writeln!(out, "# values in milliseconds\n");
    }
    out
}

/// Latency by percentile (log "nines" axis), one line per op, as SVG.
pub fn plot(recorder: &Recorder, title: &str) -> String {
    let (w, h, left, bottom, top, right) = (760.0, 420.0, 70.0, 50.0, 40.0, 150.0);
    let nines_max: f64 = 4.0; // up to p99.99
    let max_us = recorder.ops.values().map(|h| h.value_at_quantile(0.9999)).max().unwrap_or(1).max(1) as f64;
    let y_max = (max_us * 1.1).max(1000.0);
    let x = |q: f64| left + (-(1.0 - q).max(1e-9).log10()).min(nines_max) / nines_max * (w - left - right);
    let y = |us: f64| h - bottom - (us / y_max) * (h - bottom - top);
    let colors = ["#1565c0", "#c62828", "#2e7d32", "#f9a825", "#6a1b9a", "#00838f", "#4e342e"];
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(
        svg,
        r#"<rect width="100%" height="100%" fill="white"/><text x="{left}" y="22" font-size="14">{title}</text>"#
    );
    for (q, label) in [(0.0, "p0"), (0.5, "p50"), (0.9, "p90"), (0.99, "p99"), (0.999, "p99.9"), (0.9999, "p99.99")] {
        let xq = x(q);
        let _ = writeln!(
            svg,
            r##"<line x1="{xq:.1}" y1="{top}" x2="{xq:.1}" y2="{:.1}" stroke="#ddd"/><text x="{xq:.1}" y="{:.1}" text-anchor="middle">{label}</text>"##,
            h - bottom,
            h - bottom + 18.0
        );
    }
    for i in 0..=5 {
        let us = y_max * f64::from(i) / 5.0;
        let yy = y(us);
        let _ = writeln!(
            svg,
            r##"<line x1="{left}" y1="{yy:.1}" x2="{:.1}" y2="{yy:.1}" stroke="#eee"/><text x="{:.1}" y="{:.1}" text-anchor="end">{:.2} ms</text>"##,
            w - right,
            left - 6.0,
            yy + 4.0,
            us / 1000.0
        );
    }
    if y_max > 1000.0 {
        let y1 = y(1000.0);
        let _ = writeln!(
            svg,
            r##"<line x1="{left}" y1="{y1:.1}" x2="{:.1}" y2="{y1:.1}" stroke="#c62828" stroke-dasharray="4 3"/><text x="{:.1}" y="{:.1}" fill="#c62828">1 ms</text>"##,
            w - right,
            w - right + 4.0,
            y1 + 4.0
        );
    }
    for (i, (op, hist)) in recorder.ops.iter().enumerate() {
        let color = colors[i % colors.len()];
        let points: Vec<String> = (0..=400)
            .map(|k| {
                let nines = nines_max * f64::from(k) / 400.0;
                let q = 1.0 - 10f64.powf(-nines);
                format!("{:.1},{:.1}", x(q), y(hist.value_at_quantile(q) as f64))
            })
            .collect();
        let _ =
            writeln!(svg, r#"<polyline fill="none" stroke="{color}" stroke-width="2" points="{}"/>"#, points.join(" "));
        let ly = top + 16.0 * i as f64 + 10.0;
        let _ = writeln!(
            svg,
            r#"<rect x="{:.1}" y="{:.1}" width="12" height="4" fill="{color}"/><text x="{:.1}" y="{:.1}">{op}</text>"#,
            w - right + 12.0,
            ly - 4.0,
            w - right + 30.0,
            ly + 2.0
        );
    }
    let _ = writeln!(
        svg,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">percentile</text></svg>"#,
        (left + w - right) / 2.0,
        h - 8.0
    );
    svg
}

/// Two reports side by side.
pub fn compare(a: &Report, b: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{:<12} {:>22} {:>22} {:>22}", "op", "per s (a -> b)", "p50 (a -> b)", "p99 (a -> b)");
    for op in &a.ops {
        let Some(other) = b.ops.iter().find(|o| o.op == op.op) else { continue };
        let change = |x: f64, y: f64| if x > 0.0 { format!("{:+.0}%", 100.0 * (y - x) / x) } else { "-".into() };
        let _ = writeln!(
            out,
            "{:<12} {:>8.0} -> {:<6.0}{:>6} {:>7}->{:<7}{:>6} {:>7}->{:<7}{:>6}",
            op.op,
            op.per_second,
            other.per_second,
            change(op.per_second, other.per_second),
            micros(op.p50_us),
            micros(other.p50_us),
            change(op.p50_us as f64, other.p50_us as f64),
            micros(op.p99_us),
            micros(other.p99_us),
            change(op.p99_us as f64, other.p99_us as f64),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recorder() -> Recorder {
        let mut r = Recorder::default();
        for us in 1..=1000u64 {
            r.record("lock", Duration::from_micros(us));
        }
        r.error("lock", "INV_LOCK_TIMEOUT");
        r
    }

    #[test]
    fn summarizes_percentiles_and_rate() {
        let ops = Report::summarize(&recorder(), Duration::from_secs(2));
        let lock = &ops[0];
        assert_eq!((lock.op.as_str(), lock.count), ("lock", 1000));
        assert!((lock.per_second - 500.0).abs() < 1e-9);
        assert!((499..=501).contains(&lock.p50_us), "{lock:?}");
        assert!((989..=991).contains(&lock.p99_us), "{lock:?}");
        assert_eq!(lock.max_us, 1000);
    }

    #[test]
    fn writes_hgrm_and_a_plot() {
        let r = recorder();
        let text = hgrm(&r);
        assert!(text.starts_with("# op lock") && text.contains("Total count = 1000"), "{text}");
        let svg = plot(&r, "t");
        assert!(svg.starts_with("<svg") && svg.contains("<polyline") && svg.contains("1 ms"));
    }

    #[test]
    fn compares_two_reports() {
        let ops = Report::summarize(&recorder(), Duration::from_secs(1));
        let report = |ops: Vec<OpSummary>| Report {
            scenario: "lock".into(),
            mode: "closed loop".into(),
            offered_rate: None,
            concurrency: Some(1),
            duration_s: 1.0,
            ops,
            errors: BTreeMap::new(),
            loadgen_cpu_cores: 0.0,
            service_cpu_cores: None,
            service_rss_mib: None,
            physical_limit_per_second: None,
            minimal_script_per_second: None,
            slowlog: None,
            stalls: None,
            memory: None,
            wave: None,
            stock_check: "ok".into(),
            machine: "test".into(),
        };
        let mut faster = ops.clone();
        faster[0].per_second *= 2.0;
        let text = compare(&report(ops), &report(faster));
        assert!(text.contains("+100%"), "{text}");
    }
}
