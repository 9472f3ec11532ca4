//! The GPU code path (Burn's CubeCL backends), run through wgpu: on a machine without a GPU, on
//! Mesa's software Vulkan driver (llvmpipe). `.ci/run` builds these with `--features wgpu`.
//! Each result is compared with the same command on Flex, whose numerics the model crate's
//! tests check against transformers + peft (and which `.ci/run` also runs on wgpu).
#![cfg(feature = "wgpu")]

mod common;

use common::*;
use serde_json::Value;

/// Max |a - b| over two equally long lists of numbers.
fn max_diff(a: &[Value], b: &[Value]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(a, b)| (a.as_f64().unwrap() - b.as_f64().unwrap()).abs())
        .fold(0.0, f64::max)
}

fn json_lines(out: &str) -> Vec<Value> {
    out.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

const TEXTS: [&str; 3] = ["你不会相信接下来发生了什么", "国务院发布通知", "标题"];

#[test]
fn embeddings_and_peft_adapters_on_wgpu_match_flex() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let model = tiny();
    let on = |device: &str, args: &[&str]| {
        let mut all = vec!["--device", device];
        all.extend_from_slice(args);
        json_lines(&ok(&trainer(dir, &all)))
    };
    let mut embed = vec!["embed", "--model", model.as_str()];
    embed.extend(TEXTS);
    let (gpu, cpu) = (on("wgpu", &embed), on("flex", &embed));
    for (g, c) in gpu.iter().zip(&cpu) {
        let d = max_diff(
            g["embedding"].as_array().unwrap(),
            c["embedding"].as_array().unwrap(),
        );
        assert!(d < 1e-4, "embedding differs by {d}");
    }
    for adapter in ["peft-prefix", "peft-lora"] {
        let path = fixtures().join(adapter).display().to_string();
        let mut predict = vec![
            "predict",
            "--model",
            model.as_str(),
            "--adapter",
            &path,
            "--json",
        ];
        predict.extend(TEXTS);
        let (gpu, cpu) = (on("wgpu", &predict), on("flex", &predict));
        for (g, c) in gpu.iter().zip(&cpu) {
            let d = max_diff(
                g["probabilities"].as_array().unwrap(),
                c["probabilities"].as_array().unwrap(),
            );
            assert!(d < 1e-4, "{adapter}: probabilities differ by {d}");
            assert_eq!(g["label"], c["label"], "{adapter}");
        }
    }
}

#[test]
fn training_on_wgpu_completes_resumes_and_follows_the_recipe_device() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    write_data(dir);
    let train = |args: &[&str]| {
        let mut all = vec!["train"];
        all.extend_from_slice(args);
        trainer(dir, &all)
    };
    // The recipe names the device; nothing else does.
    let recipe = std::fs::read_to_string(dir.join("tiny.toml")).unwrap();
    std::fs::write(dir.join("gpu.toml"), format!("{recipe}device = \"wgpu\"\n")).unwrap();
    let out = train(&[
        "--config",
        "gpu.toml",
        "--run-dir",
        "a",
        "--stop-after",
        "1",
    ]);
    ok(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("device: ") && stderr.contains("Wgpu"),
        "{stderr}"
    );
    ok(&train(&["--resume", "--run-dir", "a"]));
    let epochs = finished_epochs(&dir.join("a"));
    assert_eq!(epochs.len(), 2);
    // The same recipe trained on Flex (`--device` wins over the recipe) lands close by:
    // dropout masks come from different generators, so not to the last digit.
    ok(&train(&[
        "--device",
        "flex",
        "--config",
        "gpu.toml",
        "--run-dir",
        "b",
    ]));
    let flex = json(&dir.join("b/metrics.json"))["epochs"].clone();
    let (g, f) = (
        epochs[1]["valid"]["loss"].as_f64().unwrap(),
        flex[1]["valid"]["loss"].as_f64().unwrap(),
    );
    assert!((g - f).abs() < 0.1, "valid loss on wgpu {g}, on flex {f}");
}

#[test]
fn a_machine_without_a_gpu_driver_gets_one_error_line_not_a_panic() {
    let tmp = tempfile::tempdir().unwrap();
    // Hides every Vulkan driver and EGL vendor (wgpu's GL fallback) from the loaders.
    let none = tmp.path().join("none.json").display().to_string();
    let hidden = [
        ("VK_DRIVER_FILES", none.as_str()),
        ("VK_ICD_FILENAMES", none.as_str()),
        ("__EGL_VENDOR_LIBRARY_FILENAMES", none.as_str()),
    ];
    let out = trainer_env(
        tmp.path(),
        &["--device", "wgpu", "embed", "--model", &tiny(), "a text"],
        &hidden,
    );
    only_error_line(&out, &["device `wgpu`", "wgpu found no adapter"]);
}
