//! smelt's integration tests, one binary: each file is a module, `common` holds what they
//! share (the [`common::Smelt`] runner, scratch folders, tiny models). One binary links the
//! library once instead of once per file; its tests run as threads of one process, so a test
//! never changes process-wide state (environment, working directory, signal handlers, the
//! global rayon pool): it passes variables to the child it runs (`Smelt::env`) instead.
//! A new test file is one `mod` line here.

mod common;

mod app_api;
mod bad_input;
mod calibrate;
mod eval;
mod fuzz_parsers;
mod hf_output;
mod hub;
mod lora;
mod merge;
mod mergekit_goldens;
mod moe;
mod prune_heal;
mod recipe_schema;
mod recipes;
mod release;
mod roundtrip;
mod safetensors;
mod shard;
mod split_output;
mod target;
mod trust;
mod trust_convert;
mod trust_merge;
