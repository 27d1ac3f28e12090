//! CPU and GPU agree (needs `--features cuda` and a GPU: `cargo test --release --features cuda
//! --test gpu -- --ignored`). Without the feature this file compiles to nothing.
#![cfg(feature = "cuda")]

mod common;
use common::{stdout, Fixture};

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn the_fixture_pipeline_gives_the_same_accuracies_on_cpu_and_gpu() {
    let f = Fixture::new();
    let p = f.pipeline();
    let p = p.to_str().unwrap();
    // On the GPU machine the binary is carried, not built there: `CFPIPE_BIN` names it.
    let bin = std::env::var("CFPIPE_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_cfpipe").into());
    let run = |device: &str, cache: &str| {
        let out = std::process::Command::new(&bin)
            .args(["run", p, "--quiet", "--device", device, "--cache", cache])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", common::stderr(&out));
        let show = std::process::Command::new(&bin)
            .args(["show", p, "--json", "--cache", cache])
            .output()
            .unwrap();
        serde_json::from_str::<serde_json::Value>(&stdout(&show)).unwrap()
    };
    let cpu = run("cpu", f.path().join("c_cpu").to_str().unwrap());
    let gpu = run("cuda", f.path().join("c_gpu").to_str().unwrap());
    for (a, b) in cpu.as_array().unwrap().iter().zip(gpu.as_array().unwrap()) {
        for (ra, rb) in a["accuracy"]
            .as_array()
            .unwrap()
            .iter()
            .zip(b["accuracy"].as_array().unwrap())
        {
            for (x, y) in ra.as_array().unwrap().iter().zip(rb.as_array().unwrap()) {
                // Float reductions differ between devices; a sample or two may flip.
                assert!(
                    (x.as_f64().unwrap() - y.as_f64().unwrap()).abs() <= 0.05,
                    "{a} vs {b}"
                );
            }
        }
    }
}
