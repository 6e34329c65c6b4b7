//! `metrics.jsonl` lines and the loss-curve SVG.
use crate::error::{Result, TrainError};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::Path;

/// One optimizer step, as written to `OUT/metrics.jsonl` (one JSON object per line).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepMetrics {
    /// 1-based optimizer step.
    pub step: usize,
    /// Fractional epoch at the end of the step (HF's `epoch` log field).
    pub epoch: f64,
    /// Token-mean cross-entropy over the accumulation window.
    pub loss: f64,
    /// Learning rate used by this update.
    pub lr: f64,
    /// Global gradient L2 norm before clipping.
    pub grad_norm: f64,
    /// Real (unpadded) tokens processed per second of wall time in this step.
    pub tokens_per_s: f64,
    /// Real tokens in the window.
    pub tokens: usize,
    /// Labelled tokens in the window (`N_window`).
    pub labelled_tokens: usize,
    /// Wall seconds of the step.
    pub step_time_s: f64,
}

/// Append one line to a metrics file (created if missing).
pub fn append_metrics(path: &Path, m: &StepMetrics) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| TrainError::io(path, e))?;
    let line = serde_json::to_string(m).map_err(|e| TrainError::Json {
        path: path.into(),
        source: e,
    })?;
    writeln!(f, "{line}").map_err(|e| TrainError::io(path, e))
}

/// Read a metrics file (blank or truncated trailing lines, as after a kill, are skipped).
pub fn read_metrics(path: &Path) -> Result<Vec<StepMetrics>> {
    let text = std::fs::read_to_string(path).map_err(|e| TrainError::io(path, e))?;
    Ok(text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect())
}

/// Keep only the lines of steps `<= max_step` (and drop torn lines), atomically. The kept lines
/// are copied verbatim: re-serialising parsed floats could change their last digit.
pub fn truncate_metrics(path: &Path, max_step: usize) -> Result<()> {
    #[derive(Deserialize)]
    struct Step {
        step: usize,
    }
    let text = std::fs::read_to_string(path).map_err(|e| TrainError::io(path, e))?;
    let mut kept = String::with_capacity(text.len());
    for line in text.lines() {
        if serde_json::from_str::<Step>(line).is_ok_and(|s| s.step <= max_step) {
            kept.push_str(line);
            kept.push('\n');
        }
    }
    crate::checkpoint::write_atomic(path, kept.as_bytes())
}

/// Render a loss curve (loss per step, plus a moving average) as a standalone SVG document.
///
/// ```no_run
/// let svg = lt_train::loss_curve_svg(&[(1, 3.0), (2, 2.5), (3, 2.0)], "demo");
/// assert!(svg.starts_with("<svg") && svg.contains("polyline"));
/// ```
pub fn loss_curve_svg(points: &[(usize, f64)], title: &str) -> String {
    let (w, h) = (720.0_f64, 420.0_f64);
    let (ml, mr, mt, mb) = (70.0, 20.0, 40.0, 50.0);
    let pts: Vec<(f64, f64)> = points
        .iter()
        .filter(|(_, l)| l.is_finite())
        .map(|&(s, l)| (s as f64, l))
        .collect();
    let (x0, x1) = pts
        .iter()
        .fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.0), b.max(p.0)));
    let (y0, y1) = pts
        .iter()
        .fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.1), b.max(p.1)));
    let (x0, x1) = if pts.is_empty() {
        (0.0, 1.0)
    } else if x1 > x0 {
        (x0, x1)
    } else {
        (x0 - 1.0, x1 + 1.0)
    };
    let (y0, y1) = if pts.is_empty() {
        (0.0, 1.0)
    } else if y1 > y0 {
        (y0, y1)
    } else {
        (y0 - 1.0, y1 + 1.0)
    };
    let sx = |x: f64| ml + (x - x0) / (x1 - x0) * (w - ml - mr);
    let sy = |y: f64| h - mb - (y - y0) / (y1 - y0) * (h - mt - mb);
    let esc = |s: &str| {
        s.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
    };
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{}\" y=\"24\" text-anchor=\"middle\" font-size=\"15\">{}</text>\n",
        w / 2.0,
        esc(title)
    );
    // axes + ticks
    svg += &format!(
        "<line x1=\"{ml}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/>\n<line x1=\"{ml}\" y1=\"{mt}\" x2=\"{ml}\" y2=\"{}\" stroke=\"black\"/>\n",
        h - mb, w - mr, h - mb, h - mb
    );
    for i in 0..=4 {
        let fx = x0 + (x1 - x0) * i as f64 / 4.0;
        let fy = y0 + (y1 - y0) * i as f64 / 4.0;
        svg += &format!(
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>\n<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{:.3}</text>\n\
             <line x1=\"{ml}\" y1=\"{:.1}\" x2=\"{:.1}\" y2=\"{:.1}\" stroke=\"#ddd\"/>\n",
            sx(fx), h - mb + 18.0, fx.round(), ml - 6.0, sy(fy) + 4.0, fy, sy(fy), w - mr, sy(fy)
        );
    }
    svg += &format!(
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">optimizer step</text>\n<text x=\"16\" y=\"{}\" transform=\"rotate(-90 16 {})\" text-anchor=\"middle\">loss</text>\n",
        (ml + w - mr) / 2.0, h - 12.0, h / 2.0, h / 2.0
    );
    let line = |p: &[(f64, f64)]| {
        p.iter()
            .map(|&(x, y)| format!("{:.2},{:.2}", sx(x), sy(y)))
            .collect::<Vec<_>>()
            .join(" ")
    };
    svg += &format!(
        "<polyline fill=\"none\" stroke=\"#9ecae1\" stroke-width=\"1\" points=\"{}\"/>\n",
        line(&pts)
    );
    let k = (pts.len() / 20).max(1);
    let smooth: Vec<(f64, f64)> = (0..pts.len())
        .map(|i| {
            let lo = i.saturating_sub(k - 1);
            let win = &pts[lo..=i];
            (
                pts[i].0,
                win.iter().map(|p| p.1).sum::<f64>() / win.len() as f64,
            )
        })
        .collect();
    svg += &format!(
        "<polyline fill=\"none\" stroke=\"#08519c\" stroke-width=\"2\" points=\"{}\"/>\n",
        line(&smooth)
    );
    svg += "</svg>\n";
    svg
}
