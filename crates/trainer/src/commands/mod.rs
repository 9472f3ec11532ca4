pub mod bench;
pub mod embed;
pub mod eval;
pub mod train;
