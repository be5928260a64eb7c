//! The application layer: what a command does, as library functions that return reports, so
//! that tests and other programs call them without spawning the binary. `cli.rs` keeps the
//! clap types, progress and printing.

pub mod eval;
pub mod heal;
pub mod imatrix;
pub mod inspect;
pub mod naming;
pub mod prune;
pub mod release;
pub mod targets;
pub mod text;
pub mod verify;
