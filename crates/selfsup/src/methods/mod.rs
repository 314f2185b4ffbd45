//! methods

pub mod clm;
