//! Text outputs: the reference's report block and CSV line, and the paper's Table 1 in markdown.
use std::fmt::Write;

use crate::metrics::Summary;
use crate::reference::Dataset;

/// Python's `round(x)` (ties to even).
fn py_round(x: f64) -> f64 {
    x.round_ties_even()
}

/// Python's `repr` of a float (`50.0`, `62.8`).
fn py_float(x: f64) -> String {
    if x.is_finite() && x.fract() == 0.0 && x.abs() < 1e16 {
        format!("{x:.1}")
    } else {
        format!("{x}")
    }
}

/// The reference's report block (acc, time, attend, output len, total len, peak mem, compress), ending
/// with its CSV line `acc,time_h,round(Dep),round(output_len),round(peak),round(compress)`.
pub fn report_block(s: &Summary) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "acc: {}/{} = {:.2}%", s.correct, s.n, s.acc);
    let _ = writeln!(
        o,
        "time: {:.2} h (mean {:.3} s per sample)",
        s.time_h, s.mean_time_s
    );
    let _ = writeln!(o, "attend: {:.2}", s.dep);
    let _ = writeln!(o, "output len: {:.2}", s.output_len);
    let _ = writeln!(o, "total len: {:.2}", s.total_len);
    let _ = writeln!(o, "peak mem: {:.2}", s.peak);
    let _ = writeln!(o, "compress: {:.2}", s.compress);
    o.push_str(&csv_line(s));
    o.push('\n');
    o
}

/// The reference's CSV line `acc,time_h,round(Dep),round(output_len),round(peak),round(compress)`.
///
/// ```
/// let s = lt_eval::Summary { acc: 62.8, time_h: 10.171, dep: 3.7e6, output_len: 1000.5, peak: 1289.4, compress: 20.0, ..Default::default() };
/// assert_eq!(lt_eval::csv_line(&s), "62.8,10.17,3700000,1000,1289,20");
/// ```
pub fn csv_line(s: &Summary) -> String {
    format!(
        "{},{},{},{},{},{}",
        py_float(s.acc),
        py_float(py_round(s.time_h * 100.0) / 100.0),
        py_round(s.dep),
        py_round(s.output_len),
        py_round(s.peak),
        py_round(s.compress)
    )
}

fn fmt_time(h: f64) -> String {
    if h == 0.0 || h >= 0.01 {
        format!("{h:.2}")
    } else {
        format!("{h:.4}")
    }
}

fn fmt_dep_m(d: f64) -> String {
    let m = d / 1e6;
    if m >= 10.0 {
        format!("{m:.1}")
    } else if m >= 0.01 || m == 0.0 {
        format!("{m:.2}")
    } else {
        format!("{m:.2e}")
    }
}

/// The paper's Table 1 cell `Acc / Time / Peak / Dep` (Time in hours, Dep in millions).
pub fn table1_cell(s: &Summary) -> String {
    format!(
        "{:.2} / {} / {:.0} / {}",
        s.acc,
        fmt_time(s.time_h),
        s.peak,
        fmt_dep_m(s.dep)
    )
}

/// Markdown table comparing several (name, summary) entries in the paper's Table 1 layout.
///
/// Entries with the same name form one row. When all entries are for one dataset (or none is
/// labelled), each metric gets its own column (Acc, Time, Peak, Dep, output length, compressions,
/// Δ vs the first row). Otherwise each dataset is a column of `Acc / Time / Peak / Dep` cells, plus AVG.
pub fn table1_markdown(entries: &[(String, Summary)]) -> String {
    let mut names: Vec<&str> = Vec::new();
    for (n, _) in entries {
        if !names.contains(&n.as_str()) {
            names.push(n);
        }
    }
    let datasets: Vec<Option<Dataset>> = {
        let mut d: Vec<Option<Dataset>> = Vec::new();
        for ds in Dataset::ALL.map(Some).into_iter().chain([None]) {
            if entries.iter().any(|(_, s)| s.dataset == ds) {
                d.push(ds);
            }
        }
        d
    };
    let mut o = String::new();
    if datasets.len() <= 1 {
        let title = datasets
            .first()
            .copied()
            .flatten()
            .map_or("", |d| d.title());
        let _ = writeln!(
            o,
            "| Method{} | Acc (%) ↑ | Time (h) ↓ | Peak ↓ | Dep (M) ↓ | Output len | Compress | ΔPeak | ΔDep |",
            if title.is_empty() { String::new() } else { format!(" ({title})") }
        );
        o.push_str("|---|---:|---:|---:|---:|---:|---:|---:|---:|\n");
        let base = entries.first().map(|(_, s)| s.clone());
        for (name, s) in entries {
            let delta = |a: f64, b: f64| {
                if b == 0.0 {
                    "–".to_string()
                } else {
                    format!("{:+.1}%", (a / b - 1.0) * 100.0)
                }
            };
            let (dp, dd) = match &base {
                Some(b) => (delta(s.peak, b.peak), delta(s.dep, b.dep)),
                None => ("–".into(), "–".into()),
            };
            let _ = writeln!(
                o,
                "| {name} | {:.2} | {} | {:.0} | {} | {:.1} | {:.1} | {dp} | {dd} |",
                s.acc,
                fmt_time(s.time_h),
                s.peak,
                fmt_dep_m(s.dep),
                s.output_len,
                s.compress
            );
        }
        return o;
    }
    o.push_str("| Method |");
    for d in &datasets {
        let _ = write!(o, " {} |", d.map_or("—", |d| d.title()));
    }
    o.push_str(" AVG |\n|---|");
    for _ in 0..=datasets.len() {
        o.push_str("---|");
    }
    o.push('\n');
    for name in names {
        let _ = write!(o, "| {name} |");
        let mut present = Vec::new();
        for d in &datasets {
            match entries.iter().find(|(n, s)| n == name && s.dataset == *d) {
                Some((_, s)) => {
                    let _ = write!(o, " {} |", table1_cell(s));
                    present.push(s);
                }
                None => o.push_str(" – |"),
            }
        }
        let k = present.len() as f64;
        let avg = Summary {
            acc: present.iter().map(|s| s.acc).sum::<f64>() / k,
            time_h: present.iter().map(|s| s.time_h).sum::<f64>() / k,
            peak: present.iter().map(|s| s.peak).sum::<f64>() / k,
            dep: present.iter().map(|s| s.dep).sum::<f64>() / k,
            ..Default::default()
        };
        let _ = writeln!(o, " **{}** |", table1_cell(&avg));
    }
    o.push_str("\nCells: Acc (%) ↑ / Time (h) ↓ / Peak (tokens) ↓ / Dep (M) ↓.\n");
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(d: Option<Dataset>, acc: f64, peak: f64, dep: f64) -> Summary {
        Summary {
            dataset: d,
            acc,
            peak,
            dep,
            time_h: 2.0,
            ..Default::default()
        }
    }

    #[test]
    fn single_dataset_layout() {
        let t = table1_markdown(&[
            (
                "Vanilla".into(),
                s(Some(Dataset::Gsm8k), 90.9, 2086.0, 3.9e6),
            ),
            (
                "LightThinker".into(),
                s(Some(Dataset::Gsm8k), 90.14, 676.0, 1.0e6),
            ),
        ]);
        assert!(t.starts_with("| Method (GSM8K) | Acc"), "{t}");
        assert!(
            t.contains("| Vanilla | 90.90 | 2.00 | 2086 | 3.90 |"),
            "{t}"
        );
        assert!(t.contains("| -67.6% | -74.4% |"), "{t}");
    }

    #[test]
    fn multi_dataset_layout_with_avg() {
        let t = table1_markdown(&[
            ("LT".into(), s(Some(Dataset::Gsm8k), 90.0, 600.0, 1e6)),
            ("LT".into(), s(Some(Dataset::Bbh), 70.0, 1000.0, 3e6)),
            ("Vanilla".into(), s(Some(Dataset::Gsm8k), 91.0, 2000.0, 4e6)),
        ]);
        assert!(t.starts_with("| Method | GSM8K | BBH | AVG |"), "{t}");
        assert!(t.contains("| LT | 90.00 / 2.00 / 600 / 1.00 | 70.00 / 2.00 / 1000 / 3.00 | **80.00 / 2.00 / 800 / 2.00** |"), "{t}");
        assert!(
            t.contains("| Vanilla | 91.00 / 2.00 / 2000 / 4.00 | – |"),
            "{t}"
        );
    }

    #[test]
    fn csv_rounds_like_python() {
        let s = Summary {
            acc: 50.0,
            dep: 2.5,
            output_len: 3.5,
            peak: 0.5,
            compress: 1.5,
            time_h: 0.125,
            ..Default::default()
        };
        assert_eq!(csv_line(&s), "50.0,0.12,2,4,0,2");
        assert!(report_block(&s).ends_with("50.0,0.12,2,4,0,2\n"));
    }
}
