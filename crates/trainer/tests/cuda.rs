//! A `cuda` build of the binary (`cargo test -p trainer --features cuda --test cuda`): on a
//! machine without an NVIDIA driver or GPU, naming the device is one error line that says so,
//! and a command that names no device runs on the CPU. With a GPU, the same commands work.
#![cfg(feature = "cuda")]

mod common;

use common::*;

#[test]
fn cuda_is_one_clear_error_where_there_is_no_gpu_and_the_cpu_is_the_fallback() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    ok(&trainer(dir, &["--help"]));
    let model = tiny();
    let named = [
        trainer(
            dir,
            &["--device", "cuda", "predict", "--model", &model, "hello"],
        ),
        trainer_env(
            dir,
            &["embed", "--model", &model, "hello"],
            &[("BURN_DEVICE", "cuda")],
        ),
    ];
    let has_gpu = named[1].status.success();
    for out in &named {
        if has_gpu {
            // `predict` on a base model without a head is refused whatever the device.
            continue;
        }
        let line = one_line_error(out, &["cuda"]);
        assert!(
            line.contains("no CUDA driver")
                || line.contains("finds no GPU")
                || line.contains("sees 0 GPU"),
            "{line}"
        );
        assert_eq!(String::from_utf8_lossy(&out.stderr).trim_end(), line);
    }
    // No device named: the first present backend.
    let out = trainer(dir, &["embed", "--model", &model, "hello"]);
    let stdout = ok(&out);
    assert!(stdout.contains("\"embedding\""), "{stdout}");
    if !has_gpu {
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("using flex"), "{stderr}");
    }
}
