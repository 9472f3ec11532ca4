pub mod bench;
pub mod classifier;
pub mod embed;
pub mod eval;
pub mod export;
pub mod predict;
pub mod serve;
pub mod train;
