//! A reader that closes the pipe early (`reimagen list --json | head`) ends the run quietly with
//! 128 + SIGPIPE, the status a shell reports for a program the signal ended.
//!
//! One test alone in its binary: a child spawned by another test's thread could hold the read
//! end of the pipe open for an instant, and the write would then succeed.
//!
//! Not here: the rest of the CLI's manners (`cli_hygiene.rs`).

mod common;

use std::process::{Command, Stdio};

use common::{image_bytes, write};
use image::ImageFormat;

#[test]
fn a_closed_pipe_ends_the_output_quietly_with_the_sigpipe_status() {
    let dir = tempfile::tempdir().unwrap();
    let kb = dir.path().join("kb");
    let photos = dir.path().join("photos");
    for i in 0..40u32 {
        write(
            &photos,
            &format!("thing{}/picture {i}.png", i % 3),
            &image_bytes([(i * 7) as u8, 90, 200], i, 24, 16, ImageFormat::Png),
        );
    }
    let command = |args: &[&str]| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_reimagen"));
        command
            .arg("--kb")
            .arg(&kb)
            .args(args)
            .env_remove("REIMAGEN_KB")
            .env("RUST_BACKTRACE", "1");
        command
    };
    for args in [
        &["init", "--no-models"][..],
        &["import", photos.to_str().unwrap()],
    ] {
        let out = command(args).output().unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    for args in [&["list", "--json"][..], &["list"], &["search", "picture"]] {
        // The reader is gone before the child starts, so its first line meets a closed pipe
        // (dropping the read end after the spawn would race a child that writes everything
        // into the pipe's buffer first and exits 0).
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let out = command(args).stdout(Stdio::from(writer)).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(141), "{args:?}: {stderr}");
        assert!(
            !stderr.contains("panicked") && !stderr.contains("Broken pipe"),
            "{args:?} printed: {stderr}"
        );
        assert!(stderr.trim().is_empty(), "{args:?} printed: {stderr}");
    }
}
