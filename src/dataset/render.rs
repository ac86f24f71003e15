//! Rasterising one rendition: SVG with resvg (usvg + tiny-skia), PNG by resampling; either way
//! square, centred with a margin of 1/16 of the size on each side, alpha composited on white.
//!
//! Not here: choosing what to render (`catalog`), writing files (`super::build`).

use image::{RgbImage, RgbaImage, imageops};

/// A decoded source image.
pub enum Source {
    /// A parsed SVG.
    Svg(Box<resvg::usvg::Tree>),
    /// A raster image; it is never enlarged, so it renders only at sizes up to its own.
    Raster(RgbaImage),
}

/// The margin on each side of a `size`-pixel image.
pub fn margin(size: u32) -> u32 {
    size / 16
}

impl Source {
    /// Decodes `bytes`; `path` (its name inside the package) says which format it is and names
    /// it in errors.
    pub fn read(path: &str, bytes: &[u8]) -> Result<Source, String> {
        if path.ends_with(".svg") {
            let tree = resvg::usvg::Tree::from_data(bytes, &resvg::usvg::Options::default())
                .map_err(|e| format!("{path}: SVG: {e}"))?;
            Ok(Source::Svg(Box::new(tree)))
        } else {
            let image = image::load_from_memory(bytes).map_err(|e| format!("{path}: {e}"))?;
            Ok(Source::Raster(image.to_rgba8()))
        }
    }

    /// Renders at `size`×`size`; `None` for a raster source smaller than `size - 2·margin`,
    /// which would only be a blurred enlargement.
    pub fn render(&self, size: u32) -> Result<Option<RgbImage>, String> {
        let inner = size - 2 * margin(size);
        match self {
            Source::Svg(tree) => {
                let mut pixmap = resvg::tiny_skia::Pixmap::new(size, size)
                    .ok_or_else(|| format!("cannot make a {size}×{size} canvas"))?;
                pixmap.fill(resvg::tiny_skia::Color::WHITE);
                let svg = tree.size();
                let (w, h) = (svg.width(), svg.height());
                if !(w > 0.0 && h > 0.0) {
                    return Err(format!("the SVG has an empty size ({w}×{h})"));
                }
                let scale = inner as f32 / w.max(h);
                let tx = (size as f32 - w * scale) / 2.0;
                let ty = (size as f32 - h * scale) / 2.0;
                let transform =
                    resvg::tiny_skia::Transform::from_row(scale, 0.0, 0.0, scale, tx, ty);
                resvg::render(tree, transform, &mut pixmap.as_mut());
                // Drawn over opaque white, every pixel has alpha 255, so the premultiplied
                // channels are the plain colour.
                let rgb: Vec<u8> = pixmap
                    .data()
                    .chunks_exact(4)
                    .flat_map(|p| [p[0], p[1], p[2]])
                    .collect();
                Ok(RgbImage::from_raw(size, size, rgb))
            }
            Source::Raster(image) => {
                let (w, h) = image.dimensions();
                if w.max(h) < inner {
                    return Ok(None);
                }
                let scale = inner as f32 / w.max(h) as f32;
                let (nw, nh) = (
                    ((w as f32 * scale).round() as u32).max(1),
                    ((h as f32 * scale).round() as u32).max(1),
                );
                let small = imageops::resize(image, nw, nh, imageops::FilterType::CatmullRom);
                let mut canvas =
                    RgbaImage::from_pixel(size, size, image::Rgba([255, 255, 255, 255]));
                imageops::overlay(
                    &mut canvas,
                    &small,
                    i64::from((size - nw) / 2),
                    i64::from((size - nh) / 2),
                );
                Ok(Some(image::DynamicImage::ImageRgba8(canvas).to_rgb8()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RED_SQUARE: &str = r##"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 36 36"><rect width="36" height="36" fill="#ff0000"/></svg>"##;

    #[test]
    fn svg_fills_the_inner_square_and_leaves_a_white_margin() {
        let source = Source::read("x.svg", RED_SQUARE.as_bytes()).unwrap();
        let image = source.render(64).unwrap().unwrap();
        assert_eq!(image.dimensions(), (64, 64));
        assert_eq!(image.get_pixel(1, 1).0, [255, 255, 255]);
        assert_eq!(image.get_pixel(32, 32).0, [255, 0, 0]);
        assert_eq!(image.get_pixel(5, 32).0, [255, 0, 0]);
        assert_eq!(image.get_pixel(2, 32).0, [255, 255, 255]);
    }

    #[test]
    fn raster_is_composited_on_white_and_never_enlarged() {
        let mut png = Vec::new();
        RgbaImage::from_pixel(64, 64, image::Rgba([0, 0, 255, 0]))
            .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
            .unwrap();
        let source = Source::read("x.png", &png).unwrap();
        let image = source.render(64).unwrap().unwrap();
        assert_eq!(
            image.get_pixel(32, 32).0,
            [255, 255, 255],
            "transparent becomes white"
        );
        assert!(source.render(256).unwrap().is_none());
    }
}
