//! `drover`: the Drover controller (`drover serve`) and its admin CLI.

pub mod cli;
