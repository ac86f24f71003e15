//! Prints what `reimagen doctor` prints: the wgpu adapters and the device `auto` picks.
//! `cargo run --release --example doctor [-- --json]`

fn main() {
    let report = reimagen::tensor::doctor::report();
    if std::env::args().any(|a| a == "--json") {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).expect("report serialises")
        );
    } else {
        print!("{report}");
    }
}
