//! What BM25 search finds since the analyzers (issue 15): other word forms, accents and case,
//! typos ranked below exact matches, prefixes of the last word, the `language` setting and the
//! index rebuilt when the analyzer or the language changes.

mod common;

use std::sync::{Arc, Mutex};

use common::colour_png;
use reimagen::{KnowledgeBase, NewPair, Query, TextLanguage};

fn kb_with(
    dir: &std::path::Path,
    pairs: &[(&str, &str)],
) -> (KnowledgeBase, Vec<reimagen::ImageId>) {
    let kb = KnowledgeBase::create(dir).unwrap();
    let ids = pairs
        .iter()
        .enumerate()
        .map(|(i, (caption, entity))| {
            kb.add(
                NewPair::bytes(format!("p{i}"), colour_png("red", i as u32), *caption)
                    .entity(*entity),
            )
            .unwrap()
            .id()
        })
        .collect();
    (kb, ids)
}

fn found(kb: &KnowledgeBase, text: &str) -> Vec<reimagen::ImageId> {
    kb.search(&Query::text(text))
        .unwrap()
        .iter()
        .map(|h| h.id)
        .collect()
}

#[test]
fn the_examples_of_the_issue_find_their_pair() {
    let dir = tempfile::tempdir().unwrap();
    let (kb, ids) = kb_with(
        dir.path(),
        &[
            (
                "Two corgis running across the beaches of Brittany",
                "corgis",
            ),
            ("A quiet terrace with chairs", "Café Ölberg"),
            ("A red kite over a field", "kites"),
        ],
    );
    for query in [
        "corgi",
        "beach",
        "run",
        "corgi beach",
        "britany",
        "a corgi on a beach",
    ] {
        assert_eq!(found(&kb, query).first(), Some(&ids[0]), "query {query:?}");
    }
    for query in ["cafe", "OLBERG", "ölberg", "Café Ölberg", "cafe olberg"] {
        assert_eq!(found(&kb, query).first(), Some(&ids[1]), "query {query:?}");
    }
    // A word that is in no caption, near no word, and no prefix, finds nothing.
    assert!(found(&kb, "zebra ").is_empty());
}

#[test]
fn typos_rank_below_exact_matches() {
    let dir = tempfile::tempdir().unwrap();
    let (kb, ids) = kb_with(
        dir.path(),
        &[
            ("a lighthouse on a cliff", "lighthouse"),
            ("a lighthous drawn by a child", "sketch"),
            ("an unrelated sunset", "sunset"),
        ],
    );
    // "lighthuose" is one transposition from "lighthouse": found, though not an indexed word.
    let mut typo = found(&kb, "lighthuose ");
    typo.sort();
    let mut expected = vec![ids[0], ids[1]];
    expected.sort();
    assert_eq!(typo, expected);
    let hits = kb.search(&Query::text("cliff lighthuose ")).unwrap();
    assert_eq!(
        hits[0].id, ids[0],
        "the exact word `cliff` ranks its pair first"
    );
    // Short words get no typo tolerance: "cliv" (4 letters) is not "cliff".
    assert!(found(&kb, "cliv ").is_empty());
    // An exact word beats a typo of another pair's word.
    let hits = kb.search(&Query::text("sunset lighthuose ")).unwrap();
    assert_eq!(hits[0].id, ids[2]);
    assert!(
        hits.iter().any(|h| h.id == ids[0]),
        "the typo match still comes"
    );
    assert!(hits[0].score > hits[1].score);
}

#[test]
fn the_last_word_matches_as_a_prefix_until_it_is_complete() {
    let dir = tempfile::tempdir().unwrap();
    let (kb, ids) = kb_with(
        dir.path(),
        &[
            ("a lighthouse on a cliff", "lighthouse"),
            ("a beach", "beach"),
        ],
    );
    assert_eq!(found(&kb, "ligh"), vec![ids[0]]);
    assert_eq!(
        found(&kb, "beach lig"),
        vec![ids[1], ids[0]],
        "the exact word first"
    );
    // A complete word (a separator follows) is not a prefix.
    assert!(found(&kb, "ligh ").is_empty());
    // Two letters are too few to expand.
    assert!(found(&kb, "li").is_empty());
}

#[test]
fn an_entity_named_inside_the_text_ranks_above_pairs_sharing_its_words() {
    let dir = tempfile::tempdir().unwrap();
    // The captions a prompt like "radio in noto style" meets: another entity repeats the word
    // (in its name and caption) and the style word of the prompt.
    let (kb, ids) = kb_with(
        dir.path(),
        &[
            ("radio, twemoji style", "radio"),
            ("radio button, noto style radio", "radio button"),
            ("ledger, twemoji style", "ledger"),
            ("flat shoe, fluent-flat style flat", "flat shoe"),
            ("kissing cat, noto style", "kissing cat"),
            ("cat, noto style", "cat"),
            ("flag: chad, twemoji style", "flag: chad"),
            ("flag: chile, noto style", "flag: chile"),
        ],
    );
    for (query, want) in [
        ("radio in noto style", 0),
        ("ledger in fluent-flat style", 2),
        ("kissing cat in twemoji style", 4),
        ("Flag: Chad in noto style", 6),
        ("a drawing of a cat, noto style", 5),
    ] {
        assert_eq!(
            found(&kb, query).first(),
            Some(&ids[want]),
            "query {query:?}"
        );
    }
    // A plural names no entity: BM25 alone ranks the pair that repeats the word first.
    assert_eq!(found(&kb, "radios in noto style")[..2], [ids[1], ids[0]]);
}

#[test]
fn filters_compare_names_folded() {
    let dir = tempfile::tempdir().unwrap();
    let (kb, ids) = kb_with(
        dir.path(),
        &[("terrace", "Café Ölberg"), ("terrace", "Other")],
    );
    let hits = kb
        .search(&Query::text("terrace").entity("CAFE OLBERG"))
        .unwrap();
    assert_eq!(hits.iter().map(|h| h.id).collect::<Vec<_>>(), vec![ids[0]]);
}

#[test]
fn the_language_setting_changes_stemming_and_rebuilds_the_index() {
    let dir = tempfile::tempdir().unwrap();
    let (kb, ids) = kb_with(dir.path(), &[("two corgis running", "dogs")]);
    assert_eq!(kb.config().language, TextLanguage::English);
    assert_eq!(found(&kb, "run "), vec![ids[0]]);
    drop(kb);

    let seen = Arc::new(Mutex::new(Vec::new()));
    let kb = KnowledgeBase::builder(dir.path())
        .language(TextLanguage::None)
        .progress({
            let seen = seen.clone();
            Arc::new(move |what: &str, p| seen.lock().unwrap().push((what.to_string(), p)))
        })
        .open()
        .unwrap();
    assert_eq!(kb.config().language, TextLanguage::None);
    let seen = seen.lock().unwrap().clone();
    assert!(!seen.is_empty(), "the rebuild reports progress");
    let last = seen.last().unwrap();
    assert_eq!((last.1.done, last.1.total), (1, 1));
    assert!(last.0.contains("text index"));
    // Without stemming only the written form matches ("run" is too short for typos).
    assert!(found(&kb, "run ").is_empty());
    assert_eq!(found(&kb, "running"), vec![ids[0]]);
    assert!(kb.check().unwrap().is_consistent());
    drop(kb);

    // kb.toml keeps the choice; opening with it again rebuilds nothing.
    let toml = std::fs::read_to_string(dir.path().join("kb.toml")).unwrap();
    assert!(toml.contains("language = \"none\""), "{toml}");
    let rebuilt = Arc::new(Mutex::new(false));
    let kb = KnowledgeBase::builder(dir.path())
        .progress({
            let rebuilt = rebuilt.clone();
            Arc::new(move |_: &str, _| *rebuilt.lock().unwrap() = true)
        })
        .open()
        .unwrap();
    assert!(!*rebuilt.lock().unwrap());
    assert!(found(&kb, "run ").is_empty());
}

#[test]
fn a_bad_language_in_kb_toml_is_a_config_error_naming_the_choices() {
    let dir = tempfile::tempdir().unwrap();
    drop(KnowledgeBase::create(dir.path()).unwrap());
    let path = dir.path().join("kb.toml");
    let toml = std::fs::read_to_string(&path).unwrap();
    assert!(toml.contains("language = \"english\""), "{toml}");
    std::fs::write(&path, toml.replace("\"english\"", "\"klingon\"")).unwrap();
    let err = KnowledgeBase::open(dir.path()).err().expect("refused");
    assert!(err.is_user_error());
    let message = err.to_string();
    assert!(
        message.contains("klingon") && message.contains("french"),
        "{message}"
    );
}

#[test]
fn french_stemming_and_folding_apply_to_a_french_kb() {
    let dir = tempfile::tempdir().unwrap();
    let kb = KnowledgeBase::builder(dir.path())
        .create(true)
        .language("fr".parse().unwrap())
        .open()
        .unwrap();
    let id = kb
        .add(
            NewPair::bytes(
                "p",
                colour_png("blue", 1),
                "Des chevaux éléphants dans la forêt",
            )
            .entity("forêt"),
        )
        .unwrap()
        .id();
    for query in ["foret", "FORÊTS", "elephant", "chevaux"] {
        assert_eq!(found(&kb, query), vec![id], "query {query:?}");
    }
}

#[test]
fn an_index_of_an_older_analyzer_version_is_rebuilt_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let (kb, ids) = kb_with(dir.path(), &[("two corgis running", "dogs")]);
    let seq = kb.stats().unwrap().last_seq;
    drop(kb);
    // Make the index look as a build before analyzers left it: a payload with the sequence only.
    let index = tantivy::Index::open_in_dir(dir.path().join("text-index")).unwrap();
    let mut writer: tantivy::IndexWriter = index.writer_with_num_threads(1, 15_000_000).unwrap();
    let mut prepared = writer.prepare_commit().unwrap();
    prepared.set_payload(&format!("{{\"seq\":{seq}}}"));
    prepared.commit().unwrap();
    drop(writer);

    let seen = Arc::new(Mutex::new(0));
    let kb = KnowledgeBase::builder(dir.path())
        .progress({
            let seen = seen.clone();
            Arc::new(move |_: &str, _| *seen.lock().unwrap() += 1)
        })
        .open()
        .unwrap();
    assert!(*seen.lock().unwrap() > 0, "the rebuild reports progress");
    assert_eq!(found(&kb, "corgi"), vec![ids[0]]);
    assert!(kb.check().unwrap().is_consistent());
}
