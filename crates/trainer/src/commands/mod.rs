pub mod bench;
pub mod classifier;
pub mod embed;
pub mod eval;
pub mod export;
pub mod predict;
pub mod report;
pub mod serve;
pub mod train;

/// A count given on the command line (`--batch-size`, `--iters`) is from 1 to `max`, checked
/// before anything is sized by it.
pub fn check_count(flag: &str, value: usize, max: usize) -> anyhow::Result<()> {
    anyhow::ensure!(value >= 1, "{flag} must be at least 1");
    anyhow::ensure!(value <= max, "{flag} must be at most {max}, got {value}");
    Ok(())
}

/// [`check_count`] for `--batch-size`, up to [`crate::config::MAX_BATCH_SIZE`].
pub fn check_batch_size(value: usize) -> anyhow::Result<()> {
    check_count("--batch-size", value, crate::config::MAX_BATCH_SIZE)
}
