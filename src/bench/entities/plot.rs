//! The η-sweep plot of `reimagen bench entities`: CLIP-T (text alignment) against CLIP-I (entity
//! faithfulness), one labelled point per η, drawn pixel by pixel with the contact sheet's 8×8
//! bitmap font so that it needs no system fonts (CI has none).
//!
//! Not here: the numbers (`super`), the font (`crate::demo::sheet`).

use image::{Rgb, RgbImage};

use crate::demo::sheet::draw_text;

const WIDTH: u32 = 560;
const HEIGHT: u32 = 400;
const LEFT: u32 = 72;
const RIGHT: u32 = 24;
const TOP: u32 = 36;
const BOTTOM: u32 = 56;
const INK: Rgb<u8> = Rgb([30, 30, 30]);
const GRID: Rgb<u8> = Rgb([225, 225, 225]);
const POINT: Rgb<u8> = Rgb([200, 40, 40]);
const LINE: Rgb<u8> = Rgb([230, 150, 150]);

/// One point: its label and (x, y) = (CLIP-I, CLIP-T).
#[derive(Debug, Clone, PartialEq)]
pub struct PlotPoint {
    /// Printed beside the point, e.g. `eta=0.25`.
    pub label: String,
    /// CLIP-I.
    pub x: f64,
    /// CLIP-T.
    pub y: f64,
}

/// The range of `values` padded by 10% on each side (and made non-empty).
fn range(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), v| {
            (l.min(v), h.max(v))
        });
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    let pad = ((hi - lo) * 0.1).max(1e-3);
    (lo - pad, hi + pad)
}

fn put(img: &mut RgbImage, x: i64, y: i64, colour: Rgb<u8>) {
    if x >= 0 && y >= 0 && (x as u32) < img.width() && (y as u32) < img.height() {
        img.put_pixel(x as u32, y as u32, colour);
    }
}

fn line(img: &mut RgbImage, (x0, y0): (i64, i64), (x1, y1): (i64, i64), colour: Rgb<u8>) {
    let steps = (x1 - x0).abs().max((y1 - y0).abs()).max(1);
    for i in 0..=steps {
        let x = x0 + (x1 - x0) * i / steps;
        let y = y0 + (y1 - y0) * i / steps;
        put(img, x, y, colour);
    }
}

/// Draws the plot: axes with the range of the data at each end, a title, the points joined in
/// the given order (η ascending), each with its label.
pub fn eta_plot(title: &str, points: &[PlotPoint]) -> RgbImage {
    let mut img = RgbImage::from_pixel(WIDTH, HEIGHT, Rgb([255, 255, 255]));
    let (x0, x1) = range(points.iter().map(|p| p.x));
    let (y0, y1) = range(points.iter().map(|p| p.y));
    let (pw, ph) = (WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM);
    let to_px = |x: f64, y: f64| {
        (
            LEFT as i64 + ((x - x0) / (x1 - x0) * f64::from(pw)).round() as i64,
            (TOP + ph) as i64 - ((y - y0) / (y1 - y0) * f64::from(ph)).round() as i64,
        )
    };
    for i in 0..=4 {
        let gx = LEFT as i64 + i64::from(pw) * i / 4;
        let gy = TOP as i64 + i64::from(ph) * i / 4;
        line(&mut img, (gx, TOP as i64), (gx, (TOP + ph) as i64), GRID);
        line(&mut img, (LEFT as i64, gy), ((LEFT + pw) as i64, gy), GRID);
    }
    line(
        &mut img,
        (LEFT as i64, (TOP + ph) as i64),
        ((LEFT + pw) as i64, (TOP + ph) as i64),
        INK,
    );
    line(
        &mut img,
        (LEFT as i64, TOP as i64),
        (LEFT as i64, (TOP + ph) as i64),
        INK,
    );
    draw_text(&mut img, LEFT, 12, title, INK);
    draw_text(&mut img, LEFT, TOP + ph + 6, &format!("{x0:.3}"), INK);
    let right = format!("{x1:.3}");
    draw_text(
        &mut img,
        LEFT + pw - 8 * right.len() as u32,
        TOP + ph + 6,
        &right,
        INK,
    );
    draw_text(
        &mut img,
        LEFT + pw / 2 - 60,
        TOP + ph + 30,
        "CLIP-I (entity) ->",
        INK,
    );
    draw_text(&mut img, 4, TOP + ph - 8, &format!("{y0:.3}"), INK);
    draw_text(&mut img, 4, TOP, &format!("{y1:.3}"), INK);
    draw_text(&mut img, 4, TOP + ph / 2 - 12, "CLIP-T", INK);
    draw_text(&mut img, 4, TOP + ph / 2, "(style)", INK);
    let pixels: Vec<Option<(i64, i64)>> = points
        .iter()
        .map(|p| (p.x.is_finite() && p.y.is_finite()).then(|| to_px(p.x, p.y)))
        .collect();
    let drawn: Vec<(i64, i64)> = pixels.iter().flatten().copied().collect();
    for pair in drawn.windows(2) {
        line(&mut img, pair[0], pair[1], LINE);
    }
    for (p, &(px, py)) in points
        .iter()
        .zip(&pixels)
        .filter_map(|(p, px)| px.as_ref().map(|px| (p, px)))
    {
        for dy in -3..=3 {
            for dx in -3..=3 {
                if dx * dx + dy * dy <= 9 {
                    put(&mut img, px + dx, py + dy, POINT);
                }
            }
        }
        let label_x = (px + 6).clamp(0, i64::from(WIDTH - 8 * p.label.len() as u32)) as u32;
        let label_y = (py - 12).clamp(0, i64::from(HEIGHT - 8)) as u32;
        draw_text(&mut img, label_x, label_y, &p.label, INK);
    }
    img
}
