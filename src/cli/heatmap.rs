//! The lock-health heatmap: warehouses down, hours across, each cell
//! coloured by its success rate against the target. Rendered for a terminal
//! (ANSI colours, or letters without a terminal) and as SVG.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use crate::pb;

/// Cells by warehouse and hour.
pub struct Heatmap {
    hours: Vec<i64>,
    warehouses: Vec<String>,
    cells: BTreeMap<(String, i64), (f64, u64, bool)>,
    target: f64,
}

/// How a cell fares: met the target, below it, well below it (under 99.9%), or no data.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Grade {
    Met,
    Below,
    Bad,
    Empty,
}

impl Heatmap {
    /// A heatmap of `cells`, marking those below `target`.
    pub fn new(cells: &[pb::LockHealthCell], target: f64) -> Self {
        let hour = |c: &pb::LockHealthCell| c.hour.as_ref().map_or(0, |t| t.seconds * 1000);
        let hours: BTreeSet<i64> = cells.iter().map(hour).collect();
        let warehouses: BTreeSet<String> = cells.iter().map(|c| c.warehouse_id.clone()).collect();
        let cells = cells
            .iter()
            .map(|c| ((c.warehouse_id.clone(), hour(c)), (c.success_rate, c.attempts, c.below_target)))
            .collect();
        Self { hours: hours.into_iter().collect(), warehouses: warehouses.into_iter().collect(), cells, target }
    }

    fn grade(&self, warehouse: &str, hour: i64) -> (Grade, Option<f64>) {
        match self.cells.get(&(warehouse.to_owned(), hour)) {
            None | Some((_, 0, _)) => (Grade::Empty, None),
            Some((rate, _, below)) if !below => (Grade::Met, Some(*rate)),
            Some((rate, ..)) if *rate >= 0.999 => (Grade::Below, Some(*rate)),
            Some((rate, ..)) => (Grade::Bad, Some(*rate)),
        }
    }

    fn hour_label(hour_ms: i64) -> String {
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(hour_ms.max(0) as u64);
        // "2026-11-22T03:00:00Z" -> "11-22 03h"
        let text = humantime::format_rfc3339_seconds(t).to_string();
        format!("{} {}h", &text[5..10], &text[11..13])
    }

    /// The terminal view: colours with `ansi`, else `#` (met), `-` (below), `X` (under 99.9%).
    pub fn terminal(&self, ansi: bool) -> String {
        let mut out = String::new();
        if self.hours.is_empty() {
            out.push_str("(no lock attempts in this range)\n");
            return out;
        }
        let width = self.warehouses.iter().map(String::len).max().unwrap_or(9).max(9);
        let _ = writeln!(out, "lock success rate per hour (target {:.2}%), oldest hour first", self.target * 100.0);
        let _ = writeln!(
            out,
            "{:width$}  from {} to {}",
            "",
            Self::hour_label(self.hours[0]),
            Self::hour_label(*self.hours.last().unwrap_or(&0))
        );
        for warehouse in &self.warehouses {
            let _ = write!(out, "{warehouse:width$}  ");
            let mut worst: Option<f64> = None;
            for hour in &self.hours {
                let (grade, rate) = self.grade(warehouse, *hour);
                if let Some(rate) = rate {
                    worst = Some(worst.map_or(rate, |w: f64| w.min(rate)));
                }
                let cell = match (grade, ansi) {
                    (Grade::Met, true) => "\u{1b}[42m  \u{1b}[0m",
                    (Grade::Below, true) => "\u{1b}[43m  \u{1b}[0m",
                    (Grade::Bad, true) => "\u{1b}[41m  \u{1b}[0m",
                    (Grade::Empty, true) => "\u{b7}\u{b7}",
                    (Grade::Met, false) => "##",
                    (Grade::Below, false) => "--",
                    (Grade::Bad, false) => "XX",
                    (Grade::Empty, false) => "..",
                };
                out.push_str(cell);
            }
            let _ = writeln!(out, "  worst {}", worst.map_or("-".into(), |w| format!("{:.3}%", w * 100.0)));
        }
        let legend = if ansi {
            "green: met the target, yellow: below it, red: under 99.9%, dots: no attempts"
        } else {
            "##: met the target, --: below it, XX: under 99.9%, ..: no attempts"
        };
        let _ = writeln!(out, "{legend}");
        out
    }

    /// The SVG view, with a tooltip per cell.
    pub fn svg(&self) -> String {
        let (cell, left, top) = (22, 140, 40);
        // Wide enough for the title even with a single hour.
        let width = (left + cell * self.hours.len().max(1) + 20).max(520);
        let height = top + cell * self.warehouses.len().max(1) + 60;
        let mut svg = String::new();
        let _ = writeln!(
            svg,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="12">"#
        );
        let _ = writeln!(
            svg,
            r#"<text x="10" y="20" font-size="14">Lock success rate per warehouse and hour (target {:.2}%)</text>"#,
            self.target * 100.0
        );
        for (row, warehouse) in self.warehouses.iter().enumerate() {
            let y = top + row * cell;
            let _ = writeln!(svg, r#"<text x="10" y="{}">{}</text>"#, y + 15, escape(warehouse));
            for (col, hour) in self.hours.iter().enumerate() {
                let (grade, rate) = self.grade(warehouse, *hour);
                let fill = match grade {
                    Grade::Met => "#2e7d32",
                    Grade::Below => "#f9a825",
                    Grade::Bad => "#c62828",
                    Grade::Empty => "#eeeeee",
                };
                let title = format!(
                    "{} {}: {}",
                    escape(warehouse),
                    Self::hour_label(*hour),
                    rate.map_or("no attempts".into(), |r| format!("{:.3}%", r * 100.0))
                );
                let _ = writeln!(
                    svg,
                    r#"<rect x="{}" y="{y}" width="{}" height="{}" fill="{fill}" stroke="white"><title>{title}</title></rect>"#,
                    left + col * cell,
                    cell - 1,
                    cell - 1
                );
            }
        }
        if let (Some(first), Some(last)) = (self.hours.first(), self.hours.last()) {
            let y = top + cell * self.warehouses.len() + 20;
            let _ = writeln!(
                svg,
                r#"<text x="{left}" y="{y}">{} to {}</text>"#,
                Self::hour_label(*first),
                Self::hour_label(*last)
            );
        }
        svg.push_str("</svg>\n");
        svg
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cell(warehouse: &str, hour: i64, rate: f64, attempts: u64) -> pb::LockHealthCell {
        pb::LockHealthCell {
            warehouse_id: warehouse.into(),
            hour: Some(pbjson_types::Timestamp { seconds: hour * 3600, nanos: 0 }),
            attempts,
            success_rate: rate,
            below_target: rate < 0.9995,
            ..Default::default()
        }
    }

    #[test]
    fn marks_cells_under_the_target() {
        let map = Heatmap::new(&[cell("A", 1, 1.0, 10), cell("A", 2, 0.9992, 10), cell("B", 2, 0.99, 10)], 0.9995);
        let text = map.terminal(false);
        assert!(text.contains("A          ##--"), "{text}");
        assert!(text.contains("B          ..XX"), "{text}");
        let svg = map.svg();
        assert_eq!(svg.matches("<rect").count(), 4);
        assert!(svg.contains("#c62828") && svg.contains("#f9a825") && svg.contains("#2e7d32"));
    }
}
