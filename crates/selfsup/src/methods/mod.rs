//! methods

pub mod clm;
pub mod mlm;
