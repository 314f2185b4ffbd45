//! report

pub mod grid;
