//! nn

pub mod transformer;
