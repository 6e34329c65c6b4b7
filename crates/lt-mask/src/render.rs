//! Pictures of masks: ASCII, SVG (with token labels) and RGBA pixels for PNG encoders.
use crate::IntervalMask;

/// Escape a label for XML text.
fn xml_escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for ch in s.chars() {
        match ch {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\n' => o.push_str("\\n"),
            c if c.is_control() => o.push('?'),
            c => o.push(c),
        }
    }
    o
}

/// An SVG picture of `mask`: one square per cell (dark = visible), row labels on the left and
/// column labels on top when `labels` is given (label `i` names token `i`; missing ones show the
/// index). `cell` is the square size in pixels.
pub fn to_svg(mask: &IntervalMask, labels: Option<&[String]>, cell: usize, title: &str) -> String {
    let (rows, cols) = (mask.rows(), mask.cols());
    let cell = cell.max(2);
    let label = |i: usize| -> String {
        labels
            .and_then(|l| l.get(i))
            .map(|s| xml_escape(s))
            .unwrap_or_else(|| i.to_string())
    };
    let margin = if labels.is_some() { 90 } else { 40 };
    let top = margin + 20;
    let (w, h) = (margin + cols * cell + 10, top + rows * cell + 10);
    let mut s = String::new();
    s.push_str(&format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" font-family=\"monospace\" font-size=\"{}\">\n",
        (cell as f64 * 0.8).clamp(4.0, 12.0)
    ));
    s.push_str(&format!(
        "<rect x=\"0\" y=\"0\" width=\"{w}\" height=\"{h}\" fill=\"white\"/>\n<text x=\"4\" y=\"14\" font-size=\"12\">{}</text>\n",
        xml_escape(title)
    ));
    s.push_str(&format!(
        "<rect x=\"{margin}\" y=\"{top}\" width=\"{}\" height=\"{}\" fill=\"#f2f2f2\" stroke=\"#999\"/>\n",
        cols * cell,
        rows * cell
    ));
    for r in 0..rows {
        for &(a, b) in mask.row(r) {
            s.push_str(&format!(
                "<rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{cell}\" fill=\"#1f4e9c\"/>\n",
                margin + a as usize * cell,
                top + r * cell,
                (b - a) as usize * cell
            ));
        }
    }
    // labels only when they can be read
    if cell >= 6 {
        for r in 0..rows {
            s.push_str(&format!(
                "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>\n",
                margin - 3,
                top + r * cell + cell * 4 / 5,
                label(r)
            ));
        }
        for c in 0..cols {
            let (x, y) = (margin + c * cell + cell * 4 / 5, top - 3);
            s.push_str(&format!(
                "<text x=\"{x}\" y=\"{y}\" transform=\"rotate(-90 {x} {y})\">{}</text>\n",
                label(c)
            ));
        }
    }
    s.push_str("</svg>\n");
    s
}

/// RGBA8 pixels (`width * height * 4`) of the mask, `cell` pixels per cell, a 1-pixel grid when
/// `cell >= 4`. Returns `(width, height, pixels)`; feed it to any PNG encoder.
pub fn to_rgba(mask: &IntervalMask, cell: usize) -> (usize, usize, Vec<u8>) {
    let cell = cell.max(1);
    let (w, h) = (mask.cols() * cell, mask.rows() * cell);
    let mut px = vec![0u8; w * h * 4];
    let vis = [0x1f, 0x4e, 0x9c, 0xff];
    let hid = [0xf2, 0xf2, 0xf2, 0xff];
    let grid = [0xd0, 0xd0, 0xd0, 0xff];
    let mut line = vec![0u8; w * 4];
    for r in 0..mask.rows() {
        for c in 0..mask.cols() {
            let color = if mask.is_visible(r, c) { vis } else { hid };
            for x in 0..cell {
                let g = cell >= 4 && x == cell - 1;
                line[(c * cell + x) * 4..(c * cell + x + 1) * 4].copy_from_slice(if g {
                    &grid
                } else {
                    &color
                });
            }
        }
        for y in 0..cell {
            let off = (r * cell + y) * w * 4;
            if cell >= 4 && y == cell - 1 {
                for p in px[off..off + w * 4].chunks_exact_mut(4) {
                    p.copy_from_slice(&grid);
                }
            } else {
                px[off..off + w * 4].copy_from_slice(&line);
            }
        }
    }
    (w, h, px)
}
