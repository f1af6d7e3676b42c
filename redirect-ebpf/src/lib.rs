//! placeholder (being written)
pub mod maps;
