//! Light-weight plots without system libraries: hand-written SVG (with labels) and PNG (no text),
//! for the KV length over generation and the Peak / Dep bars per method.
use std::fmt::Write as _;
use std::io::Write as _;

const PALETTE: [(u8, u8, u8); 8] = [
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
];

const W: usize = 720;
const H: usize = 420;
const ML: f64 = 70.0;
const MR: f64 = 160.0;
const MT: f64 = 40.0;
const MB: f64 = 50.0;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn color(i: usize) -> String {
    let (r, g, b) = PALETTE[i % PALETTE.len()];
    format!("rgb({r},{g},{b})")
}

fn nice_max(v: f64) -> f64 {
    if v <= 0.0 {
        return 1.0;
    }
    let e = 10f64.powf(v.log10().floor());
    for m in [1.0, 2.0, 2.5, 5.0, 10.0] {
        if m * e >= v {
            return m * e;
        }
    }
    10.0 * e
}

fn svg_frame(o: &mut String, title: &str, xlabel: &str, ylabel: &str, ymax: f64) {
    let _ = write!(
        o,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="{}" y="22" text-anchor="middle" font-size="15">{}</text>
"#,
        (ML + W as f64 - MR) / 2.0,
        esc(title)
    );
    let (x0, y0, x1, y1) = (ML, MT, W as f64 - MR, H as f64 - MB);
    let _ = writeln!(
        o,
        r#"<line x1="{x0}" y1="{y1}" x2="{x1}" y2="{y1}" stroke="black"/><line x1="{x0}" y1="{y0}" x2="{x0}" y2="{y1}" stroke="black"/>"#
    );
    for k in 0..=4 {
        let v = ymax * k as f64 / 4.0;
        let y = y1 - (y1 - y0) * k as f64 / 4.0;
        let _ = writeln!(
            o,
            r##"<line x1="{x0}" y1="{y}" x2="{x1}" y2="{y}" stroke="#ddd"/><text x="{}" y="{}" text-anchor="end">{}</text>"##,
            x0 - 5.0,
            y + 4.0,
            fmt_tick(v)
        );
    }
    let _ = writeln!(
        o,
        r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#,
        (x0 + x1) / 2.0,
        H as f64 - 12.0,
        esc(xlabel)
    );
    let _ = writeln!(
        o,
        r#"<text x="16" y="{}" text-anchor="middle" transform="rotate(-90 16 {})">{}</text>"#,
        (y0 + y1) / 2.0,
        (y0 + y1) / 2.0,
        esc(ylabel)
    );
}

fn fmt_tick(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if v >= 1e4 {
        format!("{:.0}k", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}

/// Axis maxima of KV curves: the longest curve, and a round number above the largest KV length.
fn kv_ranges(series: &[(String, Vec<usize>)]) -> (f64, f64) {
    let xmax = series
        .iter()
        .map(|(_, c)| c.len())
        .max()
        .unwrap_or(1)
        .max(1);
    let ymax = series
        .iter()
        .flat_map(|(_, c)| c.iter())
        .copied()
        .max()
        .unwrap_or(1);
    (xmax as f64, nice_max(ymax as f64))
}

/// SVG line chart of the KV length after each generated token, one line per (label, curve).
pub fn kv_curves_svg(title: &str, series: &[(String, Vec<usize>)]) -> String {
    let (xmax, ymax) = kv_ranges(series);
    let mut o = String::new();
    svg_frame(&mut o, title, "generated token", "KV length (tokens)", ymax);
    let (x0, y0, x1, y1) = (ML, MT, W as f64 - MR, H as f64 - MB);
    for (i, (label, c)) in series.iter().enumerate() {
        let pts: Vec<String> = c
            .iter()
            .enumerate()
            .map(|(t, &v)| {
                format!(
                    "{:.1},{:.1}",
                    x0 + (x1 - x0) * (t + 1) as f64 / xmax,
                    y1 - (y1 - y0) * v as f64 / ymax
                )
            })
            .collect();
        let _ = writeln!(
            o,
            r#"<polyline fill="none" stroke="{}" stroke-width="1.5" points="{}"/>"#,
            color(i),
            pts.join(" ")
        );
        let ly = y0 + 18.0 * i as f64 + 10.0;
        let _ = writeln!(
            o,
            r#"<line x1="{}" y1="{ly}" x2="{}" y2="{ly}" stroke="{}" stroke-width="3"/><text x="{}" y="{}">{}</text>"#,
            x1 + 10.0,
            x1 + 30.0,
            color(i),
            x1 + 35.0,
            ly + 4.0,
            esc(label)
        );
    }
    o.push_str("</svg>\n");
    o
}

/// SVG bar chart: one bar per (label, value).
pub fn bars_svg(title: &str, ylabel: &str, bars: &[(String, f64)]) -> String {
    let ymax = nice_max(bars.iter().map(|b| b.1).fold(0.0, f64::max));
    let mut o = String::new();
    svg_frame(&mut o, title, "method", ylabel, ymax);
    let (x0, y0, x1, y1) = (ML, MT, W as f64 - MR, H as f64 - MB);
    let n = bars.len().max(1) as f64;
    let slot = (x1 - x0) / n;
    for (i, (label, v)) in bars.iter().enumerate() {
        let h = (y1 - y0) * (v / ymax).clamp(0.0, 1.0);
        let x = x0 + slot * i as f64 + slot * 0.15;
        let _ = writeln!(
            o,
            r#"<rect x="{x:.1}" y="{:.1}" width="{:.1}" height="{h:.1}" fill="{}"/><text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text><text x="{:.1}" y="{:.1}" text-anchor="middle" font-size="10">{}</text>"#,
            y1 - h,
            slot * 0.7,
            color(i),
            x + slot * 0.35,
            y1 + 15.0,
            esc(label),
            x + slot * 0.35,
            y1 - h - 4.0,
            fmt_tick(*v)
        );
    }
    o.push_str("</svg>\n");
    o
}

/// An RGB raster for PNG output (no text).
struct Canvas {
    px: Vec<u8>,
}

impl Canvas {
    fn new() -> Self {
        Self {
            px: vec![255; W * H * 3],
        }
    }
    fn set(&mut self, x: i64, y: i64, c: (u8, u8, u8)) {
        if x >= 0 && y >= 0 && (x as usize) < W && (y as usize) < H {
            let i = (y as usize * W + x as usize) * 3;
            self.px[i..i + 3].copy_from_slice(&[c.0, c.1, c.2]);
        }
    }
    fn rect(&mut self, x0: f64, y0: f64, x1: f64, y1: f64, c: (u8, u8, u8)) {
        for y in y0.round() as i64..y1.round() as i64 {
            for x in x0.round() as i64..x1.round() as i64 {
                self.set(x, y, c);
            }
        }
    }
    fn line(&mut self, a: (f64, f64), b: (f64, f64), c: (u8, u8, u8)) {
        let n = ((b.0 - a.0).abs().max((b.1 - a.1).abs()).ceil() as usize).max(1);
        for k in 0..=n {
            let t = k as f64 / n as f64;
            let (x, y) = (a.0 + (b.0 - a.0) * t, a.1 + (b.1 - a.1) * t);
            self.set(x.round() as i64, y.round() as i64, c);
            self.set(x.round() as i64, y.round() as i64 + 1, c);
        }
    }
    fn axes(&mut self) {
        let (x0, y0, x1, y1) = (ML, MT, W as f64 - MR, H as f64 - MB);
        for k in 1..=4 {
            let y = y1 - (y1 - y0) * k as f64 / 4.0;
            self.rect(x0, y, x1, y + 1.0, (221, 221, 221));
        }
        self.rect(x0, y1, x1, y1 + 1.0, (0, 0, 0));
        self.rect(x0 - 1.0, y0, x0, y1 + 1.0, (0, 0, 0));
    }
    fn png(&self) -> Vec<u8> {
        encode_png(W, H, 3, &self.px)
    }
}

/// Encode 8-bit pixels as a PNG (no filtering, zlib via flate2): `channels` = 3 (RGB) or 4 (RGBA),
/// `pixels` row-major, `width * height * channels` bytes. Also used for `lightthinker mask render`.
///
/// ```
/// let png = lt_eval::plot::encode_png(2, 1, 3, &[255, 0, 0, 0, 0, 255]);
/// assert_eq!(&png[1..4], b"PNG");
/// ```
pub fn encode_png(width: usize, height: usize, channels: usize, pixels: &[u8]) -> Vec<u8> {
    let stride = width * channels;
    let mut raw = Vec::with_capacity((stride + 1) * height);
    for row in pixels.chunks(stride.max(1)).take(height) {
        raw.push(0);
        raw.extend_from_slice(row);
    }
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    // writing to a Vec cannot fail
    let _ = z.write_all(&raw);
    let idat = z.finish().unwrap_or_default();
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&(width as u32).to_be_bytes());
    ihdr.extend_from_slice(&(height as u32).to_be_bytes());
    let colour = if channels == 4 { 6 } else { 2 };
    ihdr.extend_from_slice(&[8, colour, 0, 0, 0]);
    chunk(&mut out, b"IHDR", &ihdr);
    chunk(&mut out, b"IDAT", &idat);
    chunk(&mut out, b"IEND", &[]);
    out
}

fn crc32(data: &[u8]) -> u32 {
    let mut c = 0xFFFF_FFFFu32;
    for &b in data {
        c ^= b as u32;
        for _ in 0..8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
        }
    }
    !c
}

fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    let start = out.len();
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    let crc = crc32(&out[start..]);
    out.extend_from_slice(&crc.to_be_bytes());
}

/// PNG (no text; colours as in the SVG legend) of the KV curves.
pub fn kv_curves_png(series: &[(String, Vec<usize>)]) -> Vec<u8> {
    let (xmax, ymax) = kv_ranges(series);
    let mut cv = Canvas::new();
    cv.axes();
    let (x0, y0, x1, y1) = (ML, MT, W as f64 - MR, H as f64 - MB);
    for (i, (_, c)) in series.iter().enumerate() {
        let pt = |t: usize, v: usize| {
            (
                x0 + (x1 - x0) * (t + 1) as f64 / xmax,
                y1 - (y1 - y0) * v as f64 / ymax,
            )
        };
        for t in 1..c.len() {
            cv.line(pt(t - 1, c[t - 1]), pt(t, c[t]), PALETTE[i % PALETTE.len()]);
        }
        let ly = y0 + 18.0 * i as f64 + 10.0;
        cv.rect(
            x1 + 10.0,
            ly - 1.0,
            x1 + 30.0,
            ly + 2.0,
            PALETTE[i % PALETTE.len()],
        );
    }
    cv.png()
}

/// PNG (no text) of a bar chart.
pub fn bars_png(bars: &[(String, f64)]) -> Vec<u8> {
    let ymax = nice_max(bars.iter().map(|b| b.1).fold(0.0, f64::max));
    let mut cv = Canvas::new();
    cv.axes();
    let (x0, y0, x1, y1) = (ML, MT, W as f64 - MR, H as f64 - MB);
    let slot = (x1 - x0) / bars.len().max(1) as f64;
    for (i, (_, v)) in bars.iter().enumerate() {
        let h = (y1 - y0) * (v / ymax).clamp(0.0, 1.0);
        let x = x0 + slot * i as f64 + slot * 0.15;
        cv.rect(x, y1 - h, x + slot * 0.7, y1, PALETTE[i % PALETTE.len()]);
    }
    cv.png()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc_matches_known_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn outputs_are_well_formed() {
        let s = kv_curves_svg(
            "kv <idx 0>",
            &[("a".into(), vec![1, 2, 3]), ("b&c".into(), vec![2, 2])],
        );
        assert!(s.starts_with("<svg") && s.trim_end().ends_with("</svg>"));
        assert_eq!(s.matches("<polyline").count(), 2);
        assert!(s.contains("kv &lt;idx 0&gt;") && s.contains("b&amp;c"));
        let b = bars_svg("Peak", "tokens", &[("x".into(), 10.0), ("y".into(), 5.0)]);
        assert_eq!(b.matches("<rect").count(), 3); // background + 2 bars
        let p = bars_png(&[("x".into(), 10.0)]);
        assert_eq!(&p[..8], b"\x89PNG\r\n\x1a\n");
        assert_eq!(&p[12..16], b"IHDR");
        let p = kv_curves_png(&[("a".into(), vec![1, 5, 3])]);
        assert_eq!(&p[p.len() - 8..p.len() - 4], b"IEND");
    }
}
