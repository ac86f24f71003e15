//! `reimagen demo`: the whole idea on the shipped models in one command. It builds a knowledge
//! base from the sample set in `examples/demo/` (training entities and held-out entities in
//! several styles, docs in its README), then for each held-out entity — one the models never
//! saw — retrieves its neighbours for the prompt "ENTITY, STYLE style" (the style kept out of the
//! KB) and generates it with retrieval and without, same seed. It writes a contact sheet PNG
//! (prompt, neighbours, with, without, the held-out picture) and an HTML page beside it.
//!
//! Not here: the sheet's drawing ([`sheet`]), retrieval and generation themselves
//! ([`KnowledgeBase::generate`], [`crate::generate::ReImagen`]), the CLI's progress bars.

pub mod sheet;

use std::path::{Path, PathBuf};
use std::time::Instant;

use image::RgbImage;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::generate::{
    CancelToken, GenerationObserver, GenerationRequest, Generator, Guidance, NeighbourChoice,
};
use crate::kb::{KnowledgeBase, Progress};
use crate::search::SearchMode;
pub use sheet::{SheetRow, contact_sheet};

/// What the demo runs on and where it writes.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// The sample set (`examples/demo`: `kb/`, `targets/`, `demo.json`).
    pub samples: PathBuf,
    /// Where the KB, the images, the sheet and the page go (a KB already there is replaced).
    pub out: PathBuf,
    /// The CLIP folder the KB embeds with (the shipped `models/clip`).
    pub clip: PathBuf,
    /// Neighbours per generation.
    pub k: usize,
    /// The retriever.
    pub mode: SearchMode,
    /// Settings of every generation (the prompt is replaced per entity).
    pub request: GenerationRequest,
    /// Only the first `limit` held-out entities (all when `None`).
    pub limit: Option<usize>,
}

/// One held-out entity of the sample set, as `demo.json` lists it.
#[derive(Debug, Clone, Deserialize)]
struct HeldOut {
    entity: String,
    prompt: String,
    target: PathBuf,
    slug: String,
}

#[derive(Debug, Clone, Deserialize)]
struct SampleSet {
    held_out: Vec<HeldOut>,
}

/// One row of the demo: an entity, what was retrieved for it and what was generated.
#[derive(Debug, Clone, Serialize)]
pub struct DemoEntity {
    /// The held-out entity.
    pub entity: String,
    /// The prompt.
    pub prompt: String,
    /// The retrieved neighbours' captions, best first.
    pub neighbours: Vec<String>,
    /// How many of them are renditions of the entity itself.
    pub neighbours_of_entity: usize,
    /// The image generated with the neighbours.
    pub with_retrieval: PathBuf,
    /// The image generated with none (same seed).
    pub without_retrieval: PathBuf,
}

/// What the demo did.
#[derive(Debug, Clone, Serialize)]
pub struct DemoReport {
    /// The KB it built.
    pub kb: PathBuf,
    /// Pairs imported from the sample set.
    pub imported: usize,
    /// The generator used.
    pub generator: String,
    /// The guidance of every generation.
    pub guidance: Guidance,
    /// The contact sheet.
    pub sheet: PathBuf,
    /// The HTML page.
    pub page: PathBuf,
    /// One entry per held-out entity.
    pub entities: Vec<DemoEntity>,
    /// Wall time of the whole demo, seconds.
    pub seconds: f64,
}

impl std::fmt::Display for DemoReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "built {} ({} pairs) and generated {} held-out entities with {} ({} guidance) in \
             {:.0} s",
            self.kb.display(),
            self.imported,
            self.entities.len(),
            self.generator,
            self.guidance,
            self.seconds
        )?;
        for e in &self.entities {
            writeln!(
                f,
                "  {:<34} {} of {} neighbours are the entity",
                e.prompt,
                e.neighbours_of_entity,
                e.neighbours.len()
            )?;
        }
        writeln!(f, "contact sheet: {}", self.sheet.display())?;
        write!(f, "page:          {}", self.page.display())
    }
}

/// What the demo reports while it runs.
pub trait DemoObserver: GenerationObserver {
    /// The import's progress.
    fn import(&mut self, _progress: Progress) {}
    /// A generation is about to start (`index` of `total`; `with_retrieval` or without).
    fn generation(&mut self, _prompt: &str, _index: usize, _total: usize, _with: bool) {}
}

/// Runs the demo with `generator` (see the module docs).
///
/// # Errors
/// A sample set that is missing or malformed (naming the file), a KB or model failure, or a
/// generation error (e.g. [`crate::GenerateError::Cancelled`]).
pub fn run(
    options: &DemoOptions,
    generator: &dyn Generator,
    observer: &mut dyn DemoObserver,
    cancel: &CancelToken,
) -> Result<DemoReport> {
    let started = Instant::now();
    let listing = options.samples.join("demo.json");
    let text = std::fs::read_to_string(&listing).map_err(io(&listing))?;
    let set: SampleSet = serde_json::from_str(&text).map_err(|e| Error::Config {
        path: listing.clone(),
        reason: format!("not a demo sample listing (examples/demo/demo.json): {e}"),
    })?;
    let held_out: Vec<HeldOut> = set
        .held_out
        .into_iter()
        .take(options.limit.unwrap_or(usize::MAX))
        .collect();

    let kb_dir = options.out.join("kb");
    if kb_dir.exists() {
        std::fs::remove_dir_all(&kb_dir).map_err(io(&kb_dir))?;
    }
    let images = options.out.join("images");
    std::fs::create_dir_all(&images).map_err(io(&images))?;
    // kb.toml resolves a relative model folder against the KB, so record an absolute one.
    let clip = options.clip.canonicalize().map_err(io(&options.clip))?;
    let kb = KnowledgeBase::builder(&kb_dir)
        .create(true)
        .embedder_model(clip)
        .open()?;
    // import_dir reports through a `Fn`; the observer needs `&mut`.
    let report = {
        let cell = std::cell::RefCell::new(&mut *observer);
        kb.import_dir(&options.samples.join("kb"), &|p| {
            cell.borrow_mut().import(p)
        })?
    };
    let imported = report.added;

    let mut rows = Vec::new();
    let mut entities = Vec::new();
    for (i, h) in held_out.iter().enumerate() {
        let mut request = options.request.clone();
        request.prompt = h.prompt.clone();
        let choice = NeighbourChoice::retrieve(options.k)
            .mode(options.mode)
            .allow_none(true);
        observer.generation(&h.prompt, i, held_out.len(), true);
        let with = kb.generate(generator, request.clone(), &choice, observer, cancel)?;
        observer.generation(&h.prompt, i, held_out.len(), false);
        request.neighbours.clear();
        let without = generator.generate(&request, observer, cancel)?;

        let save = |name: String, img: &RgbImage| -> Result<PathBuf> {
            let path = images.join(name);
            img.save(&path).map_err(|e| write_error(&path, e))?;
            Ok(path)
        };
        let with_path = save(format!("{}-with.png", h.slug), &with.output.images()[0])?;
        let without_path = save(format!("{}-without.png", h.slug), &without.images()[0])?;
        let neighbours = kb.neighbour_images(&with.record.neighbours)?;
        let mut cells: Vec<Option<RgbImage>> = (0..options.k)
            .map(|j| neighbours.get(j).map(|n| n.image.clone()))
            .collect();
        for (j, n) in neighbours.iter().enumerate() {
            save(format!("{}-n{}.png", h.slug, j + 1), &n.image)?;
        }
        let target = image::open(options.samples.join(&h.target))
            .map(|t| t.to_rgb8())
            .ok();
        if let Some(t) = &target {
            save(format!("{}-target.png", h.slug), t)?;
        }
        cells.extend([
            Some(with.output.images()[0].clone()),
            Some(without.images()[0].clone()),
            target,
        ]);
        rows.push(SheetRow {
            label: h.prompt.clone(),
            cells,
        });
        entities.push(DemoEntity {
            entity: h.entity.clone(),
            prompt: h.prompt.clone(),
            neighbours_of_entity: with
                .record
                .neighbours
                .iter()
                .filter(|n| n.entity.as_deref() == Some(h.entity.as_str()))
                .count(),
            neighbours: with
                .record
                .neighbours
                .iter()
                .map(|n| n.caption.clone())
                .collect(),
            with_retrieval: with_path,
            without_retrieval: without_path,
        });
    }

    let mut columns: Vec<String> = (1..=options.k).map(|j| format!("neighbour {j}")).collect();
    columns.extend(["with retrieval", "without", "held out"].map(String::from));
    let titles: Vec<&str> = columns.iter().map(String::as_str).collect();
    let sheet_path = options.out.join("demo.png");
    contact_sheet(&titles, &rows, 128)
        .save(&sheet_path)
        .map_err(|e| write_error(&sheet_path, e))?;
    let page = options.out.join("index.html");
    std::fs::write(
        &page,
        html_page(
            &entities,
            options.k,
            generator.name(),
            &options.request.guidance,
        ),
    )
    .map_err(io(&page))?;
    Ok(DemoReport {
        kb: kb_dir,
        imported,
        generator: generator.name().to_string(),
        guidance: options.request.guidance,
        sheet: sheet_path,
        page,
        entities,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// The page beside the sheet: the same rows, with the neighbours' captions.
fn html_page(entities: &[DemoEntity], k: usize, generator: &str, guidance: &Guidance) -> String {
    let img = |p: &Path| {
        let name = p
            .file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default();
        format!(
            "<img src=\"images/{}\" width=128 height=128>",
            escape(&name)
        )
    };
    let mut rows = String::new();
    for e in entities {
        let slug_of = |p: &Path| {
            p.file_name()
                .map(|n| {
                    n.to_string_lossy()
                        .trim_end_matches("-with.png")
                        .to_string()
                })
                .unwrap_or_default()
        };
        let slug = slug_of(&e.with_retrieval);
        rows.push_str(&format!("<tr><th>{}</th>", escape(&e.prompt)));
        for j in 0..k {
            match e.neighbours.get(j) {
                Some(caption) => rows.push_str(&format!(
                    "<td>{}<br><small>{}</small></td>",
                    img(Path::new(&format!("{slug}-n{}.png", j + 1))),
                    escape(caption)
                )),
                None => rows.push_str("<td>—</td>"),
            }
        }
        rows.push_str(&format!(
            "<td>{}</td><td>{}</td><td>{}</td></tr>\n",
            img(&e.with_retrieval),
            img(&e.without_retrieval),
            img(Path::new(&format!("{slug}-target.png")))
        ));
    }
    let heads: String = (1..=k).map(|j| format!("<th>neighbour {j}</th>")).collect();
    format!(
        "<!doctype html>\n<meta charset=utf-8>\n<title>reimagen demo</title>\n<style>\
         body{{font-family:sans-serif}} td,th{{padding:4px;vertical-align:top;text-align:left}} \
         img{{image-rendering:pixelated;border:1px solid #ddd}}</style>\n\
         <h1>reimagen demo</h1>\n<p>Held-out entities (never seen by the models) generated \
         with the neighbours retrieved from the demo KB and without them, same seed; the last \
         column is the held-out picture, kept out of the KB. Generator: {}; guidance: {}.</p>\n\
         <table>\n\
         <tr><th>prompt</th>{heads}<th>with retrieval</th><th>without</th><th>held out</th></tr>\n\
         {rows}</table>\n",
        escape(generator),
        escape(&guidance.to_string())
    )
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn write_error(path: &Path, e: image::ImageError) -> Error {
    match e {
        image::ImageError::IoError(source) => Error::Io {
            path: path.to_path_buf(),
            source,
        },
        other => Error::Io {
            path: path.to_path_buf(),
            source: std::io::Error::other(other),
        },
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
