//! The quick start: grow a small entity library from a folder of images with sidecar captions,
//! then search it the ways the CLI does. Everything is made here; nothing is downloaded.
//!
//! Run with `cargo run --release --example quickstart [KB_DIR]` (default: a temporary folder).

use std::path::PathBuf;

use image::{ImageFormat, Rgb, RgbImage};
use reimagen::{KnowledgeBase, Query};

/// Draws a simple emblem: a disc or a square of one colour on a light background.
fn emblem(colour: [u8; 3], disc: bool, variant: u32) -> RgbImage {
    let size = 96;
    RgbImage::from_fn(size, size, |x, y| {
        let (dx, dy) = (x as i32 - 48, y as i32 - 48);
        let r = 30 + variant as i32 * 4;
        let inside = if disc {
            dx * dx + dy * dy < r * r
        } else {
            dx.abs() < r && dy.abs() < r
        };
        if inside {
            Rgb(colour)
        } else {
            Rgb([240, 240, 235 - variant as u8 * 10])
        }
    })
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let tmp = tempfile::tempdir()?;
    let kb_dir = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| tmp.path().join("kb"));

    // A user's folder: one sub-folder per entity, a sidecar caption next to some images.
    let photos = tmp.path().join("photos");
    let entities: [(&str, [u8; 3], bool, &str); 4] = [
        (
            "harbour-club-emblem",
            [20, 60, 160],
            true,
            "the harbour rowing club emblem, a blue disc",
        ),
        (
            "sunset-cafe-logo",
            [230, 120, 30],
            false,
            "logo of the sunset cafe, an orange square",
        ),
        (
            "moss-stone",
            [60, 130, 60],
            true,
            "a round moss-covered stone from the garden",
        ),
        (
            "red-door",
            [180, 30, 30],
            false,
            "the red door of grandmother's house",
        ),
    ];
    for (entity, colour, disc, caption) in entities {
        let folder = photos.join(entity);
        std::fs::create_dir_all(&folder)?;
        for variant in 0..3 {
            let name = format!("{entity}-{variant}");
            let format = if variant == 2 {
                ImageFormat::Jpeg
            } else {
                ImageFormat::Png
            };
            let ext = if variant == 2 { "jpg" } else { "png" };
            emblem(colour, disc, variant)
                .save_with_format(folder.join(format!("{name}.{ext}")), format)?;
            if variant == 0 {
                std::fs::write(
                    folder.join(format!("{name}.txt")),
                    format!("{caption}\ntags: demo, {entity}\n"),
                )?;
            }
        }
    }

    let kb = KnowledgeBase::create(&kb_dir)?;
    let report = kb.import_dir(&photos, &|_| {})?;
    println!(
        "imported {} pairs ({} already present) into {}",
        report.added,
        report.duplicates,
        kb_dir.display()
    );

    for query in ["rowing club emblem", "orange logo", "stone from the garden"] {
        println!("\nsearch: {query}");
        for hit in kb.search(&Query::text(query).k(3))? {
            println!(
                "  {:.3}  {:<22} {}",
                hit.score,
                hit.entity.as_deref().unwrap_or("-"),
                hit.caption
            );
        }
    }
    println!("\none hit per entity for \"the\":");
    for hit in kb.search(&Query::text("the").k(10).dedup_entity(true))? {
        println!(
            "  {:<22} {}",
            hit.entity.as_deref().unwrap_or("-"),
            hit.caption
        );
    }
    let check = kb.check()?;
    println!(
        "\ncheck: {} pairs, {}",
        check.pairs,
        if check.is_consistent() {
            "store and indices agree"
        } else {
            "MISMATCH"
        }
    );
    assert!(check.is_consistent());
    Ok(())
}
