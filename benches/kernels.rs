//! `cargo bench --bench kernels -- [--device cpu,gpu] [--quick] [--json] [--json-out FILE]
//! [--torch PYTHON] [--torch-device cpu|cuda]`: runs `reimagen::tensor::bench::run` (what `reimagen bench
//! kernels` runs) and prints the report. Figures and the exact command are in docs/kernels.md.

use reimagen::tensor::bench::{self, BenchOptions};

fn main() {
    let mut options = BenchOptions::default();
    let mut json = false;
    let mut json_out: Option<String> = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--device" => {
                let list = args
                    .next()
                    .expect("--device needs cpu, gpu or auto (comma-separated)");
                options.devices = bench::parse_devices(&list).unwrap_or_else(|e| panic!("{e}"));
            }
            "--quick" => options.quick = true,
            "--json" => json = true,
            "--json-out" => json_out = Some(args.next().expect("--json-out needs a path")),
            "--torch" => options.torch_python = Some(args.next().expect("--torch needs a python")),
            "--torch-device" => {
                options.torch_device = args.next().expect("--torch-device needs cpu or cuda")
            }
            "--torch-script" => {
                options.torch_script = args.next().expect("--torch-script needs a path").into()
            }
            "--bench" => {}
            other => panic!("unknown argument {other:?}"),
        }
    }
    let report = match bench::run(&options) {
        Ok(report) => report,
        Err(e) => {
            eprintln!("bench kernels: {e}");
            std::process::exit(1);
        }
    };
    let text = serde_json::to_string_pretty(&report).expect("report serialises");
    if let Some(path) = json_out {
        std::fs::write(&path, &text).unwrap_or_else(|e| panic!("{path}: {e}"));
    }
    if json {
        println!("{text}");
    } else {
        print!("{report}");
    }
}
