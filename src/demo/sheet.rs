//! The contact sheet: a grid of images with a header row of column titles and a label per row,
//! drawn with the public-domain 8×8 bitmap font of `font8x8` (no system fonts needed, so it looks
//! the same on every machine).
//!
//! Not here: what goes in the cells (the demo, the entity benchmark), the HTML page.

use font8x8::UnicodeFonts;
use image::imageops::{self, FilterType};
use image::{Rgb, RgbImage};

/// One row of the sheet: a label (wrapped to the label column) and one optional image per
/// column (`None` draws an empty, crossed cell).
#[derive(Debug, Clone)]
pub struct SheetRow {
    /// The row's label, e.g. the prompt.
    pub label: String,
    /// The images, one per column.
    pub cells: Vec<Option<RgbImage>>,
}

const PAD: u32 = 8;
const LABEL_WIDTH: u32 = 208;
const HEADER: u32 = 28;
const INK: Rgb<u8> = Rgb([30, 30, 30]);
const RULE: Rgb<u8> = Rgb([205, 205, 205]);

/// Draws the sheet: `columns` titles over cells of `cell`×`cell` pixels (each image scaled to
/// fit, nearest-neighbour when enlarged so small renditions stay crisp).
pub fn contact_sheet(columns: &[&str], rows: &[SheetRow], cell: u32) -> RgbImage {
    let cols = columns.len() as u32;
    let width = LABEL_WIDTH + cols * (cell + PAD) + PAD;
    let height = HEADER + rows.len() as u32 * (cell + PAD) + PAD;
    let mut sheet = RgbImage::from_pixel(width, height, Rgb([255, 255, 255]));
    for (c, title) in columns.iter().enumerate() {
        let x = LABEL_WIDTH + c as u32 * (cell + PAD);
        draw_text(&mut sheet, x, 10, &fit(title, cell / 8), INK);
    }
    for (r, row) in rows.iter().enumerate() {
        let y = HEADER + r as u32 * (cell + PAD);
        fill(&mut sheet, 0, y.saturating_sub(PAD / 2), width, 1, RULE);
        for (line, text) in wrap(&row.label, (LABEL_WIDTH - 2 * PAD) / 8)
            .iter()
            .take((cell / 12) as usize)
            .enumerate()
        {
            draw_text(&mut sheet, PAD, y + 4 + line as u32 * 12, text, INK);
        }
        for (c, image) in row.cells.iter().enumerate().take(cols as usize) {
            let x = LABEL_WIDTH + c as u32 * (cell + PAD);
            match image {
                Some(img) => {
                    let filter = if img.width() < cell {
                        FilterType::Nearest
                    } else {
                        FilterType::Triangle
                    };
                    let scaled = imageops::resize(img, cell, cell, filter);
                    imageops::replace(&mut sheet, &scaled, x as i64, y as i64);
                }
                None => empty_cell(&mut sheet, x, y, cell),
            }
        }
    }
    sheet
}

/// Draws `text` with its top-left corner at (x, y), 8 pixels a character; characters the font
/// lacks print as `?`. Public for the other drawings that must not need system fonts (the entity
/// benchmark's plot).
pub fn draw_text(img: &mut RgbImage, x: u32, y: u32, text: &str, colour: Rgb<u8>) {
    for (i, ch) in text.chars().enumerate() {
        let glyph = font8x8::BASIC_FONTS
            .get(ch)
            .or_else(|| font8x8::LATIN_FONTS.get(ch))
            .or_else(|| font8x8::BASIC_FONTS.get('?'))
            .unwrap_or([0; 8]);
        for (row, bits) in glyph.iter().enumerate() {
            for col in 0..8 {
                if bits >> col & 1 == 1 {
                    let (px, py) = (x + i as u32 * 8 + col, y + row as u32);
                    if px < img.width() && py < img.height() {
                        img.put_pixel(px, py, colour);
                    }
                }
            }
        }
    }
}

fn fill(img: &mut RgbImage, x: u32, y: u32, w: u32, h: u32, colour: Rgb<u8>) {
    for py in y..(y + h).min(img.height()) {
        for px in x..(x + w).min(img.width()) {
            img.put_pixel(px, py, colour);
        }
    }
}

fn empty_cell(img: &mut RgbImage, x: u32, y: u32, cell: u32) {
    fill(img, x, y, cell, cell, Rgb([245, 245, 245]));
    for i in 0..cell {
        img.put_pixel(x + i, y + i, RULE);
        img.put_pixel(x + cell - 1 - i, y + i, RULE);
    }
}

/// `text` cut to `chars` characters, with `…` marked as `..` when cut.
fn fit(text: &str, chars: u32) -> String {
    let chars = chars as usize;
    if text.chars().count() <= chars {
        return text.to_string();
    }
    let mut cut: String = text.chars().take(chars.saturating_sub(2)).collect();
    cut.push_str("..");
    cut
}

/// Greedy word wrap to lines of at most `chars` characters (a longer word is cut).
fn wrap(text: &str, chars: u32) -> Vec<String> {
    let mut lines: Vec<String> = Vec::new();
    let mut line = String::new();
    for word in text.split_whitespace() {
        let fits = line.chars().count() + 1 + word.chars().count() <= chars as usize;
        if !line.is_empty() && !fits {
            lines.push(std::mem::take(&mut line));
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    if !line.is_empty() {
        lines.push(line);
    }
    lines.into_iter().map(|l| fit(&l, chars)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_land_in_their_columns_and_labels_are_drawn() {
        let red = RgbImage::from_pixel(16, 16, Rgb([255, 0, 0]));
        let blue = RgbImage::from_pixel(64, 64, Rgb([0, 0, 255]));
        let rows = vec![SheetRow {
            label: "a fox, twemoji style".into(),
            cells: vec![Some(red), None, Some(blue)],
        }];
        let sheet = contact_sheet(&["one", "two", "three"], &rows, 32);
        let cell_at = |c: u32| (LABEL_WIDTH + c * (32 + PAD) + 16, HEADER + 16);
        let (x, y) = cell_at(0);
        assert_eq!(*sheet.get_pixel(x, y), Rgb([255, 0, 0]));
        let (x, y) = cell_at(2);
        assert_eq!(*sheet.get_pixel(x, y), Rgb([0, 0, 255]));
        let (x, y) = cell_at(1);
        assert_ne!(
            *sheet.get_pixel(x + 3, y),
            Rgb([255, 255, 255]),
            "empty cell is shaded"
        );
        let ink_in = |x0: u32, y0: u32, w: u32, h: u32| {
            (y0..y0 + h).any(|y| (x0..x0 + w).any(|x| *sheet.get_pixel(x, y) == INK))
        };
        assert!(
            ink_in(PAD, HEADER, LABEL_WIDTH - PAD, 16),
            "row label drawn"
        );
        assert!(ink_in(LABEL_WIDTH, 0, 32, HEADER), "column title drawn");
    }

    #[test]
    fn wrap_keeps_lines_within_width() {
        let lines = wrap(
            "closed umbrella, openmoji-black style with a very long tail",
            12,
        );
        assert!(lines.len() > 3);
        assert!(lines.iter().all(|l| l.chars().count() <= 12), "{lines:?}");
        assert_eq!(fit("abcdefgh", 5), "abc..");
    }
}
