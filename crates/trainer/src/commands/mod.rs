pub mod bench;
pub mod embed;
