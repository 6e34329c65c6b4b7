//! The demo's table and pictures.
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use lt_data::{Builder, CompressConfig, LtTokenizer, Mode, TrainSample};
use lt_eval::Summary;
use lt_train::StepMetrics;

use super::run::DemoOptions;
use super::task::{ProblemStream, TaskShape};

fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 {
        format!("{:.1}%", 100.0 * a / b)
    } else {
        "-".into()
    }
}

/// The results table (markdown): the paper's Table 1 layout plus the LightThinker/vanilla ratios.
pub fn markdown(
    table: &[(String, Summary)],
    trained: &[(PathBuf, Vec<StepMetrics>)],
    opts: &DemoOptions,
    wall_s: f64,
) -> String {
    let mut s = String::new();
    s.push_str(&format!(
        "# LightThinker demo{}\n\n{} held-out problems, seed {}, total wall time {:.0} s.\n\n",
        if opts.quick {
            " (--quick: pipeline check, not accuracy)"
        } else {
            ""
        },
        opts.n_eval,
        opts.seed,
        wall_s
    ));
    s.push_str("| method | steps | final loss | Acc (%) | Time (s) | Peak (tokens) | Dep | compressions |\n");
    s.push_str("|---|---:|---:|---:|---:|---:|---:|---:|\n");
    for ((name, sm), (_, metrics)) in table.iter().zip(trained) {
        s.push_str(&format!(
            "| {name} | {} | {:.4} | {:.1} | {:.1} | {:.1} | {:.0} | {:.2} |\n",
            metrics.len(),
            metrics.last().map(|m| m.loss).unwrap_or(f64::NAN),
            sm.acc,
            sm.time_h * 3600.0,
            sm.peak,
            sm.dep,
            sm.compress
        ));
    }
    if table.len() == 2 {
        let (v, l) = (&table[0].1, &table[1].1);
        s.push_str(&format!(
            "\nLightThinker / vanilla: peak {}, Dep {}, time {}, accuracy {:+.1} points.\n",
            ratio(l.peak, v.peak),
            ratio(l.dep, v.dep),
            ratio(l.time_h, v.time_h),
            l.acc - v.acc
        ));
    }
    s.push_str("\nPaper layout (lt-eval):\n\n");
    s.push_str(&lt_eval::table1_markdown(table));
    s
}

/// KV-length curves of the first problem, the training mask of one sample, loss curves.
pub fn plots(
    out: &Path,
    names: &[&str],
    evals: &[(Summary, Vec<lt_eval::Record>)],
    trained: &[(PathBuf, Vec<StepMetrics>)],
    cfg: &CompressConfig,
    tok: &LtTokenizer,
) -> Result<()> {
    let w = |name: &str, bytes: &[u8]| -> Result<()> {
        lt_eval::write_atomic(&out.join(name), bytes).with_context(|| format!("writing {name}"))
    };
    // KV length over the generation of problem 0.
    let series: Vec<(String, Vec<usize>)> = names
        .iter()
        .zip(evals)
        .filter_map(|(n, (_, recs))| {
            let r = recs.iter().find(|r| r.idx == 0)?;
            Some((n.to_string(), r.kv_trace.clone()?))
        })
        .collect();
    if !series.is_empty() {
        w(
            "kv_length.svg",
            lt_eval::plot::kv_curves_svg("KV cache length while generating problem 0", &series)
                .as_bytes(),
        )?;
        w("kv_length.png", &lt_eval::plot::kv_curves_png(&series))?;
    }
    // Peak and Dep bars.
    let peak: Vec<(String, f64)> = names
        .iter()
        .zip(evals)
        .map(|(n, (s, _))| (n.to_string(), s.peak))
        .collect();
    let dep: Vec<(String, f64)> = names
        .iter()
        .zip(evals)
        .map(|(n, (s, _))| (n.to_string(), s.dep))
        .collect();
    w(
        "peak.svg",
        lt_eval::plot::bars_svg("Mean peak KV tokens", "tokens", &peak).as_bytes(),
    )?;
    w(
        "dep.svg",
        lt_eval::plot::bars_svg("Mean Dep", "Dep", &dep).as_bytes(),
    )?;
    // Loss curves.
    for (n, (_, m)) in names.iter().zip(trained) {
        let pts: Vec<(usize, f64)> = m.iter().map(|m| (m.step, m.loss)).collect();
        w(
            &format!("loss_{n}.svg"),
            lt_train::loss_curve_svg(&pts, &format!("{n} training loss")).as_bytes(),
        )?;
    }
    // The aug-wo-pc training mask of one sample, with token labels.
    let opts = super::run::build_options(Mode::AugWoPc);
    let builder = Builder::new(cfg, tok, opts)?;
    let p = ProblemStream::new(
        7,
        TaskShape {
            min_steps: 2,
            max_steps: 2,
        },
    )
    .next()
    .expect("infinite stream");
    let sample = TrainSample::from_value(p.training_record()).map_err(|e| anyhow::anyhow!(e))?;
    let row = builder.build(&sample)?.remove(0);
    let mask = row.mask(&builder.options().effective_flags(), None)?;
    let labels: Vec<String> = row
        .input_ids
        .iter()
        .map(|&i| {
            tok.id_to_token(i as u32)
                .unwrap_or_default()
                .replace('Ġ', "␣")
                .replace('Ċ', "\\n")
        })
        .collect();
    let svg = lt_mask::render::to_svg(
        &mask,
        Some(&labels),
        12,
        "aug-wo-pc training mask (row = query, column = key)",
    );
    w("training_mask.svg", svg.as_bytes())?;
    let (pw, ph, px) = lt_mask::render::to_rgba(&mask, 6);
    w(
        "training_mask.png",
        &crate::cli::mask::encode_png(pw, ph, &px)?,
    )?;
    Ok(())
}
